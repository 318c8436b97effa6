"""Input schemas (docs/storage.md) and their validation.

Every table that enters a backtest passes through one of the ``validate_*`` functions here, so a
bad file fails *before* a run with a message that names the object, the column and what was
expected vs found (first offending row and value, number of offending rows), instead of surfacing
hours later as a wrong fill or a NumPy error deep in the engine.

The checks are vectorised (polars expressions): validating a 2 M-row trades day costs well under
a second. Validation also *normalises*: timestamps (``int64`` or Arrow ``timestamp[*]``) become
``int64`` nanoseconds, numeric columns get their canonical width, ``side`` is lower-cased and
``algo`` upper-cased, optional columns are added, and columns outside the schema are dropped, so
downstream code sees exactly one shape per table.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, Protocol, TypeVar, cast, overload

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from backtest_pipeline import layout

Kind = Literal["timestamp", "string", "float", "int32", "int64", "bool"]

SIDES: Final[tuple[str, ...]] = ("buy", "sell")
ALGOS: Final[tuple[str, ...]] = ("MARKET", "LIMIT", "TWAP")


class DataValidationError(ValueError):
    """An input table that does not match its schema or content rules.

    The message always starts with the object name (``gs://bucket/path`` or a file path) so that
    an operator can open the offending file directly; the structured attributes let tests and the
    CLI tell problems apart without parsing text.
    """

    def __init__(
        self,
        object_name: str,
        problem: str,
        *,
        column: str | None = None,
        row: int | None = None,
        value: Any = None,
    ) -> None:
        self.object_name = object_name
        self.problem = problem
        self.column = column
        self.row = row
        self.value = value
        where = f"column {column!r}: " if column else ""
        super().__init__(f"{object_name}: {where}{problem}")


class MissingDataError(DataValidationError, FileNotFoundError):
    """A required input object does not exist: a run must stop, not silently skip the day."""


@dataclass(frozen=True)
class Column:
    """One column of an input schema: its canonical kind and whether it may be null / absent."""

    name: str
    kind: Kind
    nullable: bool = False
    required: bool = True
    int_as_string: bool = False  # ids that some sources store as integers (cast losslessly)


INSTRUMENT_COLUMNS: Final[tuple[Column, ...]] = (
    Column("instrument_key", "string"),
    Column("venue", "string"),
    Column("instrument_type", "string"),
    Column("base_asset", "string"),
    Column("quote_asset", "string"),
    Column("settle_asset", "string"),
    Column("venue_symbol", "string"),
    Column("price_precision", "int32"),
    Column("size_precision", "int32"),
    Column("tick_size", "float"),
    Column("lot_size", "float"),
    Column("min_quantity", "float"),
    Column("max_quantity", "float", nullable=True),
    Column("min_notional", "float", nullable=True),
    Column("maker_fee", "float"),
    Column("taker_fee", "float"),
    Column("margin_init", "float"),
    Column("margin_maint", "float"),
    Column("contract_multiplier", "float"),
    Column("is_inverse", "bool"),
    Column("expiry_ts", "int64", nullable=True, required=False),
)

TRADE_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts_event", "timestamp"),
    Column("ts_init", "timestamp", nullable=True, required=False),
    Column("trade_id", "string", int_as_string=True),
    Column("price", "float"),
    Column("size", "float"),
    Column("side", "string"),
)

FUNDING_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts_event", "timestamp"),
    Column("funding_rate", "float"),
    Column("mark_price", "float"),
)

SIGNAL_COLUMNS: Final[tuple[Column, ...]] = (
    Column("signal_id", "string", int_as_string=True),
    Column("ts_event", "timestamp"),
    Column("instrument_key", "string"),
    Column("target_position", "float"),
    Column("execution_window_s", "float"),
    Column("algo", "string"),
    Column("limit_price", "float", nullable=True, required=False),
)

QUOTE_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts_event", "timestamp"),
    Column("ts_init", "timestamp", nullable=True, required=False),
    Column("bid_price", "float"),
    Column("bid_size", "float"),
    Column("ask_price", "float"),
    Column("ask_size", "float"),
)

BOOK_LEVELS: Final = 10
BOOK_SIDES: Final[tuple[str, ...]] = ("bid", "ask")


def book_column(side: str, field: str, level: int) -> str:
    """`bid_price_0` … `ask_size_9`: the one spelling of a book_depth10 column name."""
    return f"{side}_{field}_{level}"


BOOK_DEPTH10_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts_event", "timestamp"),
    Column("ts_init", "timestamp", nullable=True, required=False),
    *(
        Column(book_column(side, field, i), "float", nullable=True)
        for side in BOOK_SIDES
        for field in ("price", "size")
        for i in range(BOOK_LEVELS)
    ),
)

BARS_COLUMNS: Final[tuple[Column, ...]] = (
    Column("ts_event", "timestamp"),
    Column("open", "float"),
    Column("high", "float"),
    Column("low", "float"),
    Column("close", "float"),
    Column("volume", "float"),
)

_ARROW: Final[dict[Kind, pa.DataType]] = {
    "timestamp": pa.int64(),
    "string": pa.string(),
    "float": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}
_POLARS: Final[dict[Kind, Any]] = {
    "timestamp": pl.Int64,
    "string": pl.String,
    "float": pl.Float64,
    "int32": pl.Int32,
    "int64": pl.Int64,
    "bool": pl.Boolean,
}
_EXPECTED: Final[dict[Kind, str]] = {
    "timestamp": "int64 nanoseconds or timestamp[ns, UTC]",
    "string": "string",
    "float": "float64",
    "int32": "int32 (an integer type)",
    "int64": "int64",
    "bool": "bool",
}


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The canonical Arrow schema (what the product writes): timestamps as int64 ns."""
    return pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=c.nullable) for c in columns])


INSTRUMENTS_SCHEMA: Final = arrow_schema(INSTRUMENT_COLUMNS)
TRADES_SCHEMA: Final = arrow_schema(TRADE_COLUMNS)
FUNDING_SCHEMA: Final = arrow_schema(FUNDING_COLUMNS)
SIGNALS_SCHEMA: Final = arrow_schema(SIGNAL_COLUMNS)
BARS_SCHEMA: Final = arrow_schema(BARS_COLUMNS)
QUOTES_SCHEMA: Final = arrow_schema(QUOTE_COLUMNS)
BOOK_DEPTH10_SCHEMA: Final = arrow_schema(BOOK_DEPTH10_COLUMNS)


def ns_to_iso(ns: int | None) -> str:
    """Human form of a ns timestamp for error messages (the raw int is kept alongside)."""
    if ns is None:
        return "null"
    secs, rem = divmod(int(ns), 1_000_000_000)
    try:
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem:09d}Z"
    except (OverflowError, OSError, ValueError):
        return f"{ns} (out of range)"


# ---- schema conformance ------------------------------------------------------------------


def _to_polars(table: pa.Table | pl.DataFrame, object_name: str) -> pl.DataFrame:
    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pa.Table | pa.RecordBatch):
        try:
            df = pl.from_arrow(table)
        except Exception as exc:  # exotic Arrow types polars cannot take
            raise DataValidationError(object_name, f"cannot convert the table: {exc}") from exc
        assert isinstance(df, pl.DataFrame)
        return df
    raise TypeError(
        f"{object_name}: expected a pyarrow Table or polars DataFrame, got {type(table)}"
    )


def _conform_column(df: pl.DataFrame, col: Column, object_name: str) -> pl.Expr:
    """An expression casting `col` to its canonical type, or a precise error if it cannot be."""
    dtype = df.schema[col.name]
    target = _POLARS[col.kind]
    c = pl.col(col.name)
    found = f"found {dtype}"
    if dtype == pl.Null:
        if col.nullable or df.height == 0:
            return pl.lit(None, dtype=target).alias(col.name)
        raise DataValidationError(
            object_name,
            f"expected {_EXPECTED[col.kind]}, found an all-null column",
            column=col.name,
        )
    if col.kind == "timestamp":
        if dtype == pl.Int64:
            return c
        if dtype == pl.UInt64:
            return c.cast(pl.Int64, strict=True)
        if isinstance(dtype, pl.Datetime):
            return c.cast(pl.Datetime("ns", dtype.time_zone)).cast(pl.Int64)
        raise DataValidationError(
            object_name, f"expected {_EXPECTED['timestamp']}, {found}", column=col.name
        )
    if col.kind == "float":
        if dtype.is_float() or dtype.is_integer():
            return c.cast(pl.Float64)
    elif col.kind in ("int32", "int64"):
        if dtype.is_integer():
            return c.cast(target, strict=True)
    elif col.kind == "bool":
        if dtype == pl.Boolean:
            return c
    elif col.kind == "string":
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum | pl.Categorical):
            return c.cast(pl.String)
        if col.int_as_string and dtype.is_integer():
            return c.cast(pl.String)
    raise DataValidationError(
        object_name, f"expected {_EXPECTED[col.kind]}, {found}", column=col.name
    )


def conform(
    table: pa.Table | pl.DataFrame,
    columns: tuple[Column, ...],
    object_name: str,
    *,
    what: str,
    allow_empty: bool = False,
) -> pl.DataFrame:
    """Check names, types and nulls; return the canonical columns in canonical order.

    A renamed column shows up as missing; the message lists what the object does have and the
    closest name, which is usually the typo.
    """
    df = _to_polars(table, object_name)
    if df.width == 0:
        raise DataValidationError(object_name, f"empty {what} table (no columns)")
    if df.height == 0 and not allow_empty:
        raise DataValidationError(object_name, f"empty {what} table (0 rows)")
    have = df.columns
    missing = [c.name for c in columns if c.required and c.name not in have]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(
                name, [h for h in have if h not in {c.name for c in columns}], n=1
            )
            if close:
                hints.append(f"{close[0]!r} looks like a renamed {name!r}")
        hint = f"; {'; '.join(hints)}" if hints else ""
        raise DataValidationError(
            object_name,
            f"{what}: missing required column(s) {missing}; the object has {have}{hint}",
            column=missing[0],
        )
    exprs: list[pl.Expr] = []
    for col in columns:
        if col.name in have:
            exprs.append(_conform_column(df, col, object_name))
        else:
            exprs.append(pl.lit(None, dtype=_POLARS[col.kind]).alias(col.name))
    try:
        out = df.select(exprs)
    except pl.exceptions.InvalidOperationError as exc:  # e.g. an int64 that overflows int32
        raise DataValidationError(
            object_name, f"{what}: a column does not fit its type: {exc}"
        ) from exc
    for col in columns:
        if not col.nullable:
            _check(
                out, pl.col(col.name).is_null(), object_name, col.name, "a non-null value", "null"
            )
    return out


def _check(
    df: pl.DataFrame,
    bad: pl.Expr,
    object_name: str,
    column: str,
    expected: str,
    found: str | None = None,
    show: pl.Expr | None = None,
) -> None:
    """Raise on the first row where `bad` holds, naming row index, value and how many rows."""
    res = df.select(
        n=bad.fill_null(True).sum(),
        first=bad.fill_null(True).arg_true().first(),
    ).row(0)
    n_bad, first = res
    if not n_bad:
        return
    value = df.select((show if show is not None else pl.col(column)).gather(first)).item()
    desc = found if found is not None else repr(value)
    if column in ("ts_event", "ts_init") and isinstance(value, int):
        desc = f"{value} ({ns_to_iso(value)})"
    raise DataValidationError(
        object_name,
        f"expected {expected}, found {desc} at row {first} ({n_bad} offending row{'s' if n_bad > 1 else ''})",
        column=column,
        row=int(first),
        value=value,
    )


def _check_positive_finite(
    df: pl.DataFrame, name: str, object_name: str, *, nullable: bool = False
) -> None:
    c = pl.col(name)
    bad = ~(c.is_finite() & (c > 0))
    if nullable:
        bad = c.is_not_null() & bad
    _check(df, bad, object_name, name, "finite values > 0")


def _check_sorted(df: pl.DataFrame, object_name: str, what: str) -> None:
    c = pl.col("ts_event")
    back = c.diff() < 0
    res = df.select(
        n=back.fill_null(False).sum(), first=back.fill_null(False).arg_true().first()
    ).row(0)
    if res[0]:
        i = int(res[1])
        prev, cur = df["ts_event"][i - 1], df["ts_event"][i]
        raise DataValidationError(
            object_name,
            f"{what} must be sorted by ts_event (non-decreasing); row {i} has {cur} ({ns_to_iso(cur)}) "
            f"before row {i - 1}'s {prev} ({ns_to_iso(prev)}) ({res[0]} backward step(s))",
            column="ts_event",
            row=i,
            value=cur,
        )


def _strictly_increasing_ints(s: pl.Series) -> bool:
    """True when every value parses as an integer and the sequence strictly increases.

    Exchange trade ids usually are such counters: then they are distinct (distinct parsed values
    imply distinct strings) at the cost of one parse and one diff, against ~0.2 s of hashing
    2 M strings. False says nothing; the caller falls back to counting distinct values.
    """
    if s.len() < 2:
        return s.null_count() == 0
    if s.dtype == pl.String:
        s = s.str.to_integer(strict=False)
    elif not s.dtype.is_integer():
        return False
    if s.null_count():
        return False
    return bool((s.diff().slice(1) > 0).all())


def check_unique(df: pl.DataFrame, name: str, object_name: str, what: str) -> None:
    if _strictly_increasing_ints(df[name]):  # the common case of sequential ids: no hashing
        return
    if df.select(pl.col(name).n_unique()).item() == df.height:  # fast path (hash count only)
        return
    dup = pl.col(name).is_duplicated()
    res = df.select(n=dup.sum(), first=dup.arg_true().first()).row(0)
    if res[0]:
        i = int(res[1])
        value = df[name][i]
        first_seen = df.select(pl.col(name).eq(value).arg_true().first()).item()
        raise DataValidationError(
            object_name,
            f"expected unique {what}, found {value!r} more than once (rows {first_seen} and later; "
            f"{res[0]} rows share a duplicated value)",
            column=name,
            row=int(first_seen),
            value=value,
        )


def _check_day(
    df: pl.DataFrame, day: str | date | None, object_name: str, column: str = "ts_event"
) -> None:
    if day is None or df.height == 0:
        return
    start, end = layout.day_bounds_ns(day)
    c = pl.col(column)
    _check(
        df,
        (c < start) | (c >= end),
        object_name,
        column,
        f"timestamps inside the UTC day {layout.day_str(day)} [{start}, {end})",
    )


def _check_keys(df: pl.DataFrame, name: str, object_name: str) -> None:
    """Instrument keys go into object paths later: refuse anything layout would refuse."""
    uniq = df.select(pl.col(name).unique(maintain_order=True)).to_series().to_list()
    for key in uniq:
        try:
            layout.validate_instrument_key(key)
        except layout.LayoutError as exc:
            row = df.select(pl.col(name).eq(key).arg_true().first()).item()
            raise DataValidationError(
                object_name,
                f"invalid instrument key at row {row}: {exc}",
                column=name,
                row=row,
                value=key,
            ) from exc


# ---- per-table validation ----------------------------------------------------------------


@overload
def validate_trades(
    table: pa.Table, object_name: str, *, day: str | date | None = ..., allow_empty: bool = ...
) -> pa.Table: ...
@overload
def validate_trades(
    table: pl.DataFrame, object_name: str, *, day: str | date | None = ..., allow_empty: bool = ...
) -> pl.DataFrame: ...
def validate_trades(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = True,
) -> pa.Table | pl.DataFrame:
    """Validate and normalise trades; returns the same kind of table it was given.

    ``allow_empty`` defaults to True because the streaming reader validates the rows of a time
    window, which may legitimately hold no trade; whole-file readers and importers pass False.
    ``day`` additionally checks that every ts_event lies inside that UTC day. A missing or null
    ``ts_init`` is filled with ``ts_event`` (NautilusTrader's convention when no receive time exists).
    """
    df = validate_trades_frame(table, object_name, day=day, allow_empty=allow_empty)
    if isinstance(table, pl.DataFrame):
        return df
    canonical = _canonical_trades_arrow(table)
    return canonical if canonical is not None else to_arrow(df, TRADES_SCHEMA)


def _canonical_trades_arrow(table: pa.Table | pa.RecordBatch) -> pa.Table | None:
    """The validated output built from the input's own Arrow columns, when nothing needs casting.

    Only for inputs already in the canonical types with lower-case sides (what the product
    writes); then the result equals ``to_arrow(validated frame)`` value for value, without
    converting 2 M strings back from polars (~0.13 s per whole day). Anything else: None.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if table.num_rows == 0:
        return None
    names = table.column_names
    if len(set(names)) != len(names):
        return None
    cols: dict[str, pa.ChunkedArray] = {}
    for field in TRADES_SCHEMA:
        if field.name not in names:
            if field.name == "ts_init":
                continue
            return None
        col = table.column(field.name)
        if col.type != field.type:
            return None
        cols[field.name] = col
    side = cols["side"]
    if not pc.all(pc.is_in(side, value_set=_SIDES_ARROW)).as_py():
        return None  # upper/mixed case: the frame's lower-cased sides are the result
    ts_init = cols.get("ts_init")
    if ts_init is None:
        ts_init = cols["ts_event"]
    elif ts_init.null_count:
        ts_init = pc.coalesce(ts_init, cols["ts_event"])
    arrays = [cols["ts_event"], ts_init, cols["trade_id"], cols["price"], cols["size"], side]
    return pa.Table.from_arrays(arrays, schema=TRADES_SCHEMA)


def string_array(values: Sequence[str]) -> pa.StringArray:
    """``pa.array(values, pa.string())`` built from its buffers.

    Why: ``pa.array`` (and ``pa.scalar``) of Python values import pandas on first use
    (~0.4 s), which a process that only reads and validates trades (the Dagster step fetching
    tick slices) never needs otherwise.
    """
    data = [v.encode() for v in values]
    offsets = np.cumsum([0, *(len(d) for d in data)], dtype=np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    return pa.Array.from_buffers(pa.string(), len(data), buffers)


def repeated_string(value: str, n: int) -> pa.StringArray:
    """``pa.array([value] * n, pa.string())``, built from its buffers (see :func:`string_array`)."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    if n and offsets[-1] > np.iinfo(np.int32).max:  # beyond a string array's 2 GiB
        raise ValueError(f"{n} copies of {value!r} do not fit one string array")
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data * n)]
    return pa.Array.from_buffers(pa.string(), n, buffers)


_SIDES_ARROW = string_array(SIDES)


def validate_trades_frame(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = True,
) -> pl.DataFrame:
    """:func:`validate_trades`, always returning a polars DataFrame."""
    df = conform(table, TRADE_COLUMNS, object_name, what="trades", allow_empty=allow_empty)
    df = df.with_columns(
        pl.col("ts_init").fill_null(pl.col("ts_event")),
        pl.col("side").str.to_lowercase(),
    )
    _check_sorted(df, object_name, "trades")
    _check_day(df, day, object_name)
    _check_positive_finite(df, "price", object_name)
    _check_positive_finite(df, "size", object_name)
    _check(df, ~pl.col("side").is_in(SIDES), object_name, "side", "aggressor side 'buy' or 'sell'")
    _check(df, pl.col("trade_id").str.len_bytes() == 0, object_name, "trade_id", "a non-empty id")
    check_unique(df, "trade_id", object_name, "trade ids")
    return df


def validate_instruments(
    table: pa.Table | pl.DataFrame, object_name: str, *, allow_empty: bool = False
) -> pl.DataFrame:
    """One row per instrument; the key must agree with venue/type/base/quote columns."""
    df = conform(
        table, INSTRUMENT_COLUMNS, object_name, what="instruments", allow_empty=allow_empty
    )
    _check_keys(df, "instrument_key", object_name)
    check_unique(df, "instrument_key", object_name, "instrument keys")
    parts = pl.col("instrument_key").str.split(":")
    pair = parts.list.get(2).str.split("-")
    for name, expr in (
        ("venue", parts.list.get(0)),
        ("instrument_type", parts.list.get(1)),
        ("base_asset", pair.list.get(0)),
        ("quote_asset", pair.list.get(1)),
    ):
        _check(
            df,
            pl.col(name) != expr,
            object_name,
            name,
            "the value implied by instrument_key",
            show=pl.format("{} (instrument_key {})", pl.col(name), pl.col("instrument_key")),
        )
    for name in ("tick_size", "lot_size", "contract_multiplier", "margin_init", "margin_maint"):
        _check_positive_finite(df, name, object_name)
    _check_positive_finite(df, "max_quantity", object_name, nullable=True)
    for name in ("min_quantity", "min_notional"):
        c = pl.col(name)
        _check(
            df,
            c.is_not_null() & ~(c.is_finite() & (c >= 0)),
            object_name,
            name,
            "finite values >= 0",
        )
    for name in ("maker_fee", "taker_fee"):
        c = pl.col(name)
        _check(
            df,
            ~(c.is_finite() & (c.abs() < 0.01)),
            object_name,
            name,
            "a fee fraction in (-0.01, 0.01) (0.0002 = 2 bps)",
        )
    _check(df, pl.col("margin_init") > 1, object_name, "margin_init", "a fraction of notional <= 1")
    _check(
        df,
        pl.col("margin_maint") > pl.col("margin_init"),
        object_name,
        "margin_maint",
        "margin_maint <= margin_init",
    )
    for name in ("price_precision", "size_precision"):
        c = pl.col(name)
        _check(df, (c < 0) | (c > 18), object_name, name, "a number of decimals in 0..18")
    return df


def validate_funding(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = False,
) -> pl.DataFrame:
    """Funding events: sorted, one per time, a finite rate and a positive mark price."""
    df = conform(table, FUNDING_COLUMNS, object_name, what="funding rates", allow_empty=allow_empty)
    _check_sorted(df, object_name, "funding rates")
    _check_day(df, day, object_name)
    _check(
        df,
        pl.col("ts_event").is_duplicated(),
        object_name,
        "ts_event",
        "one funding event per timestamp",
    )
    c = pl.col("funding_rate")
    _check(
        df, ~(c.is_finite() & (c.abs() < 1)), object_name, "funding_rate", "a finite rate fraction"
    )
    _check_positive_finite(df, "mark_price", object_name)
    return df


def validate_signals(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = False,
) -> pl.DataFrame:
    """Signals: unique ids, sorted, valid keys, a known algo and a positive window."""
    df = conform(table, SIGNAL_COLUMNS, object_name, what="signals", allow_empty=allow_empty)
    df = df.with_columns(pl.col("algo").str.to_uppercase())
    _check(df, pl.col("signal_id").str.len_bytes() == 0, object_name, "signal_id", "a non-empty id")
    check_unique(df, "signal_id", object_name, "signal ids")
    _check_sorted(df, object_name, "signals")
    _check_day(df, day, object_name)
    _check_keys(df, "instrument_key", object_name)
    _check(
        df,
        ~pl.col("target_position").is_finite(),
        object_name,
        "target_position",
        "a finite position",
    )
    _check_positive_finite(df, "execution_window_s", object_name)
    _check(df, ~pl.col("algo").is_in(ALGOS), object_name, "algo", f"one of {list(ALGOS)}")
    _check_positive_finite(df, "limit_price", object_name, nullable=True)
    _check(
        df,
        pl.col("limit_price").is_not_null() & (pl.col("algo") != "LIMIT"),
        object_name,
        "limit_price",
        "null unless algo is LIMIT",
        show=pl.format("{} with algo {}", pl.col("limit_price"), pl.col("algo")),
    )
    return df


def validate_quotes_frame(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = True,
) -> pl.DataFrame:
    """:func:`validate_quotes`, always returning a polars DataFrame."""
    df = conform(table, QUOTE_COLUMNS, object_name, what="quotes", allow_empty=allow_empty)
    df = df.with_columns(pl.col("ts_init").fill_null(pl.col("ts_event")))
    _check_sorted(df, object_name, "quotes")
    _check_day(df, day, object_name)
    for name in ("bid_price", "bid_size", "ask_price", "ask_size"):
        _check_positive_finite(df, name, object_name)
    _check(
        df,
        pl.col("bid_price") >= pl.col("ask_price"),
        object_name,
        "bid_price",
        "bid_price < ask_price (a crossed or locked quote)",
        show=pl.format("bid {} >= ask {}", pl.col("bid_price"), pl.col("ask_price")),
    )
    return df


def validate_book_depth10_frame(
    table: pa.Table | pl.DataFrame,
    object_name: str,
    *,
    day: str | date | None = None,
    allow_empty: bool = True,
) -> pl.DataFrame:
    """Every row a whole top-10 book: levels packed from 0, strictly ordered, positive, uncrossed.

    Per level ``i`` and side the rules are column expressions over all rows at once (40 columns,
    ~10 checks each), so a day of 100 ms snapshots validates in milliseconds. A null level must
    be followed by null levels only (a hole would shift every deeper level by one in the engine).
    """
    df = conform(
        table, BOOK_DEPTH10_COLUMNS, object_name, what="book_depth10", allow_empty=allow_empty
    )
    df = df.with_columns(pl.col("ts_init").fill_null(pl.col("ts_event")))
    _check_sorted(df, object_name, "book_depth10 snapshots")
    _check_day(df, day, object_name)
    for side in BOOK_SIDES:
        for i in range(BOOK_LEVELS):
            pname, sname = book_column(side, "price", i), book_column(side, "size", i)
            price, size = pl.col(pname), pl.col(sname)
            _check_positive_finite(df, pname, object_name, nullable=True)
            _check_positive_finite(df, sname, object_name, nullable=True)
            _check(
                df,
                price.is_null() != size.is_null(),
                object_name,
                sname,
                f"a size exactly where {pname} has a price",
                show=pl.format("size {} with price {}", size, price),
            )
            if i == 0:
                continue
            prev = pl.col(book_column(side, "price", i - 1))
            _check(
                df,
                price.is_not_null() & prev.is_null(),
                object_name,
                pname,
                f"levels packed from level 0 (level {i - 1} is null, level {i} is not)",
            )
            # Bids strictly decreasing away from the touch, asks strictly increasing.
            bad = (price >= prev) if side == "bid" else (price <= prev)
            order = "decreasing" if side == "bid" else "increasing"
            _check(
                df,
                (price.is_not_null() & bad).fill_null(False),
                object_name,
                pname,
                f"{side} prices strictly {order} by level ({pname} vs level {i - 1})",
                show=pl.format("{} after {} at level {}", price, prev, pl.lit(i - 1)),
            )
    _check(
        df,
        (pl.col("bid_price_0") >= pl.col("ask_price_0")).fill_null(False),
        object_name,
        "bid_price_0",
        "bid_price_0 < ask_price_0 (a crossed or locked book)",
        show=pl.format("bid {} >= ask {}", pl.col("bid_price_0"), pl.col("ask_price_0")),
    )
    return df


Table = TypeVar("Table", pa.Table, pl.DataFrame)


class SameKindValidator(Protocol):
    """A validator that returns the kind of table it was given (Arrow in, Arrow out)."""

    def __call__(
        self,
        table: Table,
        object_name: str,
        *,
        day: str | date | None = ...,
        allow_empty: bool = ...,
    ) -> Table: ...


def same_kind(
    frame_validator: Callable[..., pl.DataFrame], schema: pa.Schema, doc: str
) -> SameKindValidator:
    """``frame_validator`` (polars out) as a validator that answers in the caller's kind, so that
    Arrow readers get Arrow back in the stored schema without each type repeating the wrapper."""

    def validate(
        table: pa.Table | pl.DataFrame,
        object_name: str,
        *,
        day: str | date | None = None,
        allow_empty: bool = True,
    ) -> pa.Table | pl.DataFrame:
        df = frame_validator(table, object_name, day=day, allow_empty=allow_empty)
        return df if isinstance(table, pl.DataFrame) else to_arrow(df, schema)

    validate.__doc__ = doc
    return cast(SameKindValidator, validate)


validate_quotes = same_kind(
    validate_quotes_frame,
    QUOTES_SCHEMA,
    """Validate and normalise L1 quotes; returns the same kind of table it was given.

    A crossed or locked row (``bid_price >= ask_price``) is an error, not a repair: the engine
    would match against a book that cannot exist, and importers already drop (and count) the
    crossed rows of a venue's feed before writing.
    """,
)
validate_book_depth10 = same_kind(
    validate_book_depth10_frame,
    BOOK_DEPTH10_SCHEMA,
    """Validate and normalise 10-level book snapshots; returns the kind of table it was given.""",
)


TICK_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "trades": TRADES_SCHEMA,
    "quotes": QUOTES_SCHEMA,
    "book_depth10": BOOK_DEPTH10_SCHEMA,
}


def validate_tick(
    table: pa.Table, data_type: str, object_name: str, *, day: str | date | None = None
) -> pa.Table:
    """The validator of a tick data type, for readers that handle the three alike (Arrow in/out)."""
    if data_type == "trades":
        return validate_trades(table, object_name, day=day)
    if data_type == "quotes":
        return validate_quotes(table, object_name, day=day)
    if data_type == "book_depth10":
        return validate_book_depth10(table, object_name, day=day)
    raise ValueError(f"{object_name}: unknown tick data type {data_type!r}")


def validate_bars(table: pa.Table | pl.DataFrame, object_name: str) -> pl.DataFrame:
    """Derived one-minute bars: sorted minute starts, positive OHLC."""
    df = conform(table, BARS_COLUMNS, object_name, what="bars", allow_empty=True)
    _check_sorted(df, object_name, "bars")
    for name in ("open", "high", "low", "close"):
        _check_positive_finite(df, name, object_name)
    return df


def empty_frame(schema: pa.Schema) -> pl.DataFrame:
    """A zero-row polars frame of a canonical schema.

    From an empty list of batches, not ``schema.empty_table()``: that builds its columns from
    Python values, which makes pyarrow import pandas (see :func:`string_array`).
    """
    out = pl.from_arrow(pa.Table.from_batches([], schema=schema))
    assert isinstance(out, pl.DataFrame)
    return out


def to_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """A conformed frame as an Arrow table with exactly the canonical schema (string, not large)."""
    table = df.select(schema.names).to_arrow()
    return table.cast(schema)


# ---- reference instrument definitions ------------------------------------------------------

_FUT = {"maker_fee": 0.0002, "taker_fee": 0.0005, "margin_init": 0.05, "margin_maint": 0.025}
_SPOT = {"maker_fee": 0.001, "taker_fee": 0.001, "margin_init": 1.0, "margin_maint": 1.0}

# Venue rules as published (2024): tick/lot sizes, precisions, min notional. Spot is fully funded
# (margin 1.0); linear perpetuals use 20x initial / 40x maintenance-equivalent fractions.
REFERENCE_INSTRUMENTS: Final[dict[str, dict[str, Any]]] = {
    "BINANCE-FUTURES:PERPETUAL:BTC-USDT": {
        "venue_symbol": "BTCUSDT",
        "price_precision": 1,
        "size_precision": 3,
        "tick_size": 0.1,
        "lot_size": 0.001,
        "min_quantity": 0.001,
        "max_quantity": 1000.0,
        "min_notional": 100.0,
        **_FUT,
    },
    "BINANCE-FUTURES:PERPETUAL:ETH-USDT": {
        "venue_symbol": "ETHUSDT",
        "price_precision": 2,
        "size_precision": 3,
        "tick_size": 0.01,
        "lot_size": 0.001,
        "min_quantity": 0.001,
        "max_quantity": 10000.0,
        "min_notional": 20.0,
        **_FUT,
    },
    "BYBIT:PERPETUAL:BTC-USDT": {
        "venue_symbol": "BTCUSDT",
        "price_precision": 1,
        "size_precision": 3,
        "tick_size": 0.1,
        "lot_size": 0.001,
        "min_quantity": 0.001,
        "max_quantity": 1190.0,
        "min_notional": 5.0,
        **_FUT,
        "taker_fee": 0.00055,
    },
    "BYBIT:PERPETUAL:ETH-USDT": {
        "venue_symbol": "ETHUSDT",
        "price_precision": 2,
        "size_precision": 2,
        "tick_size": 0.01,
        "lot_size": 0.01,
        "min_quantity": 0.01,
        "max_quantity": 7240.0,
        "min_notional": 5.0,
        **_FUT,
        "taker_fee": 0.00055,
    },
    "BINANCE:SPOT:BTC-USDT": {
        "venue_symbol": "BTCUSDT",
        "price_precision": 2,
        "size_precision": 5,
        "tick_size": 0.01,
        "lot_size": 0.00001,
        "min_quantity": 0.00001,
        "max_quantity": 9000.0,
        "min_notional": 5.0,
        **_SPOT,
    },
    "BINANCE:SPOT:ETH-USDT": {
        "venue_symbol": "ETHUSDT",
        "price_precision": 2,
        "size_precision": 4,
        "tick_size": 0.01,
        "lot_size": 0.0001,
        "min_quantity": 0.0001,
        "max_quantity": 9000.0,
        "min_notional": 5.0,
        **_SPOT,
    },
}


def default_instrument_row(
    key: str, *, price_precision: int | None = None, size_precision: int | None = None
) -> dict[str, Any]:
    """An instruments.parquet row for `key`: the reference definition, else venue-type defaults.

    Importers call this for instruments that are not yet listed on a day; precisions inferred
    from the imported prices/sizes (when given) replace the generic 2/3 decimals, or the reference
    ones when finer, so that tick and lot sizes are consistent with the data.
    """
    venue, itype, base, quote = layout.parse_instrument_key(key)
    inverse = quote == "USD" and itype != "SPOT"
    row: dict[str, Any] = {
        "instrument_key": key,
        "venue": venue,
        "instrument_type": itype,
        "base_asset": base,
        "quote_asset": quote,
        "settle_asset": base if inverse else quote,
        "venue_symbol": f"{base}{quote}",
        "contract_multiplier": 1.0,
        "is_inverse": inverse,
        "expiry_ts": None,
    }
    ref = REFERENCE_INSTRUMENTS.get(key)
    if ref is not None:
        out = {**row, **ref}
        # Historical data can be finer than today's rules (BTCUSDT-PERP had a 0.01 tick in 2020):
        # the instrument must describe the data, so finer observed precisions win.
        if price_precision is not None and price_precision > out["price_precision"]:
            out.update(
                price_precision=price_precision,
                tick_size=round(10.0**-price_precision, price_precision),
            )
        if size_precision is not None and size_precision > out["size_precision"]:
            lot = round(10.0**-size_precision, size_precision)
            out.update(
                size_precision=size_precision,
                lot_size=lot,
                min_quantity=min(out["min_quantity"], lot),
            )
        return out
    pp = 2 if price_precision is None else int(price_precision)
    sp = 3 if size_precision is None else int(size_precision)
    fees = _SPOT if itype == "SPOT" else _FUT
    return {
        **row,
        "price_precision": pp,
        "size_precision": sp,
        "tick_size": round(10.0**-pp, pp),
        "lot_size": round(10.0**-sp, sp),
        "min_quantity": round(10.0**-sp, sp),
        "max_quantity": None,
        "min_notional": None,
        **fees,
    }


def instruments_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts) → a canonical instruments frame, in the given order."""
    table = pa.Table.from_pylist(rows, schema=INSTRUMENTS_SCHEMA)
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out
