"""`backtest bench --year`: the measured-year plumbing (figures, verdicts, the interval count,
resumable generation) and a tiny year run end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from benchmarks import bench
from benchmarks.bench import (
    KEY,
    START,
    YEAR_JSON_KEYS,
    engine_over_interval,
    figures,
    format_table,
    interval_ticks,
    year_figures,
)

REPO = Path(__file__).resolve().parents[1]
TINY = bench.Workload(trades_per_day=3_000, days=3, long_days=3, long_trades_per_day=3_000)


def test_year_table_judges_each_figure_against_its_target() -> None:
    out = {
        "year_run_s": 150.0,
        "projected_5y_min": 150.0 * 1826 / 365 / 60,
        "peak_rss_mb_365": 700.0,
        "rss_ratio_365_to_3": 1.31,
        "engine_ticks_over_interval_ticks": 0.42,
        "workload": {},
    }
    table = format_table(out, year=True)
    assert re.search(r"projected_5y_min\s+12\.507\s+met \(< 15\)", table), table
    assert re.search(r"rss_ratio_365_to_3\s+1\.310\s+NOT met \(<= 1\.2\)", table), table
    assert re.search(r"engine_ticks_over_interval_ticks\s+0\.420\s+met \(<= 0\.5\)", table)
    assert tuple(year_figures(out)) == YEAR_JSON_KEYS
    assert year_figures(out)["rss_ratio_365_to_3"] == 1.31
    # The default bench carries the feed ratio too, with the same target.
    default = format_table({"engine_ticks_over_interval_ticks": 1.04, "workload": {}})
    assert re.search(r"engine_ticks_over_interval_ticks\s+1\.040\s+NOT met \(<= 0\.5\)", default)
    assert (
        figures({"engine_ticks_over_interval_ticks": 0.3})["engine_ticks_over_interval_ticks"]
        == 0.3
    )


def test_engine_over_interval_divides_fed_ticks_by_ticks_in_intervals() -> None:
    assert engine_over_interval({"ticks_processed": 30, "ticks_read": 99}, 120) == 0.25
    assert engine_over_interval({"ticks_processed": 30}, 0) is None


def _sample(root: Path, days: int, tpd: int) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "backtest_pipeline.cli", "sample-data", "--root", str(root),
            "--start", START.isoformat(), "--days", str(days), "--trades-per-day", str(tpd),
        ],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def test_interval_ticks_counts_the_trades_inside_half_open_ranges(tmp_path: Path) -> None:
    _sample(tmp_path, 2, 5_000)
    day1 = START + timedelta(days=1)
    files = {
        d: pl.read_parquet(
            tmp_path / layout.target("ticks").gcs_bucket / layout.trades_path(d, KEY)
        ).with_columns(pl.col("ts_event").cast(pl.Int64))
        for d in (START, day1)
    }
    ts0 = files[START]["ts_event"]
    # Ranges that start and end exactly on trades: the start is in, the end is out.
    ranges = {
        f"{START.isoformat()}|{KEY}": [
            (int(ts0[10]), int(ts0[200])),
            (int(ts0[1000]), int(ts0[1001])),
        ],
        f"{day1.isoformat()}|{KEY}": [(0, 2**62)],
        f"{day1.isoformat()}|NOPE": [],
    }
    expected = (
        sum(
            files[START].filter((pl.col("ts_event") >= a) & (pl.col("ts_event") < b)).height
            for a, b in ranges[f"{START.isoformat()}|{KEY}"]
        )
        + files[day1].height
    )
    assert interval_ticks(tmp_path, ranges) == expected
    assert expected > files[day1].height  # the first day's ranges hold trades


def test_generation_is_chunked_resumable_and_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "CACHE", tmp_path / "cache")
    logs: list[str] = []
    root = bench._generate(TINY, "year3", 3, TINY.trades_per_day, False, logs.append, chunk_days=1)
    assert (root / ".complete").exists()
    assert sorted(p.name for p in root.glob(".chunk-*")) == [
        f".chunk-{(START + timedelta(days=i)).isoformat()}+1" for i in range(3)
    ]
    # One invocation over the 3 days writes the same bytes as the three chunks.
    whole = tmp_path / "whole"
    _sample(whole, 3, TINY.trades_per_day)
    mine = {p.relative_to(root): p.read_bytes() for p in root.rglob("*.parquet")}
    theirs = {p.relative_to(whole): p.read_bytes() for p in whole.rglob("*.parquet")}
    assert mine == theirs and len(mine) >= 9

    # Interrupted in the middle chunk: its marker and one of its files are gone.
    (root / ".complete").unlink()
    (root / f".chunk-{(START + timedelta(days=1)).isoformat()}+1").unlink()
    day2_trades = (
        root
        / layout.target("ticks").gcs_bucket
        / layout.trades_path(START + timedelta(days=1), KEY)
    )
    day2_trades.unlink()
    kept = root / layout.target("ticks").gcs_bucket / layout.trades_path(START, KEY)
    kept_mtime = kept.stat().st_mtime_ns
    assert bench._generate(TINY, "year3", 3, TINY.trades_per_day, False, logs.append, 1) == root
    assert kept.stat().st_mtime_ns == kept_mtime  # the finished chunk was not written again
    assert day2_trades.read_bytes() == theirs[day2_trades.relative_to(root)]
    assert json.loads((root / ".complete").read_text())["bytes"] > 0


def test_bench_year_refuses_the_options_of_the_default_bench() -> None:
    res = CliRunner().invoke(app, ["bench", "--year", "--quick"])
    assert res.exit_code == 2
    assert "--year runs one measured year" in res.output


@pytest.mark.slow
def test_tiny_year_run_end_to_end() -> None:
    """Six small days through `bench --year`: every figure present and consistent."""
    days, tpd = 6, 20_000
    proc = subprocess.run(
        [
            sys.executable, "-m", "backtest_pipeline.cli", "bench", "--year", "--json",
            "--year-days", str(days), "--year-trades-per-day", str(tpd),
        ],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tuple(out) == YEAR_JSON_KEYS
    assert out["year_run_s"] > 0
    assert out["projected_5y_min"] == pytest.approx(out["year_run_s"] * 1826 / days / 60)
    assert 100 < out["peak_rss_mb_365"] < 24_000
    assert 0.5 < out["rss_ratio_365_to_3"] < 5
    fed = int(re.search(r"ticks_processed\s+([0-9,]+)", proc.stderr)[1].replace(",", ""))
    inside = int(re.search(r"ticks_in_intervals\s+([0-9,]+)", proc.stderr)[1].replace(",", ""))
    assert 0 < inside < days * tpd  # signal intervals cover a part of each day
    assert out["engine_ticks_over_interval_ticks"] == pytest.approx(fed / inside)
    # The run went through the product's time shards (one per core, 3 days at least each).
    assert re.search(r"shards\s+\d+ run, \d+ merged", proc.stderr), proc.stderr[-3000:]
