"""Performance metrics of ``summary.json``, exactly as ``docs/outputs.md`` defines them.

They are computed only from the equity curve and the round trips, i.e. from what is in the
result files, so anyone can re-derive them.

Return sampling (the convention an independent re-computation must follow): the sample points
are ``start_ns``, every multiple of ``metrics_interval_ns`` since the Unix epoch (UTC) strictly
between ``start_ns`` and ``end_ns``, and ``end_ns``. The value at a point is the last
``portfolio_value`` at or before it (the last value of the bucket that the point closes,
forward-filled through empty buckets; among rows at the same instant the last one). For a run
on whole UTC days with an interval dividing a day this is the value at 00:00, 01:00, …, 24:00 of
every day, i.e. 24 hourly returns per day, the first measured from the starting value.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa

NS_PER_SECOND: Final[int] = 1_000_000_000
DEFAULT_METRICS_INTERVAL_NS: Final[int] = 3600 * NS_PER_SECOND
YEAR_NS: Final[int] = 365 * 86_400 * NS_PER_SECOND

FrameLike = pl.DataFrame | pa.Table


def _polars(data: FrameLike, what: str) -> pl.DataFrame:
    df = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"{what}: expected a table, got {type(data)}")
    return df


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN/inf; an undefined metric is null, never a number that looks real."""
    return float(x) if math.isfinite(x) else None


def sample_points(start_ns: int, end_ns: int, metrics_interval_ns: int) -> np.ndarray:
    """The UTC metrics grid of the run (see the module docstring)."""
    if metrics_interval_ns <= 0:
        raise ValueError(f"metrics_interval_ns must be > 0, got {metrics_interval_ns}")
    if end_ns < start_ns:
        raise ValueError(f"end_ns {end_ns} is before start_ns {start_ns}")
    first = (start_ns // metrics_interval_ns + 1) * metrics_interval_ns
    inner = np.arange(first, end_ns, metrics_interval_ns, dtype=np.int64)
    points = np.concatenate([[start_ns], inner, [end_ns]]).astype(np.int64)
    return np.unique(points)


def sampled_values(
    equity_curve: FrameLike, metrics_interval_ns: int, start_ns: int, end_ns: int
) -> np.ndarray:
    """Portfolio value at each metrics sample point; points before the curve starts are dropped."""
    curve = _polars(equity_curve, "equity_curve")
    ts = curve["ts_event"]
    ts = ts.dt.epoch("ns") if isinstance(ts.dtype, pl.Datetime) else ts.cast(pl.Int64)
    values = (
        pl.DataFrame({"ts": ts, "value": curve["portfolio_value"].cast(pl.Float64)})
        .sort("ts", maintain_order=True)
        .unique(subset="ts", keep="last", maintain_order=True)
    )
    points = pl.DataFrame({"ts": sample_points(start_ns, end_ns, metrics_interval_ns)})
    sampled = points.join_asof(values, on="ts", strategy="backward")
    return sampled["value"].drop_nulls().to_numpy()


def compute_metrics(
    equity_curve: FrameLike,
    round_trips: FrameLike,
    metrics_interval_ns: int,
    start_ns: int,
    end_ns: int,
) -> dict[str, float | int | None]:
    """``sharpe_ratio``, ``sortino_ratio``, ``max_drawdown_pct``, ``win_rate``,
    ``profit_factor``, ``total_trades`` as plain JSON-safe Python values.

    Null (None) where the definition has no value: Sharpe with < 2 returns or all returns equal
    (exact zero deviation, not a float-noise threshold); Sortino with no negative return;
    win rate with no trades; profit factor with no losing trade, and also when every loss is
    exactly break-even (the ratio would be infinite, which JSON cannot carry).
    """
    curve = _polars(equity_curve, "equity_curve")
    if curve.height == 0:
        raise ValueError("equity_curve is empty")
    trips = _polars(round_trips, "round_trips")
    if "net_pnl" not in trips.columns:
        raise ValueError(f"round_trips: missing column 'net_pnl'; have {trips.columns}")

    values = sampled_values(curve, metrics_interval_ns, start_ns, end_ns)
    returns = values[1:] / values[:-1] - 1.0
    periods = YEAR_NS / metrics_interval_ns

    sharpe: float | None = None
    if returns.size >= 2 and not np.all(returns == returns[0]):
        sharpe = _finite_or_none(float(returns.mean() / returns.std(ddof=1) * math.sqrt(periods)))

    sortino: float | None = None
    if np.any(returns < 0):
        downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
        sortino = _finite_or_none(float(returns.mean()) / downside * math.sqrt(periods))

    pv = curve["portfolio_value"].cast(pl.Float64).to_numpy()
    max_dd = _finite_or_none(float(100.0 * np.min(pv / np.maximum.accumulate(pv) - 1.0)))

    pnl = trips["net_pnl"].cast(pl.Float64).to_numpy()
    total = int(pnl.size)
    wins = pnl[pnl > 0]
    losses = pnl[~(pnl > 0)]
    win_rate = float(wins.size / total) if total else None
    loss_sum = float(np.abs(losses.sum()))
    profit_factor = (
        _finite_or_none(float(wins.sum()) / loss_sum) if losses.size and loss_sum > 0 else None
    )
    return {
        "sharpe_ratio": sharpe,
        "sortino_ratio": sortino,
        "max_drawdown_pct": max_dd,
        "win_rate": win_rate,
        "profit_factor": profit_factor,
        "total_trades": total,
    }
