#!/usr/bin/env bash
# Start the Dagster UI + daemon for this repository on 127.0.0.1.
#   scripts/dagster-dev.sh [-p PORT]        (extra args go to `dagster dev`)
# DAGSTER_HOME defaults to <repo>/.dagster_home (absolute, created, git-ignored); the repository's
# dagster.yaml (concurrency limits) is copied there. Storage root: $BACKTEST_STORAGE_ROOT or <repo>/data.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export DAGSTER_HOME="${DAGSTER_HOME:-$REPO/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp "$REPO/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
export BACKTEST_STORAGE_ROOT="${BACKTEST_STORAGE_ROOT:-$REPO/data}"
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="${GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT:-false}"
cd "$REPO"
exec uv run dagster dev -w "$REPO/workspace.yaml" -h 127.0.0.1 "$@"
