"""Comparing two runs' written results: the Parquet files byte for byte, the summaries by value."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from backtest_pipeline import layout
from backtest_pipeline.run.runner import BacktestResult


def result_digests(result: BacktestResult) -> dict[str, str]:
    """sha256 of every result Parquet object of a run on a local root."""
    out = {}
    for name in layout.RESULT_PARQUETS:
        path = Path(result.locations[name].removeprefix("file://"))
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def comparable_summary(
    summary: dict[str, Any], drop_stats: Collection[str], drop: Collection[str] = ()
) -> dict[str, Any]:
    """The summary without ids, times and the named statistics (and top-level keys)."""
    s = {k: v for k, v in summary.items() if k not in {"run_id", "created_at", "results", *drop}}
    s["execution_stats"] = {
        k: v for k, v in summary["execution_stats"].items() if k not in drop_stats
    }
    return s
