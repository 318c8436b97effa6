"""The storage root as a Dagster resource: every asset and the IO manager reach storage through it.

It only carries the root (``gs://`` or a local directory); bucket names stay with the layout
module and its environment overrides, so Dagster and the CLI can never disagree on a path.
"""

import os
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from backtest_pipeline.storage.ucs import UnifiedCloudService

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_root() -> str:
    """``$BACKTEST_STORAGE_ROOT`` or the repository's ``data/`` (absolute, whatever the cwd)."""
    return os.environ.get("BACKTEST_STORAGE_ROOT") or str(REPO_ROOT / "data")


@lru_cache(maxsize=16)
def _client(root: str, emulator: str | None) -> UnifiedCloudService:
    # The emulator host is part of the key: a GCS client is bound to its endpoint at creation.
    return UnifiedCloudService(root)


class UCSResource(ConfigurableResource):
    """UCS bound to one storage root (``gs://`` → GCS or its emulator; else a local directory)."""

    root: str = Field(
        default_factory=default_root,
        description="Storage root: gs:// (GCS; emulator when STORAGE_EMULATOR_HOST is set), "
        "file:///abs/path or a directory. Default: $BACKTEST_STORAGE_ROOT or <repo>/data.",
    )

    def client(self) -> UnifiedCloudService:
        return _client(self.root, os.environ.get("STORAGE_EMULATOR_HOST"))
