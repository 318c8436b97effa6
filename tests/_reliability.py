"""Shared helpers of the reliability tests (issue 6): sample inputs, result inspection, comparisons.

The sample inputs are generated once (small: 2 days, a few thousand trades) into memory and then
copied into whatever root a test uses, so each test starts from the same known-good bytes on the
local root and on the GCS emulator alike and only the one object it damages differs.
"""

from __future__ import annotations

import io
import re
from datetime import date
from pathlib import Path
from typing import Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.storage.ucs import UnifiedCloudService

ROOT_DIR: Final = Path(__file__).resolve().parents[1]
DEMO_YAML: Final = ROOT_DIR / "configs" / "demo.yaml"
KEY: Final = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
STRATEGY: Final = "demo-strategy"
DAY1: Final = date(2024, 1, 1)
DAY2: Final = date(2024, 1, 2)
ROLES: Final[tuple[layout.Role, ...]] = ("instruments", "ticks", "signals", "results")
# Fields of summary.json that legitimately differ between two runs of the same work.
TIMING_STATS: Final[frozenset[str]] = frozenset(
    {"wall_time_s", "engine_time_s", "read_time_s", "ticks_per_second", "peak_rss_mb"}
)

Snapshot = dict[tuple[str, str], bytes]  # (role, path) → bytes


def demo_config(**updates: Any) -> BacktestConfig:
    cfg = BacktestConfig.from_yaml(DEMO_YAML)
    return cfg.model_copy(update=updates) if updates else cfg


def make_snapshot(tmp_dir: Path, trades_per_day: int = 6_000, seed: int = 11) -> Snapshot:
    """Two days of sample inputs, as bytes per (role, path)."""
    ucs = UnifiedCloudService(str(tmp_dir))
    generate_sample_data(ucs, DAY1, 2, None, trades_per_day=trades_per_day, seed=seed)
    snap: Snapshot = {}
    for role in ROLES[:3]:
        t = layout.target(role)
        for path in ucs.list_files_sync(t, ""):
            snap[(role, path)] = ucs.download_bytes_sync(t, path)
    return snap


def load_snapshot(ucs: UnifiedCloudService, snap: Snapshot) -> None:
    for (role, path), data in snap.items():
        ucs.upload_to_gcs_sync(layout.target(role), path, data, format="bytes")  # type: ignore[arg-type]


def uri(ucs: UnifiedCloudService, role: layout.Role, path: str) -> str:
    return ucs.uri(layout.target(role), path)


def read_table(ucs: UnifiedCloudService, role: layout.Role, path: str) -> pa.Table:
    return pq.read_table(io.BytesIO(ucs.download_bytes_sync(layout.target(role), path)))


def put_table(
    ucs: UnifiedCloudService, role: layout.Role, path: str, table: pa.Table | pl.DataFrame
) -> None:
    ucs.upload_to_gcs_sync(layout.target(role), path, table, format="parquet")


def put_bytes(ucs: UnifiedCloudService, role: layout.Role, path: str, data: bytes) -> None:
    ucs.upload_to_gcs_sync(layout.target(role), path, data, format="bytes")


def first_signal_window_row(ucs: UnifiedCloudService, day: date) -> int:
    """Index of the first trade that the day's first signal needs (inside its execution window)."""
    sig = read_table(ucs, "signals", layout.signals_path(day, STRATEGY)).to_pylist()[0]
    ts = read_table(ucs, "ticks", layout.trades_path(day, KEY)).column("ts_event").to_pylist()
    start = int(sig["ts_event"])
    end = start + int(sig["execution_window_s"] * 1e9)
    for i, t in enumerate(ts):
        if start <= t < end:
            return i
    raise AssertionError(f"no trade inside the first signal window on {day}")


def result_objects(ucs: UnifiedCloudService, run_id: str) -> dict[str, bool]:
    t = layout.target("results")
    return {p: ucs.exists_sync(t, p) for p in layout.all_result_paths(run_id)}


def summary_of(ucs: UnifiedCloudService, run_id: str) -> dict[str, Any]:
    return ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(run_id, "summary.json")
    )


def log_of(ucs: UnifiedCloudService, run_id: str) -> str:
    return ucs.download_from_gcs_sync(
        layout.target("results"), layout.log_path(run_id), format="text"
    )


def parquet_results(ucs: UnifiedCloudService, run_id: str) -> dict[str, bytes]:
    t = layout.target("results")
    return {
        n: ucs.download_bytes_sync(t, layout.result_path(run_id, n)) for n in layout.RESULT_PARQUETS
    }


def assert_failed_cleanly(
    ucs: UnifiedCloudService, run_id: str, needles: list[str]
) -> dict[str, Any]:
    """summary.json FAILED with an error holding every needle; no result Parquet; log written."""
    t = layout.target("results")
    summary = summary_of(ucs, run_id)
    assert summary["status"] == "FAILED", summary
    assert summary["run_id"] == run_id
    for needle in needles:
        assert needle in summary["error"], (needle, summary["error"])
    leftovers = [
        n for n in layout.RESULT_PARQUETS if ucs.exists_sync(t, layout.result_path(run_id, n))
    ]
    assert not leftovers, f"result Parquet objects of a failed run survive: {leftovers}"
    assert "pnl" not in summary and "metrics" not in summary, (
        "a FAILED summary must not carry results"
    )
    assert run_id in log_of(ucs, run_id)
    return summary


def comparable_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json without `created_at` and the timing/memory measurements."""
    out = {k: v for k, v in summary.items() if k != "created_at"}
    out["execution_stats"] = {
        k: v for k, v in summary["execution_stats"].items() if k not in TIMING_STATS
    }
    return out


def flat(text: str) -> str:
    """Text without whitespace: rich may wrap long paths in CLI output."""
    return re.sub(r"\s+", "", text)
