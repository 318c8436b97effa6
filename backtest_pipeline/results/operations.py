"""Execution quality per operation (``operations.parquet``) and its summary by algo (``tca``).

An execution researcher compares MARKET, LIMIT and TWAP work of the same signals by what each
cost against a paper trade at arrival (Perold's implementation shortfall). The figures need two
kinds of input that live in different places:

* what the run did — the operations of the orchestrator, the orders of the OMS and the fills —
  which exist in full only once the run is over (and, for time shards, once they are stitched);
* what the market was — the reference price at the signal and at the operation's end, and the
  tape's VWAP in between — which is known only while the ticks of those days are in memory.

So the market side is resolved *during* the run, day by day, by :class:`MarketReferences` (an
operation is resolved once it is finished, and a day's ticks are dropped once no unfinished
operation can need them), and :func:`build_operations` joins it with the orders and fills
afterwards. Every lookup reads only the ticks of the day before the signal up to the day of the
operation's end; a time shard that starts with one warm-up day therefore resolves an operation
from exactly the ticks a one-engine run uses, and the rows come out bit-for-bit the same.

The reference price is whatever series the run's market data gives (:class:`PriceSeries`): the
last trade with trades only (``arrival_spread_bps`` null), the mid and spread of quotes or book
snapshots in richer modes. Conventions (``docs/outputs.md``): σ = +1 buy / −1 sell, basis points,
positive = a cost; sums run in a fixed order so that any split of the run agrees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa

from backtest_pipeline.results.formatting import format_figure

MARKET_DATA_TYPES: Final[tuple[str, ...]] = ("depth", "quotes", "trades")
STATUSES: Final[tuple[str, ...]] = ("FILLED", "PARTIAL", "UNFILLED", "REJECTED", "SUPERSEDED")
#: A quantity this close (relative) to the target counts as all of it (float dust of lot sums).
FILLED_TOLERANCE: Final[float] = 1e-9
BPS: Final[float] = 1e4
NS: Final[int] = 1_000_000_000
_DAY_NS: Final[int] = 86_400 * NS
_EPOCH_ORDINAL: Final[int] = date(1970, 1, 1).toordinal()

REFERENCE_COLUMNS: Final[dict[str, pl.DataType]] = {
    "operation_id": pl.String(),
    "ts_end": pl.Int64(),
    "market_data": pl.String(),
    "arrival_price": pl.Float64(),
    "arrival_spread_bps": pl.Float64(),
    "end_price": pl.Float64(),
    "market_vwap": pl.Float64(),
}
OPERATION_COLUMNS: Final[tuple[str, ...]] = (
    "operation_id", "signal_id", "instrument_key", "algo", "side", "ts_signal", "ts_end",
    "target_quantity", "filled_quantity", "fill_ratio", "status", "orders", "market_data",
    "arrival_price", "arrival_spread_bps", "avg_fill_price", "end_price", "market_vwap",
    "execution_cost_bps", "fees_bps", "opportunity_cost_bps", "implementation_shortfall_bps",
    "vwap_slippage_bps", "duration_s",
)  # fmt: skip
TCA_KEYS: Final[tuple[str, ...]] = (
    "operations",
    "intended_notional",
    "fill_ratio",
    "implementation_shortfall_bps_mean",
    "implementation_shortfall_bps_median",
    "implementation_shortfall_bps_p90",
    "execution_cost_bps",
    "fees_bps",
    "opportunity_cost_bps",
)

#: Short column headings for tables shown to people (CLI, report, Dagster metadata).
TCA_LABELS: Final[dict[str, str]] = {
    "operations": "ops",
    "intended_notional": "notional",
    "fill_ratio": "filled",
    "implementation_shortfall_bps_mean": "IS mean",
    "implementation_shortfall_bps_median": "IS med",
    "implementation_shortfall_bps_p90": "IS p90",
    "execution_cost_bps": "exec",
    "fees_bps": "fees",
    "opportunity_cost_bps": "opp",
}

# --------------------------------------------------------------------------------------------
# Market side: price series, the tape, and the references of each operation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceSeries:
    """An instrument's reference price over time in the data the run uses (sorted by ``ts``).

    ``price`` is the last trade with trades only, the mid with quotes or book snapshots;
    ``spread_bps`` is ``(ask − bid) / mid × 10⁴`` where the data has a spread (else None).
    """

    ts: np.ndarray
    price: np.ndarray
    spread_bps: np.ndarray | None = None


@dataclass(frozen=True)
class Tape:
    """An instrument's trades (sorted by ``ts``): what a window's VWAP is taken from."""

    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray


def value_at(
    ts: np.ndarray, values: np.ndarray, at: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray]:
    """The last value at or before each instant of ``at``, and whether there was one."""
    idx = np.searchsorted(ts, at, side="right") - 1
    found = idx >= 0
    return np.where(found, values[np.clip(idx, 0, None)], np.nan), found


def window_sums(tape: Tape, start: int, end: int) -> tuple[float, float]:
    """Notional and size of the tape's trades in the inclusive window ``[start, end]``.

    Summed over the window's own trades (not as a difference of running sums, which would
    carry the rounding of the whole day into a short window's VWAP).
    """
    i0 = int(np.searchsorted(tape.ts, start, side="left"))
    i1 = int(np.searchsorted(tape.ts, end, side="right"))
    size = tape.size[i0:i1]
    return float(np.sum(tape.price[i0:i1] * size)), float(np.sum(size))


def _as_int64(col: pa.ChunkedArray | pl.Series) -> np.ndarray:
    if isinstance(col, pl.Series):
        return col.cast(pl.Int64).to_numpy()
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return np.asarray(col.to_numpy(), dtype=np.int64)


def _column(table: pa.Table | pl.DataFrame, name: str) -> pa.ChunkedArray | pl.Series:
    return table.get_column(name) if isinstance(table, pl.DataFrame) else table.column(name)


@dataclass(frozen=True)
class _Day:
    series: PriceSeries
    tape: Tape


@dataclass(frozen=True)
class PendingOperation:
    """What resolving an operation's market references needs from the run."""

    operation_id: str
    instrument_key: str
    ts_signal: int
    ts_end: int


class MarketReferences:
    """The market side of every operation, resolved while the ticks of its days are loaded.

    ``add_trades`` takes a day's trade tables as the run read them (the signal intervals, or
    whole days); ``resolve`` fixes the references of finished operations; ``prune`` drops days no
    pending operation can reach. A later quotes or depth mode passes its mid/spread series to
    ``add_day`` instead, with the trades as the tape.
    """

    def __init__(self) -> None:
        self._days: dict[str, dict[int, _Day]] = {}
        self._market_data: dict[str, str] = {}
        self.rows: dict[str, tuple[Any, ...]] = {}

    def add_day(
        self, day: date, instrument_key: str, series: PriceSeries, tape: Tape, market_data: str
    ) -> None:
        if market_data not in MARKET_DATA_TYPES:
            raise ValueError(f"market_data {market_data!r} not one of {MARKET_DATA_TYPES}")
        self._days.setdefault(instrument_key, {})[day.toordinal()] = _Day(series, tape)
        self._market_data[instrument_key] = market_data

    def add_trades(self, day: date, trades: Mapping[str, pa.Table | pl.DataFrame]) -> None:
        """A day of trades-only data: the last trade is the reference, the trades the tape."""
        for key in sorted(trades):
            t = trades[key]
            ts = _as_int64(_column(t, "ts_event"))
            price = np.asarray(_column(t, "price").to_numpy(), dtype=np.float64)
            size = np.asarray(_column(t, "size").to_numpy(), dtype=np.float64)
            if ts.size > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
                order = np.argsort(ts, kind="stable")
                ts, price, size = ts[order], price[order], size[order]
            self.add_day(day, key, PriceSeries(ts, price), Tape(ts, price, size), "trades")

    def market_data(self) -> dict[str, str]:
        """Per instrument key, the data type its references came from."""
        return dict(sorted(self._market_data.items()))

    def prune(self, keep_from: date) -> None:
        """Forget the days before ``keep_from`` (no pending operation reads them)."""
        first = keep_from.toordinal()
        for days in self._days.values():
            for d in [d for d in days if d < first]:
                del days[d]

    def resolve(self, operations: Iterable[PendingOperation]) -> None:
        for op in operations:
            self.rows[op.operation_id] = self._references(op)

    def _price_at(
        self, days: dict[int, _Day], ts: int, first: int
    ) -> tuple[float, float | None] | None:
        """The reference in force at ``ts``: its own day first, then earlier days down to ``first``."""
        for d in range(ts // _DAY_NS + _EPOCH_ORDINAL, first - 1, -1):
            day = days.get(d)
            if day is None or day.series.ts.size == 0:
                continue
            price, found = value_at(day.series.ts, day.series.price, ts)
            if bool(found):
                spread = None
                if day.series.spread_bps is not None:
                    spread = float(value_at(day.series.ts, day.series.spread_bps, ts)[0])
                return float(price), spread
        return None

    def _next_print(self, days: dict[int, _Day], ts: int, last: int) -> float:
        """The first reference after ``ts`` (no data at or before the signal: the next print)."""
        for d in range(ts // _DAY_NS + _EPOCH_ORDINAL, last + 1):
            day = days.get(d)
            if day is None:
                continue
            i = int(np.searchsorted(day.series.ts, ts, side="left"))
            if i < day.series.ts.size:
                return float(day.series.price[i])
        return math.nan

    def _references(self, op: PendingOperation) -> tuple[Any, ...]:
        days = self._days.get(op.instrument_key, {})
        d_signal = op.ts_signal // _DAY_NS + _EPOCH_ORDINAL
        d_end = op.ts_end // _DAY_NS + _EPOCH_ORDINAL
        first = d_signal - 1
        arrival = self._price_at(days, op.ts_signal, first)
        if arrival is None:
            arrival = (self._next_print(days, op.ts_signal, d_end), None)
        end = self._price_at(days, op.ts_end, first)
        end_price = end[0] if end is not None else arrival[0]
        notional, volume = 0.0, 0.0
        for d in range(d_signal, d_end + 1):
            day = days.get(d)
            if day is not None:
                n, v = window_sums(day.tape, op.ts_signal, op.ts_end)
                notional, volume = notional + n, volume + v
        vwap = notional / volume if volume > 0 else None
        md = self._market_data.get(op.instrument_key, "trades")
        return (op.operation_id, op.ts_end, md, arrival[0], arrival[1], end_price, vwap)

    def frame(self, operation_ids: Iterable[str] | None = None) -> pl.DataFrame:
        ids = self.rows if operation_ids is None else [i for i in operation_ids if i in self.rows]
        return pl.DataFrame([self.rows[i] for i in ids], schema=REFERENCE_COLUMNS, orient="row")


def day_of_ns(ts_ns: int) -> date:
    return date.fromordinal(ts_ns // _DAY_NS + _EPOCH_ORDINAL)


# --------------------------------------------------------------------------------------------
# operations.parquet
# --------------------------------------------------------------------------------------------


def _ns_series(df: pl.DataFrame, name: str) -> pl.Expr:
    dtype = df.schema[name]
    col = pl.col(name)
    return col.dt.epoch("ns") if isinstance(dtype, pl.Datetime) else col.cast(pl.Int64)


def _segment_sums(keys: np.ndarray, values: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Per distinct key (keys sorted, contiguous), the sums of each value array, in row order."""
    if keys.size == 0:
        return (keys[:0], *(np.zeros(0) for _ in values))
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return (keys[starts], *(np.add.reduceat(v, starts) for v in values))


def _to_polars(t: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = t if isinstance(t, pl.DataFrame) else pl.from_arrow(t)
    assert isinstance(df, pl.DataFrame)
    return df


def build_operations(
    operations: pl.DataFrame,
    orders: pa.Table | pl.DataFrame,
    fills: pa.Table | pl.DataFrame,
    references: pl.DataFrame,
) -> pl.DataFrame:
    """One row per operation that led to work, with the columns of ``operations.parquet``.

    ``operations`` is the orchestrator's table (signal order), ``references`` the market side
    from :class:`MarketReferences`. Filled quantity, notional and fees are summed per operation
    in fill order (the engine's), so a stitched run gives the one-engine run's bits. A reference
    resolved at another ``ts_end`` than the orders show would price the wrong instant, and raises.
    """
    ops = operations.filter(pl.col("order_quantity") != 0.0)
    orders_df, fills_df = _to_polars(orders), _to_polars(fills)
    by_order = orders_df.select(
        "order_id",
        "operation_id",
        _ns_series(orders_df, "updated_at").alias("updated_at"),
        (pl.col("status") == "REJECTED").alias("rejected"),
    )
    per_op = by_order.group_by("operation_id").agg(
        pl.len().cast(pl.Int64).alias("orders"),
        pl.col("updated_at").max().alias("ts_end_orders"),
        pl.col("rejected").all().alias("all_rejected"),
    )
    joined = fills_df.select(
        "order_id", "quantity", "price", "fee", _ns_series(fills_df, "ts_event").alias("ts")
    ).join(by_order.select("order_id", "operation_id"), on="order_id", how="left")
    stray = joined.filter(pl.col("operation_id").is_null())
    if stray.height:
        raise ValueError(f"fills of unknown orders {stray['order_id'].unique().to_list()[:5]}")
    # Fill order within each operation, then a sequential sum per operation.
    joined = joined.with_row_index("_row").sort(["operation_id", "ts", "_row"])
    keys, qty, notional, fees = _segment_sums(
        joined["operation_id"].to_numpy(),
        [
            joined["quantity"].to_numpy(),
            (joined["quantity"] * joined["price"]).to_numpy(),
            joined["fee"].to_numpy(),
        ],
    )
    fill_sums = pl.DataFrame(
        {"operation_id": keys, "filled": qty, "notional": notional, "fees": fees},
        schema={
            "operation_id": pl.String,
            "filled": pl.Float64,
            "notional": pl.Float64,
            "fees": pl.Float64,
        },
    )
    df = (
        ops.join(per_op, on="operation_id", how="left", maintain_order="left")
        .join(fill_sums, on="operation_id", how="left", maintain_order="left")
        .join(references, on="operation_id", how="left", maintain_order="left")
    )
    missing = df.filter(pl.col("orders").is_null() | pl.col("arrival_price").is_null())
    if missing.height:
        raise ValueError(
            "operations without orders or market references: "
            f"{missing['operation_id'].to_list()[:5]}"
        )
    moved = df.filter(pl.col("ts_end") != pl.col("ts_end_orders"))
    if moved.height:
        raise ValueError(
            f"market references resolved before the operations ended: "
            f"{moved.select('operation_id', 'ts_end', 'ts_end_orders').rows()[:5]}"
        )
    sigma = pl.when(pl.col("order_quantity") > 0).then(1.0).otherwise(-1.0)
    filled = pl.col("filled").fill_null(0.0)
    target = pl.col("order_quantity").abs()
    has_fill = filled > 0.0
    avg = pl.when(has_fill).then(pl.col("notional") / filled)
    arr = pl.col("arrival_price")
    status = (
        pl.when(pl.col("superseded"))
        .then(pl.lit("SUPERSEDED"))
        .when(filled >= target * (1.0 - FILLED_TOLERANCE))
        .then(pl.lit("FILLED"))
        .when(has_fill)
        .then(pl.lit("PARTIAL"))
        .when(pl.col("all_rejected"))
        .then(pl.lit("REJECTED"))
        .otherwise(pl.lit("UNFILLED"))
    )
    opportunity = (
        pl.col("_sigma") * (pl.col("end_price") - arr) / arr * BPS * (1.0 - pl.col("fill_ratio"))
    )
    out = (
        df.with_columns(
            sigma.alias("_sigma"),
            target.alias("target_quantity"),
            filled.alias("filled_quantity"),
            avg.alias("avg_fill_price"),
            status.alias("status"),
        )
        .with_columns((pl.col("filled_quantity") / pl.col("target_quantity")).alias("fill_ratio"))
        .with_columns(
            (pl.col("_sigma") * (pl.col("avg_fill_price") - arr) / arr * BPS).alias(
                "execution_cost_bps"
            ),
            pl.when(has_fill).then(pl.col("fees") / pl.col("notional") * BPS).alias("fees_bps"),
            # All filled: 0, not the −0.0 of a sell. Not by ``+ 0.0``, which Polars 2.1 skips
            # on a column of two or more rows (results/tables.py, the unrealized PnL).
            pl.when(opportunity == 0.0)
            .then(0.0)
            .otherwise(opportunity)
            .alias("opportunity_cost_bps"),
            (
                pl.col("_sigma")
                * (pl.col("avg_fill_price") - pl.col("market_vwap"))
                / pl.col("market_vwap")
                * BPS
            ).alias("vwap_slippage_bps"),
            ((pl.col("ts_end") - pl.col("ts_event")) / NS).alias("duration_s"),
        )
        .with_columns(
            (
                pl.col("fill_ratio")
                * (pl.col("execution_cost_bps").fill_null(0.0) + pl.col("fees_bps").fill_null(0.0))
                + pl.col("opportunity_cost_bps")
            ).alias("implementation_shortfall_bps"),
            pl.when(pl.col("_sigma") > 0)
            .then(pl.lit("BUY"))
            .otherwise(pl.lit("SELL"))
            .alias("side"),
            pl.col("ts_event").alias("ts_signal"),
        )
    )
    return out.select(
        *(pl.col(c) for c in OPERATION_COLUMNS if c not in ("ts_signal", "ts_end")),
        pl.col("ts_signal").cast(pl.Datetime("ns", "UTC")),
        pl.col("ts_end").cast(pl.Datetime("ns", "UTC")),
    ).select(OPERATION_COLUMNS)


# --------------------------------------------------------------------------------------------
# summary.json → execution_stats.tca
# --------------------------------------------------------------------------------------------


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    ok = np.isfinite(values) & np.isfinite(weights)
    den = math.fsum(weights[ok].tolist())
    if not ok.any() or den == 0.0:
        return None
    return math.fsum((values[ok] * weights[ok]).tolist()) / den


def _block(df: pl.DataFrame) -> dict[str, float | int | None]:
    arrival = df["arrival_price"].to_numpy()
    target = df["target_quantity"].to_numpy()
    notional = target * arrival
    shortfall = df["implementation_shortfall_bps"].to_numpy()
    finite = shortfall[np.isfinite(shortfall) & np.isfinite(notional)]
    intended = math.fsum(notional[np.isfinite(notional)].tolist())
    target_total = math.fsum(target.tolist())

    def col(name: str) -> np.ndarray:
        return df[name].cast(pl.Float64).fill_null(np.nan).to_numpy()

    return {
        "operations": df.height,
        "intended_notional": intended,
        "fill_ratio": (
            math.fsum(df["filled_quantity"].to_list()) / target_total if target_total else None
        ),
        "implementation_shortfall_bps_mean": _weighted_mean(shortfall, notional),
        "implementation_shortfall_bps_median": float(np.median(finite)) if finite.size else None,
        "implementation_shortfall_bps_p90": (
            float(np.percentile(finite, 90)) if finite.size else None
        ),
        "execution_cost_bps": _weighted_mean(col("execution_cost_bps"), notional),
        "fees_bps": _weighted_mean(col("fees_bps"), notional),
        "opportunity_cost_bps": _weighted_mean(col("opportunity_cost_bps"), notional),
    }


def tca_by_algo(operations: pa.Table | pl.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """``execution_stats.tca``: per algo (sorted) and ``ALL``, see ``docs/outputs.md``.

    Means are weighted by intended notional (target quantity × arrival price) over the
    operations where the figure exists (execution cost and fees only where something filled);
    the median and 90th percentile of shortfall are unweighted, linearly interpolated.
    """
    df = _to_polars(operations)
    out = {
        algo: _block(df.filter(pl.col("algo") == algo))
        for algo in sorted(df["algo"].unique().to_list())
    }
    out["ALL"] = _block(df)
    return out


def tca_markdown(tca: Mapping[str, Mapping[str, Any]]) -> str:
    """The by-algo table as Markdown (Dagster metadata, docs)."""
    head = "| algo | " + " | ".join(TCA_LABELS[k] for k in TCA_KEYS) + " |"
    sep = "| --- " * (len(TCA_KEYS) + 1) + "|"
    rows = [
        f"| {algo} | " + " | ".join(format_tca_value(k, v.get(k)) for k in TCA_KEYS) + " |"
        for algo, v in tca.items()
    ]
    return "\n".join([head, sep, *rows])


def format_tca_value(key: str, value: Any) -> str:
    """How a TCA figure is shown to people: counts whole, money rounded, bps to 2 places."""
    kind = {"operations": "count", "intended_notional": "money0", "fill_ratio": "ratio"}
    return format_figure(kind.get(key, "num2"), value)
