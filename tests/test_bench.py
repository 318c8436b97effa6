"""`backtest bench --quick --json`: every figure present and sane (not its speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from benchmarks.bench import CACHE, JSON_KEYS, KEY, QUICK, START, format_table

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
    # The floor is NautilusTrader alone on every tick read; our run hands the engine only the
    # ticks an order works in (engine_feed: operations), so the ratio may fall below 1.
    assert 0 < out["ratio_signal_to_bare"] < 100 and 0 < out["ratio_full_to_bare"] < 100
    assert 0 < out["engine_ticks_over_interval_ticks"] < 1
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
    # The book workload: a run on depth against the bare engine fed the same trades + depth.
    assert 0 < out["ratio_book_to_bare"] < 100
    assert 0.0 < out["bytes_read_ratio_book"] < 1.0
    assert re.search(r"ratio_book_to_bare\s+[0-9.,]+\s+(NOT )?met", proc.stderr)
    # Bytes available are the sizes of the objects the run touched: trades and the 10-level
    # book of each day (a depth run reads no quotes), checked against the files themselves.
    m = re.search(
        r"trades\s+([0-9,]+)\s+/\s+([0-9,]+)\s+B;\s+book_depth10\s+([0-9,]+)\s+/\s+([0-9,]+)\s+B",
        proc.stderr,
    )
    assert m, proc.stderr[-3000:]
    t_read, t_avail, b_read, b_avail = (int(g.replace(",", "")) for g in m.groups())
    root = CACHE / f"{QUICK.name}-book"
    days = [START + timedelta(days=i) for i in range(QUICK.days)]

    def size(role: str, path: str) -> int:
        return (root / layout.target(role).gcs_bucket / path).stat().st_size

    assert b_avail == sum(size("ticks", layout.book_depth10_path(d, KEY)) for d in days)
    assert t_avail == sum(size("ticks", layout.trades_path(d, KEY)) for d in days)
    assert 0 < b_read < b_avail and 0 < t_read < t_avail
    assert abs(out["bytes_read_ratio_book"] - (t_read + b_read) / (t_avail + b_avail)) < 1e-12


def test_book_figures_in_the_table_with_their_targets() -> None:
    table = format_table(
        {"ratio_book_to_bare": 1.62, "bytes_read_ratio_book": 0.18, "workload": {}}
    )
    assert re.search(r"ratio_book_to_bare\s+1\.620\s+NOT met \(<= 1\.5\)", table)
    assert re.search(r"bytes_read_ratio_book\s+0\.180\s+met \(<= 0\.2\)", table)


def test_bench_refuses_an_unknown_skip_name() -> None:
    res = CliRunner().invoke(app, ["bench", "--quick", "--skip", "gcs,bok"])
    assert res.exit_code == 2
    assert "--skip bok: unknown part" in res.output and "book" in res.output
