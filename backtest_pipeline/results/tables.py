"""Result tables of a backtest: positions, equity curve, PnL, round trips and output schemas.

The engine hands over raw fills, funding payments and price observations; everything the user
reads afterwards (``positions.parquet``, ``equity_curve.parquet``, the ``pnl`` block of
``summary.json`` and the round trips behind the trade metrics) is derived here, from those three
tables only, so that an independent re-computation from the Parquet files can agree with it
(``docs/outputs.md``).

Conventions (they are part of the contract, keep them in sync with the docs):

* Timestamps are int64 UTC nanoseconds on input; output tables carry ``timestamp[ns, UTC]``.
* Fills are processed in ``ts_event`` order, ties in the order given (stable sort): the engine's
  order is the truth for simultaneous fills. ``seq`` is the index of a fill in that order.
* Netting accounting per instrument: the average entry price is quantity-weighted on increases,
  unchanged on reductions, reset to the fill price on a flip, and NaN while flat in the accounting
  (there is no entry price; 0 would look like a price), written as null in ``positions.parquet``. A position within ``FLAT_TOLERANCE`` (relative to
  the sizes involved) of zero is snapped to exactly flat so float dust never keeps a trip open.
* Realized PnL is price PnL only (quantity × price difference, all instruments linear); fees and
  funding are kept separate and only meet in the cash balance.
* Row order of the equity curve/positions at equal timestamps: fills first (in ``seq`` order),
  then the grid sample. A sample at ``t`` therefore includes every fill at ``t``, matching
  "cash up to that time, inclusive"; funding at ``t`` is included at every row at ``t``.
* Marking: an instrument is valued at its most recent price observation at or before the row,
  where observations are the ``marks`` *and* the fills; at equal timestamps a fill is more recent
  than a mark. At a fill row the filled instrument is thus valued at the fill price, and a position
  is never valued at a price older than its own last fill.
* Round trips: a trip opens when a position leaves flat (or at a flip, with the remainder) and
  closes when it is flat again (or at the next flip). A flipping fill's fee is split pro rata by
  quantity between the trip it closes and the one it opens; its realized PnL goes to the closed
  trip. A funding payment goes to the trip open at that instant whose side matches the funding
  row's ``position`` — the trip after the fills at or before ``t`` if the sides match, else the
  trip before the fills at ``t`` (an engine that settles funding before same-instant fills).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl
import pyarrow as pa

NS_PER_SECOND: Final[int] = 1_000_000_000
DEFAULT_EQUITY_INTERVAL_NS: Final[int] = 60 * NS_PER_SECOND
FLAT_TOLERANCE: Final[float] = 1e-9
PNL_CHECK_REL_TOL: Final[float] = 1e-6

UTC_NS: Final[pl.Datetime] = pl.Datetime("ns", "UTC")
_KIND_FILL: Final[int] = 0
_KIND_GRID: Final[int] = 1
# Output rows valued per pass: a year's timeline (~700 k rows at a 60 s grid) valued at once held
# every instrument's ~15 columns for all of it (+375 MB at a year's run's peak); a pass of this
# many rows holds a month of it. The as-of joins look back over the whole of fills and marks, so
# a row's value does not depend on the pass it is in.
ROWS_PER_PASS: Final[int] = 1 << 16

FrameLike = pl.DataFrame | pa.Table

FILL_COLUMNS: Final[dict[str, pl.DataType]] = {
    "fill_id": pl.String(),
    "order_id": pl.String(),
    "instrument_key": pl.String(),
    "side": pl.String(),
    "quantity": pl.Float64(),
    "price": pl.Float64(),
    "fee": pl.Float64(),
    "fee_currency": pl.String(),
    "ts_event": pl.Int64(),
    "venue": pl.String(),
}
FUNDING_COLUMNS: Final[dict[str, pl.DataType]] = {
    "ts_event": pl.Int64(),
    "instrument_key": pl.String(),
    "position": pl.Float64(),
    "mark_price": pl.Float64(),
    "funding_rate": pl.Float64(),
    "payment": pl.Float64(),
}
MARK_COLUMNS: Final[dict[str, pl.DataType]] = {
    "ts_event": pl.Int64(),
    "instrument_key": pl.String(),
    "price": pl.Float64(),
}

# --------------------------------------------------------------------------------------------
# Output schemas
# --------------------------------------------------------------------------------------------

_TS: Final[pa.DataType] = pa.timestamp("ns", tz="UTC")


_TYPES: Final[dict[str, pa.DataType]] = {
    "string": pa.string(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "ts": _TS,
}


def _schema(columns: str) -> pa.Schema:
    """A schema written as the docs write it (``name:type``, ``?`` = nullable), so the code and
    docs/outputs.md can be held side by side column for column."""
    fields = []
    for spec in columns.split():
        name, _, kind = spec.partition(":")
        fields.append(pa.field(name, _TYPES[kind.rstrip("?")], nullable=kind.endswith("?")))
    return pa.schema(fields)


_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "orders": _schema(
        "order_id:string operation_id:string instrument_key:string side:string "
        "order_type:string quantity:float64 price:float64? status:string created_at:ts "
        "updated_at:ts rejection_reason:string?"
    ),
    "fills": _schema(
        "fill_id:string order_id:string instrument_key:string side:string quantity:float64 "
        "price:float64 fee:float64 fee_currency:string ts_event:ts venue:string"
    ),
    "positions": _schema(
        "ts_event:ts instrument_key:string quantity:float64 avg_entry_price:float64? "
        "current_price:float64 unrealized_pnl:float64 realized_pnl:float64"
    ),
    "equity_curve": _schema(
        "ts_event:ts portfolio_value:float64 cash_balance:float64 margin_used:float64 "
        "unrealized_pnl:float64 drawdown_pct:float64"
    ),
    "operations": _schema(
        "operation_id:string signal_id:string instrument_key:string algo:string side:string "
        "ts_signal:ts ts_end:ts target_quantity:float64 filled_quantity:float64 "
        "fill_ratio:float64 status:string orders:int64 market_data:string "
        "arrival_price:float64 arrival_spread_bps:float64? avg_fill_price:float64? "
        "end_price:float64 market_vwap:float64? execution_cost_bps:float64? fees_bps:float64? "
        "opportunity_cost_bps:float64 implementation_shortfall_bps:float64 "
        "vwap_slippage_bps:float64? duration_s:float64"
    ),
}


def result_schema(name: str) -> pa.Schema:
    """The Parquet schema of a result table; ``name`` may carry the ``.parquet`` suffix.

    Only the columns ``outputs.md`` marks nullable are nullable, so a writer that leaves a hole
    anywhere else is caught by :func:`conform` instead of by a reader months later.
    """
    key = name.removesuffix(".parquet")
    try:
        return _SCHEMAS[key]
    except KeyError:
        raise ValueError(
            f"unknown result table {name!r}; expected one of {sorted(_SCHEMAS)}"
        ) from None


def conform(table: FrameLike, name: str) -> pa.Table:
    """Cast and order ``table`` to the exact schema of result table ``name``.

    Extra columns are dropped (engine-side helpers such as ``seq`` may ride along); a missing
    column, an impossible cast or a null in a non-nullable column raises ``ValueError`` naming
    the table and the column, because a silently wrong result file is worse than a failed run.
    Integer nanoseconds and naive or other-zone timestamps are read as UTC instants.
    """
    schema = result_schema(name)
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    if not isinstance(table, pa.Table):
        raise TypeError(f"{name}: expected a pyarrow Table or polars DataFrame, got {type(table)}")
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {missing}; have {table.column_names}, need {schema.names}"
        )
    columns: list[pa.ChunkedArray] = []
    for fld in schema:
        if table.column_names.count(fld.name) > 1:
            raise ValueError(f"{name}: column {fld.name!r} appears more than once")
        col = table.column(fld.name)
        if col.type != fld.type:
            try:
                col = col.cast(fld.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(
                    f"{name}: column {fld.name!r} of type {col.type} cannot be cast to "
                    f"{fld.type}: {exc}"
                ) from exc
        if not fld.nullable and col.null_count:
            raise ValueError(
                f"{name}: column {fld.name!r} has {col.null_count} null(s) but is not nullable"
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------


def _frame(data: FrameLike | None, what: str, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """Bring an engine table to polars with the expected dtypes, timestamps as int64 ns.

    Accepting Arrow, polars and datetime or integer timestamps keeps callers free of glue; the
    int64 representation makes every as-of join an exact integer comparison.
    """
    if data is None:
        return pl.DataFrame(schema=columns)
    df = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"{what}: expected a table, got {type(data)}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {df.columns}")
    exprs: list[pl.Expr] = []
    for name, dtype in columns.items():
        col = pl.col(name)
        if name == "ts_event" and isinstance(df.schema[name], pl.Datetime):
            col = col.dt.epoch("ns")
        exprs.append(col.cast(dtype, strict=True).alias(name))
    out = df.select(exprs)
    nulls = {c: n for c, n in zip(out.columns, out.null_count().row(0), strict=True) if n}
    if nulls:
        raise ValueError(f"{what}: null values in {nulls}")
    return out


def _fills(fills: FrameLike) -> pl.DataFrame:
    df = _frame(fills, "fills", FILL_COLUMNS)
    bad_side = df.filter(~pl.col("side").is_in(["BUY", "SELL"]))
    if bad_side.height:
        raise ValueError(f"fills: side must be BUY or SELL, got {bad_side['side'].unique()}")
    if df.filter(~(pl.col("quantity") > 0) | ~pl.col("quantity").is_finite()).height:
        raise ValueError("fills: every quantity must be finite and > 0")
    if df.filter(~pl.col("price").is_finite() | ~pl.col("fee").is_finite()).height:
        raise ValueError("fills: price and fee must be finite")
    # Stable: simultaneous fills keep the engine's order. The engine's fills come in time order
    # already; a stable sort of them would be the identity. One chunk per column either way:
    # Polars sums chunk by chunk, so a stitched run's fills (a chunk per shard and day) would
    # give fee and PnL totals that differ from one engine's in the last bit.
    ts = df.get_column("ts_event")
    df = df.rechunk() if ts.is_sorted() else df.sort("ts_event", maintain_order=True).rechunk()
    return df.with_row_index("seq").with_columns(pl.col("seq").cast(pl.Int64))


def _funding(funding: FrameLike | None) -> pl.DataFrame:
    df = _frame(funding, "funding", FUNDING_COLUMNS)
    if df.filter(~pl.col("payment").is_finite() | ~pl.col("position").is_finite()).height:
        raise ValueError("funding: position and payment must be finite")
    return df.sort("ts_event", maintain_order=True)


def _marks(marks: FrameLike | None) -> dict[str, pl.DataFrame]:
    """Per instrument, its marks (``mark_ts``, ``mark_price``) sorted by time, one per
    nanosecond: the last one given wins.

    Split by instrument before sorting, and deduplicated by comparing each time with the next:
    the same rows as a sort and a ``unique`` over (instrument, time) of the whole frame, without
    hashing a string per mark (a year holds ~550 k marks; the hash table was the largest
    allocation of a year's results).
    """
    df = _frame(marks, "marks", MARK_COLUMNS).filter(pl.col("price").is_finite())
    out: dict[str, pl.DataFrame] = {}
    for key, part in df.partition_by("instrument_key", as_dict=True, include_key=False).items():
        part = part.sort("ts_event", maintain_order=True)
        ts = part.get_column("ts_event")
        last = (ts != ts.shift(-1)).fill_null(True)
        out[str(key[0])] = part.filter(last).select(
            pl.col("ts_event").alias("mark_ts"), pl.col("price").alias("mark_price")
        )
    return out


# --------------------------------------------------------------------------------------------
# Position accounting (the only loop: positions are path-dependent)
# --------------------------------------------------------------------------------------------


@dataclass
class _Book:
    quantity: float = 0.0
    avg: float = math.nan
    realized: float = 0.0
    fees: float = 0.0
    trip: int | None = None


@dataclass
class _Trips:
    instrument_key: list[str] = field(default_factory=list)
    direction: list[str] = field(default_factory=list)
    open_ts: list[int] = field(default_factory=list)
    close_ts: list[int | None] = field(default_factory=list)
    price_pnl: list[float] = field(default_factory=list)
    fees: list[float] = field(default_factory=list)
    fills: list[int] = field(default_factory=list)

    def open(self, instrument: str, quantity: float, ts: int, fee: float) -> int:
        self.instrument_key.append(instrument)
        self.direction.append("LONG" if quantity > 0 else "SHORT")
        self.open_ts.append(ts)
        self.close_ts.append(None)
        self.price_pnl.append(0.0)
        self.fees.append(fee)
        self.fills.append(1)
        return len(self.open_ts) - 1

    def add(self, trip: int, pnl: float, fee: float, new_fill: bool = True) -> None:
        self.price_pnl[trip] += pnl
        self.fees[trip] += fee
        self.fills[trip] += int(new_fill)


def _account(fills: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run netting accounting over normalised fills; returns (events, all trips)."""
    n = fills.height
    instruments = fills["instrument_key"].to_list()
    ts = fills["ts_event"].to_numpy()
    qty = fills["quantity"].to_numpy()
    price = fills["price"].to_numpy()
    fee = fills["fee"].to_numpy()
    signed = np.where(fills["side"].to_numpy() == "BUY", qty, -qty)

    out_qty = np.empty(n)
    out_avg = np.empty(n)
    out_real = np.empty(n)
    out_delta = np.empty(n)
    out_fees = np.empty(n)
    out_trip: list[int | None] = [None] * n
    out_closed: list[int | None] = [None] * n
    books: dict[str, _Book] = {}
    trips = _Trips()

    for i in range(n):
        inst = instruments[i]
        book = books.setdefault(inst, _Book())
        prev, d, p, f, t = (
            book.quantity,
            float(signed[i]),
            float(price[i]),
            float(fee[i]),
            int(ts[i]),
        )
        delta = 0.0
        if prev == 0.0:
            book.quantity, book.avg = d, p
            book.trip = trips.open(inst, d, t, f)
        elif (prev > 0) == (d > 0):
            new = prev + d
            book.avg = (abs(prev) * book.avg + abs(d) * p) / abs(new)
            book.quantity = new
            assert book.trip is not None
            trips.add(book.trip, 0.0, f)
        else:
            closed = min(abs(d), abs(prev))
            delta = closed * (p - book.avg) * (1.0 if prev > 0 else -1.0)
            new = prev + d
            if abs(new) <= FLAT_TOLERANCE * max(abs(prev), abs(d)):
                new = 0.0
            assert book.trip is not None
            if new == 0.0:
                trips.add(book.trip, delta, f)
                trips.close_ts[book.trip] = t
                out_closed[i] = book.trip
                book.quantity, book.avg, book.trip = 0.0, math.nan, None
            elif (new > 0) == (prev > 0):
                trips.add(book.trip, delta, f)
                book.quantity = new
            else:
                fee_closing = f * abs(prev) / abs(d)
                trips.add(book.trip, delta, fee_closing)
                trips.close_ts[book.trip] = t
                out_closed[i] = book.trip
                book.trip = trips.open(inst, new, t, f - fee_closing)
                book.quantity, book.avg = new, p
        book.realized += delta
        book.fees += f
        out_qty[i], out_avg[i], out_real[i] = book.quantity, book.avg, book.realized
        out_delta[i], out_fees[i] = delta, book.fees
        out_trip[i] = book.trip

    events = fills.select(
        "seq",
        "fill_id",
        "ts_event",
        "instrument_key",
        "side",
        pl.col("quantity").alias("fill_quantity"),
        pl.col("price").alias("fill_price"),
        "fee",
    ).with_columns(
        pl.Series("quantity", out_qty, dtype=pl.Float64),
        pl.Series("avg_entry_price", out_avg, dtype=pl.Float64),
        pl.Series("realized_pnl", out_real, dtype=pl.Float64),
        pl.Series("realized_pnl_delta", out_delta, dtype=pl.Float64),
        pl.Series("cum_fees", out_fees, dtype=pl.Float64),
        pl.Series("trip_id", out_trip, dtype=pl.Int64),
        pl.Series("closed_trip_id", out_closed, dtype=pl.Int64),
    )
    trip_df = pl.DataFrame(
        {
            "trip_id": np.arange(len(trips.open_ts), dtype=np.int64),
            "instrument_key": trips.instrument_key,
            "direction": trips.direction,
            "open_ts": trips.open_ts,
            "close_ts": trips.close_ts,
            "fills": trips.fills,
            "price_pnl": trips.price_pnl,
            "fees": trips.fees,
        },
        schema={
            "trip_id": pl.Int64,
            "instrument_key": pl.String,
            "direction": pl.String,
            "open_ts": pl.Int64,
            "close_ts": pl.Int64,
            "fills": pl.Int64,
            "price_pnl": pl.Float64,
            "fees": pl.Float64,
        },
    )
    return events, trip_df


def position_events(fills: FrameLike) -> pl.DataFrame:
    """The netting position of the filled instrument after every fill, in processing order.

    Columns: ``seq``, ``fill_id``, ``ts_event`` (int64 ns), ``instrument_key``, ``side``,
    ``fill_quantity``, ``fill_price``, ``fee``, then the state after the fill: signed
    ``quantity``, ``avg_entry_price`` (NaN when flat), cumulative per-instrument
    ``realized_pnl`` (price only), this fill's ``realized_pnl_delta``, cumulative
    per-instrument ``cum_fees``, ``trip_id`` (trip open after the fill, null when flat) and
    ``closed_trip_id`` (trip this fill closed, if any). See the module docstring for the rules.
    """
    return _account(_fills(fills))[0]


# --------------------------------------------------------------------------------------------
# Timeline: fills + equity grid, every instrument's state and mark at each row
# --------------------------------------------------------------------------------------------


def _grid(start_ns: int, end_ns: int, interval_ns: int) -> np.ndarray:
    """Grid ``start, start+i, …`` closed at ``end`` (appended when off-step) so the last row
    always sees the whole run."""
    if interval_ns <= 0:
        raise ValueError(f"equity_interval_ns must be > 0, got {interval_ns}")
    if end_ns < start_ns:
        raise ValueError(f"end_ns {end_ns} is before start_ns {start_ns}")
    grid = np.arange(start_ns, end_ns + 1, interval_ns, dtype=np.int64)
    if grid[-1] != end_ns:
        grid = np.append(grid, np.int64(end_ns))
    return grid


def _check_bounds(df: pl.DataFrame, what: str, start_ns: int, end_ns: int) -> None:
    if df.height == 0:
        return
    lo, hi = int(df["ts_event"].min()), int(df["ts_event"].max())  # type: ignore[arg-type]
    if lo < start_ns or hi > end_ns:
        raise ValueError(f"{what}: ts_event outside the run [{start_ns}, {end_ns}]: {lo} .. {hi}")


def _rows(events: pl.DataFrame, grid: np.ndarray) -> pl.DataFrame:
    """All output rows in their final order with a dense position ``pos`` (the as-of key).

    Ordering on (ts, kind, seq) rather than ts alone is what makes simultaneous fills and a
    grid sample at the same nanosecond see each other in a fixed, documented way. Both sides
    are in that order already (``events`` by ``seq``, which follows time; the grid ascending),
    so the rows are their merge: each row's place is its index plus the rows of the other side
    before it (a fill precedes a grid sample of its nanosecond). The same order as sorting the
    concatenation on the three keys, without the sort's row encoding of a year's ~700 k rows.
    """
    fill_rows = events.select(
        "ts_event",
        pl.lit(_KIND_FILL, dtype=pl.Int8).alias("kind"),
        "seq",
        pl.col("instrument_key").alias("fill_instrument"),
    )
    grid_rows = pl.DataFrame(
        {
            "ts_event": grid,
            "kind": np.full(grid.size, _KIND_GRID, dtype=np.int8),
            "seq": np.arange(grid.size, dtype=np.int64),
            "fill_instrument": pl.Series([None] * grid.size, dtype=pl.String),
        }
    )
    fill_ts = fill_rows.get_column("ts_event").to_numpy()
    place = np.empty(fill_rows.height + grid.size, dtype=np.int64)  # row → its place
    place[: fill_rows.height] = np.arange(fill_rows.height) + np.searchsorted(grid, fill_ts, "left")
    place[fill_rows.height :] = np.arange(grid.size) + np.searchsorted(fill_ts, grid, "right")
    order = np.empty_like(place)  # place → its row
    order[place] = np.arange(place.size)
    return (
        pl.concat([fill_rows, grid_rows], how="vertical")
        .select(pl.all().gather(order))
        .with_row_index("pos")
        .with_columns(pl.col("pos").cast(pl.Int64))
    )


def _instrument_states(
    rows: pl.DataFrame, events: pl.DataFrame, marks_by: dict[str, pl.DataFrame]
) -> Iterator[tuple[int, dict[str, pl.DataFrame]]]:
    """Per pass of at most ``ROWS_PER_PASS`` consecutive rows, its row count and each
    instrument's position and valuation at every row of the pass (row order, keyed by ``pos``),
    instruments sorted."""
    fill_pos = rows.filter(pl.col("kind") == _KIND_FILL).select("pos", "seq")
    events = events.join(fill_pos, on="seq", how="left", maintain_order="left")
    right: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
    for inst in sorted(events["instrument_key"].unique().to_list()):
        ev = events.filter(pl.col("instrument_key") == inst).select(
            "pos",
            "quantity",
            "avg_entry_price",
            "realized_pnl",
            "fill_price",
            pl.col("ts_event").alias("fill_ts"),
        )
        mk = marks_by.get(
            inst, pl.DataFrame(schema={"mark_ts": pl.Int64, "mark_price": pl.Float64})
        )
        right[inst] = ev, mk
    for offset in range(0, max(rows.height, 1), ROWS_PER_PASS):
        part = rows.slice(offset, ROWS_PER_PASS)
        yield part.height, {inst: _state(part, inst, ev, mk) for inst, (ev, mk) in right.items()}


def _state(rows: pl.DataFrame, inst: str, ev: pl.DataFrame, mk: pl.DataFrame) -> pl.DataFrame:
    """One instrument's position and valuation at ``rows``: the fill and the mark in force."""
    st = rows.join_asof(ev, on="pos", strategy="backward").join_asof(
        mk, left_on="ts_event", right_on="mark_ts", strategy="backward"
    )
    use_fill = pl.col("mark_ts").is_null() | (
        pl.col("fill_ts").is_not_null() & (pl.col("fill_ts") >= pl.col("mark_ts"))
    )
    qty = pl.col("quantity").fill_null(0.0)
    st = (
        st.with_columns(
            pl.lit(inst).alias("instrument_key"),
            qty.alias("quantity"),
            pl.col("realized_pnl").fill_null(0.0),
            pl.when(use_fill)
            .then(pl.col("fill_price"))
            .otherwise(pl.col("mark_price"))
            .alias("current_price"),
        )
        .with_columns(
            (pl.col("quantity") * (pl.col("current_price") - pl.col("avg_entry_price"))).alias(
                "_u"
            ),
        )
        .with_columns(
            # A short at its entry price is 0.0, not -0.0 (as Parquet would keep it). Not by
            # ``+ 0.0``: Polars 2.1 hands back a column of two or more rows unchanged when a
            # literal 0 is added (a one-row column gets the sum), so the sign bit would depend
            # on the size of the frame that valued the row.
            pl.when(pl.col("quantity") == 0.0)
            .then(0.0)
            .when(pl.col("_u") == 0.0)
            .then(0.0)
            .otherwise(pl.col("_u"))
            .alias("unrealized_pnl"),
        )
        .drop("_u")
    )
    return st


def _prepare(
    fills: FrameLike, start_ns: int, end_ns: int, equity_interval_ns: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    fills_df = _fills(fills)
    _check_bounds(fills_df, "fills", start_ns, end_ns)
    events, _ = _account(fills_df)
    return events, _rows(events, _grid(start_ns, end_ns, equity_interval_ns))


def build_positions(
    fills: FrameLike,
    marks: FrameLike | None,
    start_ns: int,
    end_ns: int,
    equity_interval_ns: int = DEFAULT_EQUITY_INTERVAL_NS,
) -> pl.DataFrame:
    """The ``positions.parquet`` timeline: a row at every fill (also the one that goes flat) and
    one per open instrument at every equity grid sample, in equity-curve row order, instruments
    sorted by key within a sample."""
    events, rows = _prepare(fills, start_ns, end_ns, equity_interval_ns)
    columns = [
        "ts_event",
        "instrument_key",
        "quantity",
        "avg_entry_price",
        "current_price",
        "unrealized_pnl",
        "realized_pnl",
    ]
    parts = [
        st.filter(
            ((pl.col("kind") == _KIND_FILL) & (pl.col("fill_instrument") == inst))
            | ((pl.col("kind") == _KIND_GRID) & (pl.col("quantity") != 0.0))
        ).select("pos", pl.lit(rank, dtype=pl.Int32).alias("_rank"), *columns)
        for _height, states in _instrument_states(rows, events, _marks(marks))
        for rank, (inst, st) in enumerate(states.items())
    ]
    if not parts:
        return pl.DataFrame(schema={c: pl.Float64 for c in columns}).with_columns(
            pl.col("ts_event").cast(pl.Int64).cast(UTC_NS),
            pl.col("instrument_key").cast(pl.String),
        )
    # A flat position has no entry price: null in the output (NaN only inside the accounting).
    return (
        pl.concat(parts, how="vertical")
        # The states come in sorted-key order: their rank sorts as the key does, without
        # comparing a string per row (a year's sort by the key string cost ~70 MB).
        .sort(["pos", "_rank"], maintain_order=True)
        .drop("pos", "_rank")
        .with_columns(pl.col("ts_event").cast(UTC_NS), pl.col("avg_entry_price").fill_nan(None))
        .rechunk()  # one chunk per column however many passes valued it (Parquet pages follow)
    )


def build_equity_curve(
    fills: FrameLike,
    funding: FrameLike | None,
    marks: FrameLike | None,
    starting_balance: float,
    start_ns: int,
    end_ns: int,
    equity_interval_ns: int = DEFAULT_EQUITY_INTERVAL_NS,
    margin_init: dict[str, float] | None = None,
) -> pl.DataFrame:
    """The ``equity_curve.parquet`` rows: the grid ``[start_ns, end_ns]`` plus a row per fill.

    ``margin_init`` maps instrument_key → initial margin fraction (0 for spot); ``None`` means
    no margin anywhere. An instrument that traded but is missing from a given mapping is an
    error rather than a silent zero. Sums over instruments run in sorted-key order so the
    result is bit-for-bit reproducible.
    """
    events, rows = _prepare(fills, start_ns, end_ns, equity_interval_ns)
    funding_df = _funding(funding)
    _check_bounds(funding_df, "funding", start_ns, end_ns)
    if margin_init is not None:
        traded = set(events.get_column("instrument_key").unique().to_list())
        missing = sorted(traded - set(margin_init))
        if missing:
            raise ValueError(f"margin_init has no entry for traded instrument(s) {missing}")

    # Accumulate instrument by instrument in sorted-key order: a fixed summation order keeps
    # the curve bit-for-bit reproducible (and the same whatever pass a row is valued in).
    unrealized_parts, margin_parts = [], []
    for height, states in _instrument_states(rows, events, _marks(marks)):
        unrealized = pl.Series("unrealized_pnl", np.zeros(height), dtype=pl.Float64)
        margin = pl.Series("margin_used", np.zeros(height), dtype=pl.Float64)
        for inst, st in states.items():
            rate = 0.0 if margin_init is None else float(margin_init[inst])
            unrealized = unrealized + st["unrealized_pnl"]
            margin = (
                margin
                + st.select(
                    pl.when(pl.col("quantity") != 0.0)
                    .then(pl.col("quantity").abs() * pl.col("current_price") * rate)
                    .otherwise(0.0)
                ).to_series()
            )
        unrealized_parts.append(unrealized)
        margin_parts.append(margin)
    unrealized = pl.concat(unrealized_parts, rechunk=True)
    margin = pl.concat(margin_parts, rechunk=True)

    totals = events.select(
        "seq",
        pl.col("realized_pnl_delta").cum_sum().alias("realized_total"),
        pl.col("fee").cum_sum().alias("fees_total"),
    )
    paid = (
        funding_df.group_by("ts_event", maintain_order=True)
        .agg(pl.col("payment").sum())
        .sort("ts_event")
        .select(
            pl.col("ts_event").alias("funding_ts"),
            pl.col("payment").cum_sum().alias("funding_total"),
        )
    )
    curve = (
        rows.join(
            rows.filter(pl.col("kind") == _KIND_FILL).select("pos", "seq").join(totals, on="seq"),
            on="pos",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            pl.col("realized_total").forward_fill().fill_null(0.0),
            pl.col("fees_total").forward_fill().fill_null(0.0),
        )
        .join_asof(paid, left_on="ts_event", right_on="funding_ts", strategy="backward")
        .with_columns(pl.col("funding_total").fill_null(0.0))
        .with_columns(unrealized.alias("unrealized_pnl"), margin.alias("margin_used"))
        .with_columns(
            (
                pl.lit(float(starting_balance))
                + pl.col("realized_total")
                - pl.col("fees_total")
                - pl.col("funding_total")
            ).alias("cash_balance")
        )
        .with_columns((pl.col("cash_balance") + pl.col("unrealized_pnl")).alias("portfolio_value"))
        .with_columns(
            (100.0 * (pl.col("portfolio_value") / pl.col("portfolio_value").cum_max() - 1.0))
            .clip(upper_bound=0.0)
            .alias("drawdown_pct")
        )
    )
    return curve.select(
        pl.col("ts_event").cast(UTC_NS),
        "portfolio_value",
        "cash_balance",
        "margin_used",
        "unrealized_pnl",
        "drawdown_pct",
    )


# --------------------------------------------------------------------------------------------
# PnL and round trips
# --------------------------------------------------------------------------------------------


def _ts_int(df: pl.DataFrame) -> pl.Series:
    s = df["ts_event"]
    return s.dt.epoch("ns") if isinstance(s.dtype, pl.Datetime) else s.cast(pl.Int64)


def build_pnl(
    fills: FrameLike,
    funding: FrameLike | None,
    equity_curve: FrameLike,
    starting_balance: float,
) -> dict[str, float]:
    """The ``pnl`` block of ``summary.json``, cross-checked against the equity curve.

    Gross PnL is recomputed from the fills (realized) and funding table, with only the final
    unrealized PnL taken from the curve; if ``net_pnl`` then disagrees with the curve's last
    ``portfolio_value − starting_balance`` the result files contradict each other, which must
    fail the run rather than be published.
    """
    events = position_events(fills)
    funding_df = _funding(funding)
    curve = equity_curve if isinstance(equity_curve, pl.DataFrame) else pl.from_arrow(equity_curve)
    assert isinstance(curve, pl.DataFrame)
    if curve.height == 0:
        raise ValueError("equity_curve is empty; cannot derive the final PnL")
    last = (
        curve.with_columns(_ts_int(curve).alias("_ts"))
        .sort("_ts", maintain_order=True)
        .row(-1, named=True)
    )
    realized = float(events["realized_pnl_delta"].sum()) if events.height else 0.0
    total_fees = float(events["fee"].sum()) if events.height else 0.0
    funding_paid = float(funding_df["payment"].sum()) if funding_df.height else 0.0
    gross = realized + float(last["unrealized_pnl"]) - funding_paid
    net = gross - total_fees
    expected = float(last["portfolio_value"]) - float(starting_balance)
    if not math.isclose(net, expected, rel_tol=PNL_CHECK_REL_TOL, abs_tol=PNL_CHECK_REL_TOL):
        raise ValueError(
            f"PnL does not reconcile: net_pnl {net!r} (realized {realized!r} + unrealized "
            f"{last['unrealized_pnl']!r} - funding {funding_paid!r} - fees {total_fees!r}) "
            f"!= last portfolio_value - starting_balance {expected!r}; funding or fills outside "
            f"the equity curve, or the curve was built from different inputs"
        )
    return {
        "gross_pnl": gross,
        "net_pnl": net,
        "total_fees": total_fees,
        "funding_paid": funding_paid,
    }


def round_trips(fills: FrameLike, funding: FrameLike | None = None) -> pl.DataFrame:
    """One row per closed round trip, in closing order (ties by opening order).

    Columns: ``trip_id``, ``instrument_key``, ``direction`` (LONG/SHORT), ``open_ts``,
    ``close_ts`` (int64 ns), ``fills`` (fills touching the trip, a flip counts for both),
    ``price_pnl``, ``fees``, ``funding`` (paid, positive = cost) and
    ``net_pnl = price_pnl − fees − funding``. Trips still open at the end are not trades yet
    and are left out. A funding row with a non-zero position that matches no trip means the
    funding table and the fills disagree, and raises.
    """
    events, trips = _account(_fills(fills))
    funding_df = _funding(funding).with_row_index("funding_row")
    attributed = _attribute_funding(events, funding_df)
    trips = (
        trips.join(attributed, on="trip_id", how="left", maintain_order="left")
        .with_columns(pl.col("funding").fill_null(0.0))
        .with_columns((pl.col("price_pnl") - pl.col("fees") - pl.col("funding")).alias("net_pnl"))
    )
    return trips.filter(pl.col("close_ts").is_not_null()).sort(
        ["close_ts", "trip_id"], maintain_order=True
    )


def _attribute_funding(events: pl.DataFrame, funding: pl.DataFrame) -> pl.DataFrame:
    """Sum of funding per trip (``trip_id``, ``funding``); see the module docstring."""
    empty = pl.DataFrame(schema={"trip_id": pl.Int64, "funding": pl.Float64})
    relevant = funding.filter((pl.col("position") != 0.0) | (pl.col("payment") != 0.0))
    if relevant.height == 0:
        return empty
    state = events.select(
        "instrument_key",
        pl.col("ts_event").alias("ev_ts"),
        "quantity",
        "trip_id",
    ).unique(subset=["instrument_key", "ev_ts"], keep="last", maintain_order=True)
    # One state per instrument and instant (after its last fill then), so the as-of join does
    # not depend on how ties among right keys are resolved.
    at = relevant.join_asof(
        state,
        left_on="ts_event",
        right_on="ev_ts",
        by="instrument_key",
        strategy="backward",
        check_sortedness=False,  # both sides are sorted by time above
    )
    before = relevant.select("funding_row", "instrument_key", "ts_event").join_asof(
        state.rename({"quantity": "quantity_before", "trip_id": "trip_before"}),
        left_on="ts_event",
        right_on="ev_ts",
        by="instrument_key",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    sign = pl.col("position").sign()
    matched = at.join(
        before.select("funding_row", "quantity_before", "trip_before"),
        on="funding_row",
        maintain_order="left",
    ).with_columns(
        pl.when((sign != 0) & (pl.col("quantity").fill_null(0.0).sign() == sign))
        .then(pl.col("trip_id"))
        .when((sign != 0) & (pl.col("quantity_before").fill_null(0.0).sign() == sign))
        .then(pl.col("trip_before"))
        .otherwise(None)
        .alias("attributed_trip")
    )
    orphans = matched.filter(pl.col("attributed_trip").is_null())
    if orphans.height:
        raise ValueError(
            "funding rows match no open position in the fills (instrument, ts_event, position, "
            f"payment): {orphans.select('instrument_key', 'ts_event', 'position', 'payment').rows()[:5]}"
        )
    return (
        matched.group_by("attributed_trip")
        .agg(pl.col("payment").sort_by("funding_row").sum().alias("funding"))
        .rename({"attributed_trip": "trip_id"})
        .sort("trip_id")
    )
