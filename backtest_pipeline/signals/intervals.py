"""Which stretches of a day's ticks a signal-driven run needs.

Only ticks around signals matter for execution, so the reader fetches the per-instrument union of
``[ts_event − lookback, ts_event + execution_window_s + grace]``. Intervals are **inclusive on both
ends** (``start_ns <= ts <= end_ns``) and clipped to the UTC day ``[day_start, day_end − 1]``.

Windows that cross midnight: pass the previous day's signals together with the day's; their
parts inside this day survive the clipping, the rest is dropped.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from backtest_pipeline import layout

_SCHEMA = {"instrument_key": pl.Utf8, "start_ns": pl.Int64, "end_ns": pl.Int64}


def signal_intervals(
    signals: pl.DataFrame, day: date, lookback_s: float, grace_s: float
) -> pl.DataFrame:
    """Merged, inclusive ``[start_ns, end_ns]`` per instrument_key, sorted by key then start."""
    if signals.height == 0:
        return pl.DataFrame(schema=_SCHEMA)
    day_start, day_end = layout.day_bounds_ns(day)
    lookback_ns = round(lookback_s * 1e9)
    grace_ns = round(grace_s * 1e9)
    ts = pl.col("ts_event").cast(pl.Int64)
    raw = (
        signals.select(
            pl.col("instrument_key").cast(pl.Utf8),
            (ts - lookback_ns).clip(lower_bound=day_start).alias("start_ns"),
            (
                ts
                + (pl.col("execution_window_s").cast(pl.Float64) * 1e9).round().cast(pl.Int64)
                + grace_ns
            )
            .clip(upper_bound=day_end - 1)
            .alias("end_ns"),
        )
        .filter(pl.col("start_ns") <= pl.col("end_ns"))
        .sort(["instrument_key", "start_ns", "end_ns"])
    )
    if raw.height == 0:
        return pl.DataFrame(schema=_SCHEMA)
    # A new run starts where the start lies beyond every earlier end (+1: inclusive ends touch).
    prev_end = pl.col("end_ns").cum_max().shift(1).over("instrument_key")
    return (
        raw.with_columns(
            ((prev_end.is_null()) | (pl.col("start_ns") > prev_end + 1))
            .cast(pl.Int64)
            .cum_sum()
            .alias("_grp")
        )
        .group_by(["instrument_key", "_grp"], maintain_order=True)
        .agg(pl.col("start_ns").min(), pl.col("end_ns").max())
        .select("instrument_key", "start_ns", "end_ns")
        .sort(["instrument_key", "start_ns"])
    )


def filter_to_intervals(trades: pl.DataFrame, intervals: pl.DataFrame) -> pl.DataFrame:
    """Rows of one instrument's trades inside any of the (already per-instrument) intervals."""
    if intervals.height == 0 or trades.height == 0:
        return trades.head(0)
    ts = trades["ts_event"].cast(pl.Int64).to_numpy()
    iv = intervals.sort("start_ns")
    starts = iv["start_ns"].to_numpy()
    ends = iv["end_ns"].to_numpy()
    # Index of the last interval starting at or before ts; inside if ts <= its end.
    idx = np.searchsorted(starts, ts, side="right") - 1
    ok = (idx >= 0) & (ts <= ends[np.clip(idx, 0, None)])
    return trades.filter(pl.Series(ok))
