"""The configuration's override of the signals' execution windows, applied where signals are read.

A sweep over "how long an algo gets" varies ``algo.execution_window_scale`` or
``algo.execution_window_s`` rather than rewriting signal files. Applying it once, as the signals
are read, keeps the two users of the window consistent: the intervals of ticks that are fetched
(``signals.intervals``) and the orchestrator's window end.
"""

from __future__ import annotations

import polars as pl

from backtest_pipeline.config import AlgoConfig


def apply_execution_window(signals: pl.DataFrame, algo: AlgoConfig) -> pl.DataFrame:
    """Signals with ``execution_window_s`` replaced and/or scaled; unchanged at the defaults."""
    if not algo.changes_windows or signals.height == 0:
        return signals
    window = (
        pl.lit(algo.execution_window_s, dtype=pl.Float64)
        if algo.execution_window_s is not None
        else pl.col("execution_window_s").cast(pl.Float64)
    )
    dtype = signals.schema["execution_window_s"]
    return signals.with_columns(
        (window * algo.execution_window_scale).cast(dtype).alias("execution_window_s")
    )
