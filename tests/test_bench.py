"""`backtest bench --quick --json`: every figure present and sane (not its speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import JSON_KEYS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_prints_every_key_with_sane_figures() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "backtest_pipeline.cli", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tuple(out) == JSON_KEYS
    e2e = out["e2e_signal_s"]
    assert set(e2e) == {"local", "gcs_emulator"}
    assert e2e["local"] > 0 and e2e["gcs_emulator"] > 0
    assert out["bare_engine_s"] > 0
    # Our run includes the bare engine's work plus I/O and results: it cannot be faster.
    assert out["ratio_signal_to_bare"] > 0.8 and out["ratio_full_to_bare"] > 0.8
    assert 0.0 < out["bytes_read_ratio"] < 1.0
    assert out["conversion_ticks_per_s"] > 100_000
    assert 100 < out["peak_rss_mb_3day"] < 24_000
    assert 0.5 < out["rss_ratio_30_to_3"] < 5
    assert out["projected_5y_min"] > 0
    assert out["naive_over_ours"] > 1.0
    assert out["dagster_over_cli"] is None or out["dagster_over_cli"] > 0.5
    # The human table went to stderr with a verdict per target.
    assert "ratio_signal_to_bare" in proc.stderr and ("met" in proc.stderr)
    # The projection comes from time shards, whose outputs equal the one-engine run's bytes.
    assert re.search(r"sharded_equals_one_engine\s+True", proc.stderr), proc.stderr[-3000:]
    assert re.search(r"projected_5y_min_one_engine\s+[0-9.,]+", proc.stderr)
