"""Columnar market data → Nautilus ``TradeTick``/``QuoteTick``/``OrderBookDepth10`` objects, and
the per-second marks derived from trades.

The engine only accepts Cython ``TradeTick`` objects; building them one Python row at a time
costs more than the backtest itself. The fast path (:func:`struct_ticks`) writes the engine's
own C structs (``TradeTick_t``) with numpy and has Nautilus wrap them
(``TradeTick.list_from_capsule``): one Python object per row instead of four (``Price``,
``Quantity``, ``TradeId``, ``TradeTick``) plus a ``str`` per trade id, about 3x faster than
``TradeTick.from_raw_arrays_to_list``. Every call checks a sample of its rows against that
constructor (and each new pair of precisions its rounding) and falls back to it on any
difference, so both paths give the same ticks, field for field.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from nautilus_trader.model import objects as _objects
from nautilus_trader.model.data import BookOrder, OrderBookDepth10, QuoteTick, TradeTick
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.instruments import Instrument
from nautilus_trader.model.objects import Price, Quantity

log = logging.getLogger(__name__)

_AGGRESSOR = {"buy": 1, "sell": 2}  # Nautilus AggressorSide: 1 BUYER, 2 SELLER, 0 NO_AGGRESSOR


def _frame(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def _ns(col: str) -> pl.Expr:
    # Accepts int64 and timestamp[ns] (any tz): the physical value is the epoch-ns integer.
    return pl.col(col).cast(pl.Int64)


def normalise_trades(table: pa.Table | pl.DataFrame, size_precision: int) -> pl.DataFrame:
    """ts_event/ts_init as int64, side as aggressor codes, and sizes that round to zero removed.

    A size that rounds to 0 at the instrument's precision would make Nautilus raise; such dust
    cannot be traded against anyway.
    """
    df = _frame(table)
    missing = {"ts_event", "trade_id", "price", "size", "side"} - set(df.columns)
    if missing:
        raise ValueError(f"trades table lacks columns {sorted(missing)}; has {df.columns}")
    has_init = "ts_init" in df.columns
    out = df.select(
        _ns("ts_event").alias("ts_event"),
        (_ns("ts_init") if has_init else _ns("ts_event")).alias("ts_init"),
        pl.col("trade_id").cast(pl.Utf8),
        pl.col("price").cast(pl.Float64),
        pl.col("size").cast(pl.Float64),
        pl.col("side")
        .cast(pl.Utf8)
        .str.to_lowercase()
        .replace_strict(_AGGRESSOR, default=0, return_dtype=pl.UInt8)
        .alias("aggressor"),
    )
    return out.filter(pl.col("size").round(size_precision) > 0)


def trades_to_ticks(
    table: pa.Table | pl.DataFrame, instrument: Instrument, *, use_ts_init: bool = False
) -> list[TradeTick]:
    """All rows as TradeTicks of ``instrument``.

    ``ts_init`` (what the engine orders by) is the exchange ``ts_event`` by default: latency is
    modelled by the venue's LatencyModel, and the file's receive times would add a second,
    machine-dependent delay. ``use_ts_init=True`` uses the file's ``ts_init`` when present.

    Speed (2 M-row day, development machine): Nautilus's own constructor
    (``from_raw_arrays_to_list``) takes ~0.9 s, the struct path (:func:`struct_ticks`) ~0.3 s.
    Arrow tables with plain ``buy``/``sell`` sides and tradable sizes take the vectorised route
    (:func:`fast_columns`); anything else (mixed-case sides, dust sizes, polars frames) goes
    through :func:`normalise_trades` and Nautilus's constructor, as do values the struct path
    does not cover (non-finite or out-of-range prices, unusual trade ids), so Nautilus raises its
    own errors for them exactly as before.
    """
    cols = fast_columns(table, instrument.size_precision, use_ts_init)
    if cols is None:
        df = normalise_trades(table, instrument.size_precision)
        if df.height == 0:
            return []
        src = df["ts_init"] if use_ts_init else df["ts_event"]
        return nautilus_ticks(
            instrument,
            _Columns(
                prices=df["price"].to_numpy(),
                sizes=df["size"].to_numpy(),
                aggressor=df["aggressor"].to_numpy(),
                trade_ids=df["trade_id"].to_arrow(),
                ts_event=np.array(df["ts_event"].to_numpy(), dtype=np.uint64),
                ts_init=np.array(src.to_numpy(), dtype=np.uint64),
            ),
        )
    if len(cols.prices) == 0:
        return []
    ticks = struct_ticks(instrument, cols)
    return ticks if ticks is not None else nautilus_ticks(instrument, cols)


@dataclass(frozen=True)
class _Columns:
    """The engine's inputs, one array per TradeTick field (read-only views are fine)."""

    prices: np.ndarray  # float64
    sizes: np.ndarray  # float64
    aggressor: np.ndarray  # uint8: 1 BUYER, 2 SELLER
    trade_ids: pa.Array  # string or large_string, no nulls
    ts_event: np.ndarray  # uint64 ns
    ts_init: np.ndarray  # uint64 ns


def _writable(a: np.ndarray, dtype: type) -> np.ndarray:
    # The Cython API takes writable memoryviews; Arrow's and polars' zero-copy arrays are read-only.
    return np.require(a, dtype=dtype, requirements=["C", "W"])


def nautilus_ticks(instrument: Instrument, c: _Columns) -> list[TradeTick]:
    """Nautilus's own bulk constructor (the reference the struct path is checked against)."""
    return TradeTick.from_raw_arrays_to_list(
        instrument.id,
        instrument.price_precision,
        instrument.size_precision,
        _writable(c.prices, np.float64),
        _writable(c.sizes, np.float64),
        _writable(c.aggressor, np.uint8),
        c.trade_ids.to_pylist(),
        _writable(c.ts_event, np.uint64),
        _writable(c.ts_init, np.uint64),
    )


def _ns_array(col: pa.ChunkedArray) -> np.ndarray:
    """Epoch-ns as uint64 (int64 or any timestamp unit/tz in ns), same bits as the int64 value."""
    if pa.types.is_timestamp(col.type):
        if col.type.unit != "ns":
            raise ValueError(f"timestamps must be in ns, got {col.type}")
        col = col.cast(pa.int64())
    arr = col.to_numpy()
    return arr.view(np.uint64) if arr.dtype == np.int64 else arr.astype(np.uint64)


def sorted_ts_event_ns(table: pa.Table | pl.DataFrame) -> np.ndarray | None:
    """``ts_event`` as int64 ns for an Arrow table whose times are in order, else None.

    Lets the engine cut a day into time windows by binary search; anything else (polars frames,
    nulls, other units, unsorted rows) is left whole for :func:`trades_to_ticks` to judge.
    """
    if not isinstance(table, pa.Table) or "ts_event" not in table.column_names:
        return None
    col = table.column("ts_event")
    if col.null_count or not (
        pa.types.is_int64(col.type) or (pa.types.is_timestamp(col.type) and col.type.unit == "ns")
    ):
        return None
    ts = _ns_array(col).view(np.int64)
    return ts if bool(np.all(ts[1:] >= ts[:-1])) else None


def fast_columns(
    table: pa.Table | pl.DataFrame, size_precision: int, use_ts_init: bool
) -> _Columns | None:
    """The engine's input arrays straight from Arrow, or None when the polars path is needed.

    Taken only for Arrow tables whose sides are exactly ``buy``/``sell`` and whose sizes all
    survive rounding to the instrument's precision (the normal case); anything else returns
    None so :func:`normalise_trades` applies its full rules.
    """
    if not isinstance(table, pa.Table):
        return None
    names = set(table.column_names)
    if {"ts_event", "trade_id", "price", "size", "side"} - names:
        return None  # normalise_trades raises the precise error
    if (
        table.num_rows == 0
        or table.column("side").null_count
        or table.column("trade_id").null_count
    ):
        return None
    side = table.column("side")
    if not pa.types.is_string(side.type) and not pa.types.is_large_string(side.type):
        return None
    buy = pc.equal(side, "buy")
    n_buy = pc.sum(buy).as_py() or 0
    if n_buy != table.num_rows:
        n_sell = pc.sum(pc.equal(side, "sell")).as_py() or 0
        if n_buy + n_sell != table.num_rows:
            return None
    sizes = table.column("size").cast(pa.float64()).to_numpy()
    if not (np.round(sizes, size_precision) > 0).all():
        return None
    # bool → 0/1 bytes; buyer 1, seller 2
    aggressor = np.uint8(2) - buy.to_numpy(zero_copy_only=False).view(np.uint8)
    prices = table.column("price").cast(pa.float64()).to_numpy()
    ts_event = _ns_array(table.column("ts_event"))
    ts_init = _ns_array(table.column("ts_init")) if use_ts_init and "ts_init" in names else ts_event
    trade_id = table.column("trade_id")
    if not pa.types.is_string(trade_id.type) and not pa.types.is_large_string(trade_id.type):
        trade_id = trade_id.cast(pa.string())
    return _Columns(prices, sizes, aggressor, trade_id.combine_chunks(), ts_event, ts_init)


# ---- the struct path -------------------------------------------------------------------------
#
# ``TradeTick_t`` of NautilusTrader 1.231 (high-precision build, x86-64), as measured on the
# installed wheel (the .pxd's field list, with the alignment the Rust compiler actually uses):
#
#   0   InstrumentId_t   two interned-string pointers (Symbol, Venue)
#   16  Price_t.raw      i128 = round_half_away(value * 10^p) * 10^(16 - p)
#   32  Price_t.precision u8                  (33..47 padding)
#   48  Quantity_t.raw   u128, same rule
#   64  Quantity_t.precision u8               (65..79 padding)
#   80  aggressor_side   u8                   (81..83 padding)
#   84  TradeId_t        StackStr: 37 bytes NUL-padded ASCII, then its length (u8) at 121
#   128 ts_event u64, 136 ts_init u64; 144 bytes per struct, 16-byte aligned
#
# Padding bytes carry no meaning (Nautilus leaves whatever was on its stack there); the check
# compares every other byte.

_ITEM = 144
_OFF_PRICE, _OFF_PPREC, _OFF_SIZE, _OFF_SPREC = 16, 32, 48, 64
_OFF_SIDE, _OFF_TID, _TID_CAP, _OFF_TID_LEN = 80, 84, 36, 121
_OFF_TS_EVENT, _OFF_TS_INIT = 128, 136
MEANINGFUL = np.zeros(_ITEM, dtype=bool)
for _a, _b in ((0, 33), (48, 65), (80, 81), (84, 122), (128, 144)):
    MEANINGFUL[_a:_b] = True
CHUNK = 16_384  # structs per batch: 2.4 MB, stays in cache, bounds the extra memory
_SAMPLE = 64  # rows re-built by Nautilus's constructor on every call, compared byte for byte
_MAX_ROUNDED = float(2**62)  # round(value * 10^p) must fit an int64 (then * 10^(16-p) in 128 bits)
_FIXED_PRECISION = int(_objects.FIXED_PRECISION)
_PRICE_MAX = float(_objects.PRICE_MAX)
_QUANTITY_MAX = float(_objects.QUANTITY_MAX)


class _CVec(ctypes.Structure):
    """Nautilus's ``CVec`` (pointer, length, capacity): what ``list_from_capsule`` reads."""

    _fields_ = [("ptr", ctypes.c_void_p), ("len", ctypes.c_size_t), ("cap", ctypes.c_size_t)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_ptr.restype = ctypes.c_void_p
_capsule_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]

_state_lock = threading.Lock()
fast_path_disabled: list[
    str
] = []  # the reason, once a check failed: Nautilus's constructor from then on
_probed: set[tuple[int, int]] = set()  # (price, size) precisions whose rounding was verified
_refused: set[tuple[int, int]] = set()  # ... and those where it was not (Nautilus's constructor)


def struct_bytes(ticks: list[TradeTick]) -> np.ndarray:
    """The ``TradeTick_t`` bytes of ``ticks`` (n × 144), copied out of Nautilus's own capsule."""
    cap = TradeTick.capsule_from_list(ticks)
    vec = _CVec.from_address(_capsule_ptr(cap, None))
    raw = ctypes.string_at(vec.ptr, len(ticks) * _ITEM)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(ticks), _ITEM)


def _fixed_raw(values: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """Nautilus's ``f64_to_fixed_*128`` for values in [0, 2^62 / 10^p): (low, high) 64-bit words.

    ``(value * 10^p).round()`` rounds half away from zero, i.e. for x >= 0 ``floor(x)`` plus one
    when the fraction is >= 0.5 (``x - floor(x)`` is exact in binary floating point); the
    product with ``10^(16 - p)`` (< 2^54) is done in 32-bit halves so no bit is lost.
    """
    x = values * float(10**precision)
    f = np.floor(x)
    r = (f + (x - f >= 0.5)).astype(np.uint64)
    m = 10 ** (_FIXED_PRECISION - precision)
    m0, m1 = np.uint64(m & 0xFFFFFFFF), np.uint64(m >> 32)
    lo32, s32 = np.uint64(0xFFFFFFFF), np.uint64(32)
    a0, a1 = r & lo32, r >> s32
    low = r * np.uint64(m)  # wraps: exactly the low 64 bits
    mid = a1 * m0 + a0 * m1 + ((a0 * m0) >> s32)  # < 2^64 since a1 < 2^30 and m1 < 2^22
    high = a1 * m1 + (mid >> s32)
    return low, high


def _id_bytes(ids: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(offsets, data, lengths) of a string array, or None unless every id is 1..36 bytes of
    printable non-space ASCII (what ``TradeId`` stores verbatim; anything else is left to
    Nautilus's constructor, which validates it)."""
    n = len(ids)
    width = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    _validity, offsets_buf, data_buf = ids.buffers()
    if offsets_buf is None:
        return None
    offsets = np.frombuffer(
        offsets_buf, dtype=width, count=n + 1, offset=ids.offset * width(0).itemsize
    )
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    if n == 0 or lengths.min() < 1 or lengths.max() > _TID_CAP:
        return None
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    )
    used = data[offsets[0] : offsets[-1]]
    if used.min() < 0x21 or used.max() > 0x7E:
        return None
    return offsets, data, lengths


def _encode(
    out: np.ndarray,
    instrument_id: np.ndarray,
    price_prec: int,
    size_prec: int,
    c: _Columns,
    ids: tuple[np.ndarray, np.ndarray, np.ndarray],
    rows: slice | np.ndarray,
) -> None:
    """Write the structs of ``rows`` into ``out`` (k × 144 bytes, zeroed padding)."""
    words = out.view(np.uint64)
    out[:, 0:16] = instrument_id
    low, high = _fixed_raw(c.prices[rows], price_prec)
    words[:, _OFF_PRICE // 8], words[:, _OFF_PRICE // 8 + 1] = low, high
    out[:, _OFF_PPREC] = price_prec
    low, high = _fixed_raw(c.sizes[rows], size_prec)
    words[:, _OFF_SIZE // 8], words[:, _OFF_SIZE // 8 + 1] = low, high
    out[:, _OFF_SPREC] = size_prec
    out[:, _OFF_SIDE] = c.aggressor[rows]
    offsets, data, lengths = ids
    starts, lens = offsets[:-1][rows], lengths[rows]
    span = int(lens.max())
    cols = np.arange(span)
    gather = starts[:, None] + cols
    np.minimum(gather, len(data) - 1, out=gather)  # the last id's tail: masked below anyway
    chars = data[gather]
    chars[cols >= lens[:, None]] = 0
    out[:, _OFF_TID : _OFF_TID + span] = chars
    out[:, _OFF_TID + span : _OFF_TID_LEN] = 0
    out[:, _OFF_TID_LEN] = lens
    words[:, _OFF_TS_EVENT // 8] = c.ts_event[rows]
    words[:, _OFF_TS_INIT // 8] = c.ts_init[rows]


def _aligned(n: int) -> np.ndarray:
    """Zeroed n × 144 bytes at a 16-byte boundary (the structs hold 128-bit integers)."""
    raw = np.zeros(n * _ITEM + 16, dtype=np.uint8)
    shift = -raw.ctypes.data % 16
    return raw[shift : shift + n * _ITEM].reshape(n, _ITEM)


def _wrap(buf: np.ndarray, n: int) -> list[TradeTick]:
    """Nautilus's TradeTick objects for the first ``n`` structs of ``buf`` (copied out)."""
    vec = _CVec(buf.ctypes.data, n, n)
    capsule = _capsule_new(ctypes.addressof(vec), None, None)  # no destructor: numpy owns it
    ticks = TradeTick.list_from_capsule(capsule)
    del capsule
    return ticks


def _disable(reason: str) -> None:
    with _state_lock:
        if not fast_path_disabled:
            fast_path_disabled.append(reason)
            log.warning("TradeTick struct path disabled, using Nautilus's constructor: %s", reason)


def _agrees(
    instrument: Instrument, c: _Columns, ids: tuple[np.ndarray, ...], rows: np.ndarray
) -> bool:
    """Nautilus's constructor and :func:`_encode` give the same bytes for ``rows``."""
    want = struct_bytes(nautilus_ticks(instrument, _take(c, rows)))
    got = _aligned(len(rows))
    _encode(got, want[0, 0:16], instrument.price_precision, instrument.size_precision, c, ids, rows)  # type: ignore[arg-type]
    return bool(np.array_equal(want[:, MEANINGFUL], got[:, MEANINGFUL]))


def _probe_rounding(instrument: Instrument) -> bool:
    """Once per precision pair: exact .5 ties, tiny and large values agree with Nautilus."""
    pp, sp = instrument.price_precision, instrument.size_precision
    k = np.arange(1, 41, dtype=np.float64)
    prices = np.concatenate([(k + 0.5) / 10.0**pp, k * 1234.5678901, [0.0, 1e-12, 9.87654321e6]])
    sizes = np.concatenate([(k + 0.5) / 10.0**sp, k * 0.123456789, [1.0, 2.5e3, 10.0**-sp]])
    prices = prices[_in_range(prices, pp, _PRICE_MAX)][:40]
    sizes = sizes[_in_range(sizes, sp, _QUANTITY_MAX) & (sizes > 0)][:40]
    n = min(len(prices), len(sizes))
    if n == 0:
        return False
    c = _Columns(
        prices=prices[:n],
        sizes=sizes[:n],
        aggressor=np.resize(np.array([1, 2, 0], dtype=np.uint8), n),
        trade_ids=pa.array([f"T{i}-{'x' * (i % 30)}" for i in range(n)], pa.string()),
        ts_event=np.arange(n, dtype=np.uint64) * np.uint64(987_654_321_123),
        ts_init=np.arange(n, dtype=np.uint64) + np.uint64(2**63),
    )
    ids = _id_bytes(c.trade_ids)
    return ids is not None and _agrees(instrument, c, ids, np.arange(n))


def _in_range(values: np.ndarray, precision: int, maximum: float) -> np.ndarray:
    """Values the struct path encodes: finite, >= 0, <= Nautilus's maximum, and
    ``value * 10^precision`` small enough for the 64-bit intermediate."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (
            np.isfinite(values)
            & (values >= 0.0)
            & (values <= maximum)
            & (values * 10.0**precision < _MAX_ROUNDED)
        )


def struct_ticks(instrument: Instrument, c: _Columns) -> list[TradeTick] | None:
    """The ticks built from C structs, or None where Nautilus's constructor must do it."""
    if fast_path_disabled:
        return None
    pp, sp = instrument.price_precision, instrument.size_precision
    if pp > _FIXED_PRECISION or sp > _FIXED_PRECISION:
        return None
    # Nautilus raises on NaN, negative quantities and values past PRICE_MAX / QUANTITY_MAX: leave
    # those to it (the same error as before); the rest must fit the 64-bit intermediate.
    if not (
        _in_range(c.prices, pp, _PRICE_MAX).all()
        and (c.sizes > 0.0).all()
        and _in_range(c.sizes, sp, _QUANTITY_MAX).all()
    ):
        return None
    ids = _id_bytes(c.trade_ids)
    if ids is None:
        return None
    key = (pp, sp)
    if key in _refused:
        return None
    if key not in _probed:
        ok = _probe_rounding(instrument)
        with _state_lock:
            (_probed if ok else _refused).add(key)
        if not ok:
            log.warning("TradeTick struct path not used at precisions %s: probe disagrees", key)
            return None
    n = len(c.prices)
    sample = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE)).astype(np.int64))
    if not _agrees(instrument, c, ids, sample):
        _disable("a sample of the rows disagrees with TradeTick.from_raw_arrays_to_list")
        return None
    instrument_id = struct_bytes(nautilus_ticks(instrument, _take(c, sample[:1])))[0, 0:16]
    buf = _aligned(min(n, CHUNK))
    ticks: list[TradeTick] = []
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        part = buf[: stop - start]
        _encode(part, instrument_id, pp, sp, c, ids, slice(start, stop))
        ticks.extend(_wrap(part, stop - start))
    return ticks


def _take(c: _Columns, rows: np.ndarray) -> _Columns:
    return _Columns(
        prices=c.prices[rows],
        sizes=c.sizes[rows],
        aggressor=c.aggressor[rows],
        trade_ids=c.trade_ids.take(pa.array(rows)),
        ts_event=c.ts_event[rows],
        ts_init=c.ts_init[rows],
    )


def marks_per_second(table: pa.Table | pl.DataFrame, instrument_key: str) -> pl.DataFrame:
    """Last trade price in each UTC second, stamped with that trade's own ts_event.

    Stamping with the trade's time (not the second's start) keeps the marks free of look-ahead.
    """
    fast = sorted_marks(table, instrument_key)
    if fast is not None:
        return fast
    df = _frame(table)
    if df.height == 0:
        return pl.DataFrame(
            schema={"ts_event": pl.Int64, "instrument_key": pl.Utf8, "price": pl.Float64}
        )
    return (
        df.select(_ns("ts_event").alias("ts_event"), pl.col("price").cast(pl.Float64))
        .with_columns((pl.col("ts_event") // 1_000_000_000).alias("_sec"))
        .group_by("_sec", maintain_order=True)
        .agg(pl.col("ts_event").last(), pl.col("price").last())
        .select(
            pl.col("ts_event"),
            pl.lit(instrument_key).alias("instrument_key"),
            pl.col("price"),
        )
        .sort("ts_event", maintain_order=True)
    )


def sorted_marks(table: pa.Table | pl.DataFrame, instrument_key: str) -> pl.DataFrame | None:
    """:func:`marks_per_second` for time-sorted Arrow trades (validated ones), or None.

    Sorted, each second's trades are contiguous, so its last trade is where the second changes:
    one numpy pass instead of a group-by (which ran in the engine's thread, ~50 ms per 2 M-row
    day). Same rows, same order, same dtypes as the group-by.
    """
    if not isinstance(table, pa.Table) or table.num_rows == 0:
        return None
    if "ts_event" not in table.column_names or "price" not in table.column_names:
        return None
    ts_col, price_col = table.column("ts_event"), table.column("price")
    if ts_col.type != pa.int64() or ts_col.null_count or price_col.null_count:
        return None
    if not (pa.types.is_floating(price_col.type) or pa.types.is_integer(price_col.type)):
        return None
    ts = ts_col.to_numpy()
    if ts.size > 1 and not bool((ts[1:] >= ts[:-1]).all()):
        return None
    sec = ts // 1_000_000_000
    last = np.append(np.flatnonzero(sec[1:] != sec[:-1]), sec.size - 1)
    price = price_col.cast(pa.float64()).to_numpy()
    return pl.DataFrame(
        {
            "ts_event": pl.Series(ts[last], dtype=pl.Int64),
            "instrument_key": pl.Series([instrument_key], dtype=pl.Utf8).extend_constant(
                instrument_key, last.size - 1
            ),
            "price": pl.Series(price[last], dtype=pl.Float64),
        }
    )


# ---- quotes and 10-level book snapshots ------------------------------------------------------
#
# The same struct path for ``QuoteTick_t`` and ``OrderBookDepth10_t`` (1.231, x86-64, measured on
# the installed wheel by locating known values in the bytes of Nautilus-built objects):
#
#   QuoteTick_t (160 bytes): 0 InstrumentId_t; 16 bid_price, 48 ask_price, 80 bid_size,
#     112 ask_size (each a fixed-point i128/u128 raw with its precision byte 16 bytes later);
#     144 ts_event, 152 ts_init.
#   BookOrder_t (96 bytes): 0 side u8; 16 price raw (+16 precision); 48 size raw (+16
#     precision); 80 order_id u64.
#   OrderBookDepth10_t (2048 bytes): 0 InstrumentId_t; 16 bids[10]; 976 asks[10];
#     1936 bid_counts u32[10]; 1976 ask_counts u32[10]; 2016 flags u8; 2024 sequence u64;
#     2032 ts_event; 2040 ts_init.
#
# A missing level (null price in ``book_depth10``) is Nautilus's null order: every byte zero
# (side NO_ORDER_SIDE), which its matching engine skips. Every call re-builds a sample with
# Nautilus's own constructors and compares the meaningful bytes, as for trades.

_Q_ITEM = 160
_Q_FIELDS = (16, 48, 80, 112)  # bid_price, ask_price, bid_size, ask_size
_Q_TS_EVENT, _Q_TS_INIT = 144, 152
Q_MEANINGFUL = np.zeros(_Q_ITEM, dtype=bool)
Q_MEANINGFUL[0:16] = True
for _f in _Q_FIELDS:
    Q_MEANINGFUL[_f : _f + 17] = True
Q_MEANINGFUL[144:160] = True

_D_ITEM, _D_LEVELS, _BO_ITEM = 2048, 10, 96
_D_BIDS, _D_ASKS, _D_BID_COUNTS, _D_ASK_COUNTS = 16, 976, 1936, 1976
_D_FLAGS, _D_SEQUENCE, _D_TS_EVENT, _D_TS_INIT = 2016, 2024, 2032, 2040
#: Every row is a whole book: F_SNAPSHOT (32) | F_LAST (128). The snapshot flag is what makes the
#: matching engine forget consumed liquidity when a new book arrives.
DEPTH_FLAGS = 32 | 128
D_MEANINGFUL = np.zeros(_D_ITEM, dtype=bool)
D_MEANINGFUL[0:16] = True
for _lvl in range(_D_LEVELS):
    for _base in (_D_BIDS, _D_ASKS):
        _o = _base + _lvl * _BO_ITEM
        D_MEANINGFUL[_o : _o + 1] = True
        D_MEANINGFUL[_o + 16 : _o + 33] = True
        D_MEANINGFUL[_o + 48 : _o + 65] = True
        D_MEANINGFUL[_o + 80 : _o + 88] = True
D_MEANINGFUL[_D_BID_COUNTS : _D_FLAGS + 1] = True
D_MEANINGFUL[_D_SEQUENCE:_D_ITEM] = True

QUOTE_COLUMNS = ("bid_price", "ask_price", "bid_size", "ask_size")
DEPTH_SIDES = ("bid", "ask")


def _depth_column(side: str, what: str, level: int) -> str:
    return f"{side}_{what}_{level}"


DEPTH_COLUMNS = tuple(
    _depth_column(side, what, i)
    for side in DEPTH_SIDES
    for what in ("price", "size")
    for i in range(_D_LEVELS)
)


@dataclass(frozen=True)
class BookColumns:
    """One array per field of a book update (quotes: 1-D; depth: ``(n, 10)``), times uint64 ns."""

    bid_price: np.ndarray
    bid_size: np.ndarray
    ask_price: np.ndarray
    ask_size: np.ndarray
    ts_event: np.ndarray
    ts_init: np.ndarray

    def take(self, rows: np.ndarray) -> Self:
        return type(self)(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.ts_event)


class QuoteColumns(BookColumns):
    """One array per ``QuoteTick`` field: prices and sizes float64."""


class DepthColumns(BookColumns):
    """A 10-level snapshot per row: ``(n, 10)`` float64 arrays, NaN where a level is missing."""


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    """A float64 column with nulls as NaN (Arrow's null bitmap, not a sentinel value)."""
    col = table.column(name).cast(pa.float64())
    return col.fill_null(math.nan).to_numpy() if col.null_count else col.to_numpy()


def _times(table: pa.Table, use_ts_init: bool) -> tuple[np.ndarray, np.ndarray]:
    ts_event = _ns_array(table.column("ts_event"))
    if use_ts_init and "ts_init" in table.column_names:
        return ts_event, _ns_array(table.column("ts_init"))
    return ts_event, ts_event


def _arrow(table: pa.Table | pl.DataFrame) -> pa.Table:
    return table if isinstance(table, pa.Table) else table.to_arrow()


def _book_table(
    table: pa.Table | pl.DataFrame, columns: Sequence[str], what: str, use_ts_init: bool
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The table as Arrow with its two time arrays; a missing column is an error naming it."""
    t = _arrow(table)
    missing = {"ts_event", *columns} - set(t.column_names)
    if missing:
        raise ValueError(f"{what} table lacks columns {sorted(missing)}; has {t.column_names}")
    return (t, *_times(t, use_ts_init))


def quote_columns(table: pa.Table | pl.DataFrame, *, use_ts_init: bool = False) -> QuoteColumns:
    """The quote arrays of a ``quotes`` table (schema of docs/storage.md, validated upstream)."""
    t, ts_event, ts_init = _book_table(table, QUOTE_COLUMNS, "quotes", use_ts_init)
    prices = {c: _float_column(t, c) for c in QUOTE_COLUMNS}
    return QuoteColumns(**prices, ts_event=ts_event, ts_init=ts_init)


def depth_columns(table: pa.Table | pl.DataFrame, *, use_ts_init: bool = False) -> DepthColumns:
    """The level arrays of a ``book_depth10`` table (schema of docs/storage.md)."""
    t, ts_event, ts_init = _book_table(table, DEPTH_COLUMNS, "book_depth10", use_ts_init)
    n = t.num_rows

    def levels(side: str, what: str) -> np.ndarray:
        out = np.empty((n, _D_LEVELS), dtype=np.float64)
        for i in range(_D_LEVELS):
            out[:, i] = _float_column(t, _depth_column(side, what, i))
        return out

    return DepthColumns(
        levels("bid", "price"), levels("bid", "size"), levels("ask", "price"),
        levels("ask", "size"), ts_event, ts_init,
    )  # fmt: skip


def top_of_book(d: DepthColumns) -> QuoteColumns:
    """Level 0 of each snapshot as quotes (for references and the L1 view of a book)."""
    return QuoteColumns(
        bid_price=d.bid_price[:, 0], bid_size=d.bid_size[:, 0], ask_price=d.ask_price[:, 0],
        ask_size=d.ask_size[:, 0], ts_event=d.ts_event, ts_init=d.ts_init,
    )  # fmt: skip


def nautilus_quotes(instrument: Instrument, c: QuoteColumns) -> list[QuoteTick]:
    """Nautilus's own bulk constructor (the reference the struct path is checked against)."""
    prices = (_writable(getattr(c, f), np.float64) for f in QUOTE_COLUMNS)  # Nautilus's order
    times = (_writable(t, np.uint64) for t in (c.ts_event, c.ts_init))
    return QuoteTick.from_raw_arrays_to_list(
        instrument.id, instrument.price_precision, instrument.size_precision, *prices, *times
    )


def nautilus_depths(instrument: Instrument, c: DepthColumns) -> list[OrderBookDepth10]:
    """Snapshots built object by object with Nautilus's constructors (reference, slow)."""
    pp, sp = instrument.price_precision, instrument.size_precision
    null = BookOrder(OrderSide.NO_ORDER_SIDE, Price.from_raw(0, 0), Quantity.from_raw(0, 0), 0)
    out: list[OrderBookDepth10] = []
    for r in range(len(c)):
        sides = []
        for prices, sizes, side in (
            (c.bid_price[r], c.bid_size[r], OrderSide.BUY),
            (c.ask_price[r], c.ask_size[r], OrderSide.SELL),
        ):
            orders = [
                BookOrder(side, Price(float(p), pp), Quantity(float(q), sp), 0)
                if not math.isnan(p)
                else null
                for p, q in zip(prices, sizes, strict=True)
            ]
            sides.append(orders)
        counts = [[0 if math.isnan(p) else 1 for p in c.bid_price[r]],
                  [0 if math.isnan(p) else 1 for p in c.ask_price[r]]]  # fmt: skip
        out.append(
            OrderBookDepth10(
                instrument.id,
                sides[0],
                sides[1],
                counts[0],
                counts[1],
                DEPTH_FLAGS,
                0,
                int(c.ts_event[r]),
                int(c.ts_init[r]),
            )  # fmt: skip
        )
    return out


def _bytes_of(cls: Any, items: list[Any], item: int) -> np.ndarray:
    cap = cls.capsule_from_list(items)
    vec = _CVec.from_address(_capsule_ptr(cap, None))
    raw = ctypes.string_at(vec.ptr, len(items) * item)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(items), item)


def _put_fixed(out: np.ndarray, offset: int, values: np.ndarray, precision: int) -> None:
    """A fixed-point field (raw at ``offset``, precision byte 16 later) for each row of ``out``."""
    words = out.view(np.uint64)
    low, high = _fixed_raw(values, precision)
    words[:, offset // 8], words[:, offset // 8 + 1] = low, high
    out[:, offset + 16] = precision


def _encode_quotes(out: np.ndarray, iid: np.ndarray, pp: int, sp: int, c: QuoteColumns) -> None:
    out[:, 0:16] = iid
    for off, values, prec in zip(
        _Q_FIELDS, (c.bid_price, c.ask_price, c.bid_size, c.ask_size), (pp, pp, sp, sp),
        strict=True,
    ):  # fmt: skip
        _put_fixed(out, off, values, prec)
    words = out.view(np.uint64)
    words[:, _Q_TS_EVENT // 8] = c.ts_event
    words[:, _Q_TS_INIT // 8] = c.ts_init


def _encode_depths(out: np.ndarray, iid: np.ndarray, pp: int, sp: int, c: DepthColumns) -> None:
    """Write the snapshots' structs into ``out``, all ten levels of a side at once."""
    out[:, 0:16] = iid
    words = out.view(np.uint64)
    counts = out[:, _D_BID_COUNTS:_D_FLAGS].view(np.uint32)  # bid then ask counts, 10 each
    levels = np.arange(_D_LEVELS)
    for s, (base, prices, sizes, side) in enumerate(
        ((_D_BIDS, c.bid_price, c.bid_size, 1), (_D_ASKS, c.ask_price, c.ask_size, 2))
    ):
        o = base + levels * _BO_ITEM  # each level's BookOrder_t
        present = ~np.isnan(prices)
        for field, values, prec in ((16, prices, pp), (48, sizes, sp)):
            low, high = _fixed_raw(np.where(present, values, 0.0), prec)
            words[:, (o + field) // 8] = low
            words[:, (o + field) // 8 + 1] = high
            out[:, o + field + 16] = np.where(present, np.uint8(prec), np.uint8(0))
        out[:, o] = np.where(present, np.uint8(side), np.uint8(0))
        words[:, (o + 80) // 8] = 0
        counts[:, s * _D_LEVELS : (s + 1) * _D_LEVELS] = present
    out[:, _D_FLAGS] = DEPTH_FLAGS
    words[:, _D_SEQUENCE // 8] = 0
    words[:, _D_TS_EVENT // 8] = c.ts_event
    words[:, _D_TS_INIT // 8] = c.ts_init


def _aligned_n(n: int, item: int) -> np.ndarray:
    raw = np.zeros(n * item + 16, dtype=np.uint8)
    shift = -raw.ctypes.data % 16
    return raw[shift : shift + n * item].reshape(n, item)


def _wrap_as(cls: Any, buf: np.ndarray, n: int) -> list[Any]:
    vec = _CVec(buf.ctypes.data, n, n)
    capsule = _capsule_new(ctypes.addressof(vec), None, None)  # no destructor: numpy owns it
    items = cls.list_from_capsule(capsule)
    del capsule
    return items


def _values_ok(c: QuoteColumns | DepthColumns, pp: int, sp: int) -> bool:
    """Whether the struct path encodes every value as Nautilus would (else its constructor)."""
    if pp > _FIXED_PRECISION or sp > _FIXED_PRECISION:
        return False
    if isinstance(c, QuoteColumns):
        prices, sizes = (
            np.concatenate([c.bid_price, c.ask_price]),
            np.concatenate([c.bid_size, c.ask_size]),
        )
    else:
        present = ~np.isnan(np.concatenate([c.bid_price, c.ask_price]))
        prices = np.concatenate([c.bid_price, c.ask_price])[present]
        sizes = np.concatenate([c.bid_size, c.ask_size])[present]
    return bool(
        _in_range(prices, pp, _PRICE_MAX).all()
        and (prices > 0).all()
        and _in_range(sizes, sp, _QUANTITY_MAX).all()
    )


def _struct_build(
    instrument: Instrument,
    c: QuoteColumns | DepthColumns,
    cls: Any,
    item: int,
    meaningful: np.ndarray,
    reference: Callable[[Instrument, Any], list[Any]],
    encode: Callable[[np.ndarray, np.ndarray, int, int, Any], None],
) -> list[Any] | None:
    """Objects of ``cls`` built from C structs, or None where Nautilus's constructor must do it."""
    pp, sp = instrument.price_precision, instrument.size_precision
    if fast_path_disabled or not _values_ok(c, pp, sp):
        return None
    n = len(c)
    sample = np.unique(np.linspace(0, n - 1, min(n, _SAMPLE)).astype(np.int64))
    want = _bytes_of(cls, reference(instrument, c.take(sample)), item)
    got = _aligned_n(len(sample), item)
    encode(got, want[0, 0:16], pp, sp, c.take(sample))
    if not np.array_equal(want[:, meaningful], got[:, meaningful]):
        _disable(f"a sample of {cls.__name__} rows disagrees with Nautilus's constructor")
        return None
    chunk = max(1, CHUNK * _ITEM // item)
    buf = _aligned_n(min(n, chunk), item)
    items: list[Any] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part = buf[: stop - start]
        encode(part, want[0, 0:16], pp, sp, c.take(np.arange(start, stop)))
        items.extend(_wrap_as(cls, part, stop - start))
    return items


def _built(instrument: Instrument, c: BookColumns, cls: Any, *how: Any) -> list[Any]:
    """Every row of ``c`` as ``cls`` objects: the struct path when its check passes, otherwise
    Nautilus's own constructor (``how``: item size, meaningful bytes, reference, encoder)."""
    if len(c) == 0:
        return []
    fast = _struct_build(instrument, c, cls, *how)
    return fast if fast is not None else how[2](instrument, c)


def quotes_to_ticks(instrument: Instrument, c: QuoteColumns) -> list[QuoteTick]:
    """All rows as ``QuoteTick``s of ``instrument`` (struct path, checked; else Nautilus's)."""
    return _built(instrument, c, QuoteTick, _Q_ITEM, Q_MEANINGFUL, nautilus_quotes, _encode_quotes)


def depths_to_snapshots(instrument: Instrument, c: DepthColumns) -> list[OrderBookDepth10]:
    """All rows as ``OrderBookDepth10`` snapshots of ``instrument`` (struct path, checked)."""
    how = (_D_ITEM, D_MEANINGFUL, nautilus_depths, _encode_depths)
    return _built(instrument, c, OrderBookDepth10, *how)


def quotes_restored_after_trades(quotes: QuoteColumns, trade_ts: np.ndarray) -> QuoteColumns:
    """The quotes plus, after each trade, the quote in force again at the trade's instant.

    On an ``L1_MBP`` venue Nautilus 1.231 also moves the book to every trade tick (both sides at
    the trade's price and size) until the next quote: a market buy arriving after a sell print
    at the bid would fill at the bid, below the ask in force (measured, see docs/execution.md).
    Re-stating the quote at the trade's timestamp (fed after the trade) keeps the trade's own
    matching of resting orders and restores the book the quotes show. A trade with a quote of
    its own instant needs none; a trade before the first quote has nothing to restore.
    """
    if len(quotes) == 0 or trade_ts.size == 0:
        return quotes
    qts = quotes.ts_event.view(np.int64)
    tts = np.unique(trade_ts.view(np.int64))
    idx = np.searchsorted(qts, tts, side="right") - 1
    keep = idx >= 0
    keep &= qts[np.maximum(idx, 0)] != tts  # a quote at that very instant follows the trade
    idx, tts = idx[keep], tts[keep]
    if idx.size == 0:
        return quotes
    extra = quotes.take(idx)
    ts = tts.view(np.uint64)
    extra = dataclasses.replace(extra, ts_event=ts, ts_init=ts.copy())
    merged_ts = np.concatenate([qts, tts])
    order = np.argsort(merged_ts, kind="stable")
    return QuoteColumns(
        *(
            np.concatenate([getattr(quotes, f), getattr(extra, f)])[order]
            for f in QuoteColumns.__dataclass_fields__
        )
    )
