"""A day's tick slices as a NautilusTrader ``ParquetDataCatalog``, written and read vectorised.

Why not ``ParquetDataCatalog.write_data``: it needs one Python ``TradeTick`` object per row and
costs ~6 s per million ticks; the catalog's trade schema is simple enough to produce directly
with pyarrow (7–14x faster, same file — see benchmarks/RESULTS.md):

* ``price``/``size``: ``fixed_size_binary[16]``, the little-endian signed 128-bit raw value
  ``value × 10^16`` (Nautilus' high-precision fixed point),
* ``aggressor_side`` ``uint8`` (1 buyer, 2 seller), ``trade_id`` string,
  ``ts_event``/``ts_init`` ``uint64``,
* schema metadata ``instrument_id``, ``price_precision``, ``size_precision``,
* files at ``data/trade_tick/{instrument_id}/{start}_{end}.parquet`` (ISO times, ``:``/``.``
  replaced by ``-``).

Quotes and 10-level books go the same way, in the schemas 1.231 writes for ``QuoteTick``
(``data/quote_tick/``: ``bid_price``, ``ask_price``, ``bid_size``, ``ask_size`` as fixed point,
``ts_event``, ``ts_init``) and ``OrderBookDepth10`` (``data/order_book_depths/``:
``{bid,ask}_{price,size}_{0..9}`` fixed point, ``{bid,ask}_count_{0..9}`` ``uint32``, ``flags``
``uint8``, ``sequence`` ``uint64``, the two times). A missing level is a null order, as
Nautilus writes one: raw price and size 0 with count 0; read back, count 0 is a null level.
Every snapshot carries ``F_SNAPSHOT | F_LAST`` (``conversion.DEPTH_FLAGS``), as the engine path
builds them, so Nautilus's reader and our engine see the same whole books.

The catalog of a day also holds the day's instruments (written by Nautilus itself: a handful of
objects) and a ``_manifest.json`` written last: a reader that finds no manifest knows the catalog
is incomplete. For a ``gs://`` root the directory is built locally and uploaded object by object
through UCS under ``layout.catalog_prefix(day)``; the manifest is uploaded last for the same
reason. Nothing here imports Dagster, so it is tested on its own.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.data import schemas
from backtest_pipeline.engine.names import instrument_id_str
from backtest_pipeline.storage.ucs import UnifiedCloudService

FIXED_PRECISION = 16
MANIFEST = "_manifest.json"
TRADE_TICK_DIR = "data/trade_tick"
QUOTE_TICK_DIR = "data/quote_tick"
DEPTH10_DIR = "data/order_book_depths"
#: Our tick data type → the catalog directory Nautilus 1.231 keeps it in.
BOOK_DIRS = {"quotes": QUOTE_TICK_DIR, "book_depth10": DEPTH10_DIR}
DEPTH_LEVELS = 10
#: Catalog files are written in row groups of this size and without dictionary pages: trade ids,
#: fixed-point prices and times are nearly all distinct, so a dictionary would be built for each
#: column only to be dropped (half the write time of a day's trades, and larger files).
ROW_GROUP_SIZE = 5_000
_AGGRESSOR = {"buy": 1, "sell": 2}
#: Our side names by Nautilus ``AggressorSide`` code (0: no aggressor), for reading back
#: (built from buffers: ``pa.array`` of Python values would import pandas).
_SIDE_NAMES = schemas.string_array(("none", "buy", "sell"))

CATALOG_TRADE_SCHEMA = pa.schema(
    [
        pa.field("price", pa.binary(16), nullable=False),
        pa.field("size", pa.binary(16), nullable=False),
        pa.field("aggressor_side", pa.uint8(), nullable=False),
        pa.field("trade_id", pa.string(), nullable=False),
        pa.field("ts_event", pa.uint64(), nullable=False),
        pa.field("ts_init", pa.uint64(), nullable=False),
    ]
)
CATALOG_QUOTE_SCHEMA = pa.schema(
    [
        *(pa.field(f"{side}_{what}", pa.binary(16), nullable=False)
          for what in ("price", "size") for side in ("bid", "ask")),
        pa.field("ts_event", pa.uint64(), nullable=False),
        pa.field("ts_init", pa.uint64(), nullable=False),
    ]
)  # fmt: skip
CATALOG_DEPTH10_SCHEMA = pa.schema(
    [
        *(pa.field(f"{side}_{what}_{i}", pa.binary(16), nullable=False)
          for what in ("price", "size") for side in ("bid", "ask") for i in range(DEPTH_LEVELS)),
        *(pa.field(f"{side}_count_{i}", pa.uint32(), nullable=False)
          for side in ("bid", "ask") for i in range(DEPTH_LEVELS)),
        pa.field("flags", pa.uint8(), nullable=False),
        pa.field("sequence", pa.uint64(), nullable=False),
        pa.field("ts_event", pa.uint64(), nullable=False),
        pa.field("ts_init", pa.uint64(), nullable=False),
    ]
)  # fmt: skip
#: Every stored row is a whole book: F_SNAPSHOT (32) | F_LAST (128), as the engine path sends.
DEPTH10_FLAGS = 32 | 128

#: What :func:`read_trades` gives back: the columns the engine's trade tables carry.
TRADES_OUT_SCHEMA = pa.schema(
    [
        pa.field("ts_event", pa.int64(), nullable=False),
        pa.field("ts_init", pa.int64(), nullable=False),
        pa.field("trade_id", pa.string(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
    ]
)


class CatalogError(RuntimeError):
    """A catalog that is incomplete (no manifest) or does not hold what was asked."""


# ---- fixed-point encoding -------------------------------------------------------------------


def _mul_u64_to_u128(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) 64-bit words of ``m × k`` for uint64 ``m < 2^63`` and ``k < 2^64``, vectorised.

    Done with 32-bit limbs so every partial product fits in uint64 (numpy has no int128).
    """
    mask = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a, b = m >> s32, m & mask
    c, d = np.uint64(k >> 32), np.uint64(k & 0xFFFFFFFF)
    bd = b * d
    mid1 = a * d
    mid2 = b * c
    mid = mid1 + mid2
    mid_carry = (mid < mid1).astype(np.uint64) << s32  # overflow of mid is worth 2^64 → hi += 2^32
    lo = bd + ((mid & mask) << s32)
    lo_carry = (lo < bd).astype(np.uint64)
    hi = a * c + (mid >> s32) + mid_carry + lo_carry
    return lo, hi


def encode_fixed(values: np.ndarray, precision: int) -> pa.FixedSizeBinaryArray:
    """Floats → Nautilus raw ``value × 10^16`` as little-endian int128 (values must be >= 0).

    The value is first rounded to ``precision`` decimals (what ``Price(value, precision)`` does),
    so the raw value is an exact multiple of ``10^(16 - precision)``.
    """
    if not 0 <= precision <= FIXED_PRECISION:
        raise ValueError(f"precision {precision} outside 0..{FIXED_PRECISION}")
    v = np.asarray(values, dtype=np.float64)
    if v.size and (not np.all(np.isfinite(v)) or np.any(v < 0)):
        raise ValueError("catalog prices and sizes must be finite and >= 0")
    mantissa = np.rint(v * 10.0**precision)
    if v.size and mantissa.max() >= 2.0**62:
        raise ValueError(f"value too large for precision {precision}")
    lo, hi = _mul_u64_to_u128(mantissa.astype(np.uint64), 10 ** (FIXED_PRECISION - precision))
    words = np.empty((v.size, 2), dtype="<u8")
    words[:, 0], words[:, 1] = lo, hi
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), v.size, [None, pa.py_buffer(words.tobytes())]
    )


def decode_fixed(array: pa.Array | pa.ChunkedArray, precision: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed`: the float nearest to the decimal the raw value holds."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.binary(16))
    n = len(array)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    buf = array.buffers()[1]
    words = np.frombuffer(buf, dtype="<u8", count=2 * (array.offset + n))[2 * array.offset :]
    words = words.reshape(n, 2)
    if np.any(words[:, 1] >= np.uint64(1 << 63)):
        raise CatalogError("negative fixed-point values are not trade prices or sizes")
    raw = words[:, 1].astype(np.float64) * 2.0**64 + words[:, 0].astype(np.float64)
    mantissa = np.rint(raw / 10.0 ** (FIXED_PRECISION - precision))
    # mantissa is an exact integer (< 2^53); one correctly rounded division gives the float.
    return mantissa / 10.0**precision


# ---- file naming ----------------------------------------------------------------------------


def _iso_file_ts(ns: int) -> str:
    secs, frac = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H-%M-%S")
    return f"{stamp}-{frac:09d}Z"


def trade_file_name(first_ts_init: int, last_ts_init: int) -> str:
    """Nautilus' ``{start}_{end}.parquet`` name: ISO times with ``:`` and ``.`` replaced by ``-``."""
    return f"{_iso_file_ts(first_ts_init)}_{_iso_file_ts(last_ts_init)}.parquet"


# ---- trades ---------------------------------------------------------------------------------


def trades_to_catalog_table(
    trades: pa.Table | pl.DataFrame, instrument_id: str, price_precision: int, size_precision: int
) -> pa.Table:
    """Our trades columns (ts_event, trade_id, price, size, side[, ts_init]) → catalog schema.

    ``ts_init`` is the exchange ``ts_event``, as in the engine path (latency is the venue model's
    job, see ``conversion.trades_to_ticks``).
    """
    df = trades if isinstance(trades, pl.DataFrame) else pl.from_arrow(trades)
    assert isinstance(df, pl.DataFrame)
    # Columns go to Arrow through Polars, not ``pa.array`` of NumPy values: that would make
    # pyarrow import pandas (~0.2 s), and the Dagster process writes these files too.
    ts = df["ts_event"].cast(pl.Int64).reinterpret(signed=False).to_arrow()
    side = (
        df["side"]
        .cast(pl.Utf8)
        .str.to_lowercase()
        .replace_strict(_AGGRESSOR, default=0, return_dtype=pl.UInt8)
        .to_arrow()
    )
    table = pa.Table.from_arrays(
        [
            encode_fixed(df["price"].cast(pl.Float64).to_numpy(), price_precision),
            encode_fixed(df["size"].cast(pl.Float64).to_numpy(), size_precision),
            side,
            df["trade_id"].cast(pl.Utf8).to_arrow().cast(pa.string()),
            ts,
            ts,
        ],
        schema=CATALOG_TRADE_SCHEMA,
    )
    return table.replace_schema_metadata(
        {
            "instrument_id": instrument_id,
            "price_precision": str(price_precision),
            "size_precision": str(size_precision),
        }
    )


def write_trades(
    catalog_dir: Path,
    trades: pa.Table | pl.DataFrame,
    instrument_id: str,
    price_precision: int,
    size_precision: int,
) -> Path | None:
    """Write one instrument's trades into the catalog; None when there is no row to write."""
    table = trades_to_catalog_table(trades, instrument_id, price_precision, size_precision)
    if table.num_rows == 0:
        return None
    ts_init = table.column("ts_init")
    directory = Path(catalog_dir) / TRADE_TICK_DIR / instrument_id
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / trade_file_name(int(ts_init[0].as_py()), int(ts_init[-1].as_py()))
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, use_dictionary=False)
    return path


def _catalog_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def _with_precisions(f: Path) -> tuple[pa.Table, int, int]:
    """A catalog file with the precisions Nautilus stores in its schema (needed to decode it)."""
    t = pq.read_table(f)
    meta = t.schema.metadata or {}
    pp = int(meta.get(b"price_precision", b"-1"))
    sp = int(meta.get(b"size_precision", b"-1"))
    if pp < 0 or sp < 0:
        raise CatalogError(f"{f}: no price/size precision in the schema metadata")
    return t, pp, sp


def read_trades(catalog_dir: Path, instrument_id: str) -> pa.Table:
    """One instrument's trades from the catalog, back as our columns (price/size as float64)."""
    files = _catalog_files(Path(catalog_dir) / TRADE_TICK_DIR / instrument_id)
    if not files:
        return TRADES_OUT_SCHEMA.empty_table()
    parts = []
    for f in files:
        t, pp, sp = _with_precisions(f)
        codes = t.column("aggressor_side")
        if len(codes) and pc.max(codes).as_py() >= len(_SIDE_NAMES):
            raise CatalogError(f"{f}: aggressor_side codes beyond 0..2 (none, buy, sell)")
        sides = pc.take(_SIDE_NAMES, codes)
        parts.append(
            pa.Table.from_arrays(
                [
                    pa.array(t.column("ts_event").to_numpy().astype(np.int64)),
                    pa.array(t.column("ts_init").to_numpy().astype(np.int64)),
                    t.column("trade_id").cast(pa.string()),
                    pa.array(decode_fixed(t.column("price"), pp)),
                    pa.array(decode_fixed(t.column("size"), sp)),
                    sides.combine_chunks(),
                ],
                schema=TRADES_OUT_SCHEMA,
            )
        )
    return pa.concat_tables(parts)


# ---- quotes and 10-level books ----------------------------------------------------------------


def _ns_u64(df: pl.DataFrame, name: str) -> np.ndarray:
    return df[name].cast(pl.Int64).to_numpy().astype(np.uint64)


def _meta(instrument_id: str, price_precision: int, size_precision: int) -> dict[str, str]:
    return {
        "instrument_id": instrument_id,
        "price_precision": str(price_precision),
        "size_precision": str(size_precision),
    }


def _level(col: pl.Series, precision: int) -> tuple[pa.FixedSizeBinaryArray, np.ndarray]:
    """A nullable level column → fixed point (a missing level's raw value 0) and its presence."""
    values = col.cast(pl.Float64).to_numpy()
    present = ~np.isnan(values)
    return encode_fixed(np.where(present, values, 0.0), precision), present


def book_to_catalog_table(
    table: pa.Table | pl.DataFrame,
    data_type: str,
    instrument_id: str,
    price_precision: int,
    size_precision: int,
) -> pa.Table:
    """Our validated ``quotes`` / ``book_depth10`` rows → Nautilus 1.231's catalog schema.

    ``ts_init`` is ``ts_event``, as the engine path builds its ticks (and as trades are written).
    """
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    ts = _ns_u64(df, "ts_event")
    prec = {"price": price_precision, "size": size_precision}
    if data_type == "quotes":
        columns: list[pa.Array] = [
            encode_fixed(df[f.name].cast(pl.Float64).to_numpy(), prec[f.name.split("_")[1]])
            for f in CATALOG_QUOTE_SCHEMA
            if f.name not in ("ts_event", "ts_init")
        ]
        schema = CATALOG_QUOTE_SCHEMA
    elif data_type == "book_depth10":
        columns, counts = [], {}
        for what in ("price", "size"):
            for side in ("bid", "ask"):
                for i in range(DEPTH_LEVELS):
                    arr, present = _level(df[f"{side}_{what}_{i}"], prec[what])
                    columns.append(arr)
                    if what == "price":
                        counts[f"{side}_count_{i}"] = present.astype(np.uint32)
        columns += [pa.array(counts[f"{s}_count_{i}"], pa.uint32())
                    for s in ("bid", "ask") for i in range(DEPTH_LEVELS)]  # fmt: skip
        columns += [
            pa.array(np.full(df.height, DEPTH10_FLAGS, np.uint8), pa.uint8()),
            pa.array(np.zeros(df.height, np.uint64), pa.uint64()),
        ]
        schema = CATALOG_DEPTH10_SCHEMA
    else:
        raise ValueError(f"no catalog schema for tick data type {data_type!r}")
    columns += [pa.array(ts, pa.uint64()), pa.array(ts, pa.uint64())]
    out = pa.Table.from_arrays(columns, schema=schema)
    return out.replace_schema_metadata(_meta(instrument_id, price_precision, size_precision))


def write_book(
    catalog_dir: Path,
    table: pa.Table | pl.DataFrame,
    data_type: str,
    instrument_id: str,
    price_precision: int,
    size_precision: int,
) -> Path | None:
    """Write one instrument's quotes or snapshots into the catalog; None when there are none."""
    out = book_to_catalog_table(table, data_type, instrument_id, price_precision, size_precision)
    if out.num_rows == 0:
        return None
    ts_init = out.column("ts_init")
    directory = Path(catalog_dir) / BOOK_DIRS[data_type] / instrument_id
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / trade_file_name(int(ts_init[0].as_py()), int(ts_init[-1].as_py()))
    pq.write_table(out, path, row_group_size=ROW_GROUP_SIZE, use_dictionary=False)
    return path


def read_book(catalog_dir: Path, data_type: str, instrument_id: str) -> pa.Table:
    """One instrument's quotes or snapshots from the catalog, as our columns (floats, ns times).

    A level whose count is 0 is a missing level (null), as it was before it was written.
    """
    parts = []
    files = _catalog_files(Path(catalog_dir) / BOOK_DIRS[data_type] / instrument_id)
    for t, pp, sp in (_with_precisions(f) for f in files):
        prec = {"price": pp, "size": sp}
        cols: dict[str, pa.Array] = {
            "ts_event": pa.array(t.column("ts_event").to_numpy().astype(np.int64)),
            "ts_init": pa.array(t.column("ts_init").to_numpy().astype(np.int64)),
        }
        if data_type == "quotes":
            for side in ("bid", "ask"):
                for what in ("price", "size"):
                    name = f"{side}_{what}"
                    cols[name] = pa.array(decode_fixed(t.column(name), prec[what]))
        else:
            for side in ("bid", "ask"):
                for what in ("price", "size"):
                    for i in range(DEPTH_LEVELS):
                        absent = t.column(f"{side}_count_{i}").to_numpy() == 0
                        values = decode_fixed(t.column(f"{side}_{what}_{i}"), prec[what])
                        cols[f"{side}_{what}_{i}"] = pa.array(values, mask=absent)
        parts.append(pa.table(cols))
    if not parts:
        names = ["ts_event", "ts_init"] + [
            f"{side}_{what}" + ("" if data_type == "quotes" else f"_{i}")
            for side in ("bid", "ask")
            for what in ("price", "size")
            for i in range(1 if data_type == "quotes" else DEPTH_LEVELS)
        ]
        return pa.table({n: pa.array([], pa.int64() if n[:3] == "ts_" else pa.float64())
                         for n in names})  # fmt: skip
    return pa.concat_tables(parts)


# ---- a day's catalog --------------------------------------------------------------------------


def write_day_trades(
    catalog_dir: Path,
    day: date,
    trades: Mapping[str, pa.Table | pl.DataFrame],
    instruments: pl.DataFrame,
) -> dict[str, Any]:
    """The trade files of a day's catalog; returns their manifest entries by instrument key.

    NumPy and Arrow only, no NautilusTrader: the Dagster process writes them while it fetches
    the next day's slices, and the run's worker (which has the engine loaded) adds the books,
    the instruments and the manifest (:func:`write_day_catalog`'s ``trade_entries``).
    """
    rows = {r["instrument_key"]: r for r in instruments.to_dicts()}
    entries: dict[str, Any] = {}
    for key, table in sorted(trades.items()):
        if key not in rows:
            raise CatalogError(f"{day}: trades for {key} but no such instrument that day")
        row = rows[key]
        iid = instrument_id_str(key)
        path = write_trades(
            catalog_dir, table, iid, int(row["price_precision"]), int(row["size_precision"])
        )
        entries[key] = {
            "instrument_id": iid,
            "rows": _rows(table),
            "file": str(path.relative_to(catalog_dir)) if path else None,
        }
    return entries


def write_day_catalog(
    catalog_dir: Path,
    day: date,
    trades: Mapping[str, pa.Table | pl.DataFrame] | None,
    instruments: pl.DataFrame,
    extra: Mapping[str, Any] | None = None,
    books: Mapping[str, Mapping[str, pa.Table | pl.DataFrame]] | None = None,
    trade_entries: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the day's trade slices (and their instruments) as a catalog; returns the manifest.

    ``trades`` maps our instrument keys to trade tables; ``books`` maps keys to their book
    slices by tick data type (``quotes``, ``book_depth10``); ``instruments`` is the day's
    validated instruments frame (precisions come from there). The manifest maps keys to Nautilus
    ids and row counts (per book data type under ``books``), and is written last.
    ``trade_entries``: the trade files are in ``catalog_dir`` already (these are the entries
    :func:`write_day_trades` returned), and ``trades`` is None.
    """
    from backtest_pipeline.config import FeeOverride
    from backtest_pipeline.engine.instruments import build_instrument

    catalog_dir = Path(catalog_dir)
    catalog_dir.mkdir(parents=True, exist_ok=True)
    if (trades is None) == (trade_entries is None):
        raise ValueError("write_day_catalog: give the trades or the entries of their files")
    if trade_entries is None:
        assert trades is not None
        trade_entries = write_day_trades(catalog_dir, day, trades, instruments)
    rows = {r["instrument_key"]: r for r in instruments.to_dicts()}
    entries: dict[str, Any] = {k: dict(v) for k, v in trade_entries.items()}
    nautilus_instruments = []
    day_start = layout.day_bounds_ns(day)[0]
    for key in sorted(entries):
        row = rows[key]
        iid = entries[key]["instrument_id"]
        for data_type, book in sorted((books or {}).get(key, {}).items()):
            bpath = write_book(
                catalog_dir, book, data_type, iid,
                int(row["price_precision"]), int(row["size_precision"]),
            )  # fmt: skip
            entries[key].setdefault("books", {})[data_type] = {
                "rows": _rows(book),
                "file": str(bpath.relative_to(catalog_dir)) if bpath else None,
            }
        nautilus_instruments.append(build_instrument(row, FeeOverride(), ts_ns=day_start))
    if nautilus_instruments:
        from nautilus_trader.persistence.catalog import ParquetDataCatalog

        ParquetDataCatalog(str(catalog_dir)).write_data(nautilus_instruments)
    manifest = {
        "day": day.isoformat(),
        "instruments": entries,
        "rows": sum(e["rows"] for e in entries.values()),
        **(dict(extra) if extra else {}),
    }
    (catalog_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _rows(table: pa.Table | pl.DataFrame) -> int:
    return int(table.num_rows if isinstance(table, pa.Table) else table.height)


def read_manifest(catalog_dir: Path) -> dict[str, Any]:
    path = Path(catalog_dir) / MANIFEST
    if not path.is_file():
        raise CatalogError(f"{catalog_dir}: no {MANIFEST}: the catalog is missing or incomplete")
    return json.loads(path.read_text())


def read_day_trades(catalog_dir: Path) -> dict[str, pa.Table]:
    """Every instrument's trades of a day catalog, keyed by our instrument key."""
    manifest = read_manifest(catalog_dir)
    return {
        key: read_trades(catalog_dir, entry["instrument_id"])
        for key, entry in manifest["instruments"].items()
    }


def read_day_books(catalog_dir: Path) -> dict[str, dict[str, pa.Table]]:
    """Every book slice of a day catalog: tick data type → instrument key → our columns."""
    manifest = read_manifest(catalog_dir)
    out: dict[str, dict[str, pa.Table]] = {}
    for key, entry in manifest["instruments"].items():
        for data_type in entry.get("books", {}):
            out.setdefault(data_type, {})[key] = read_book(
                catalog_dir, data_type, entry["instrument_id"]
            )
    return out


# ---- storage ----------------------------------------------------------------------------------


def catalog_prefix(day: date | str, scope: str) -> str:
    """Where a configuration's catalog of a day lives in the results bucket."""
    return f"{layout.catalog_prefix(day)}{layout.validate_component(scope, 'catalog scope')}/"


def upload_catalog(ucs: UnifiedCloudService, catalog_dir: Path, prefix: str) -> list[str]:
    """Upload every file of a local catalog under ``prefix``; the manifest last.

    Stale objects of an earlier catalog under the same prefix are removed first (manifest first),
    so a reader never combines two generations.
    """
    target = layout.target("results")
    catalog_dir = Path(catalog_dir)
    if not (catalog_dir / MANIFEST).is_file():
        raise CatalogError(f"{catalog_dir}: refusing to upload a catalog without {MANIFEST}")
    existing = ucs.list_files_sync(target, prefix)
    for path in sorted(existing, key=lambda p: not p.endswith(MANIFEST)):
        ucs.delete_sync(target, path)
    files = sorted(p for p in catalog_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    uploaded = []
    for f in [*files, catalog_dir / MANIFEST]:
        rel = f.relative_to(catalog_dir).as_posix()
        ucs.upload_to_gcs_sync(target, prefix + rel, f.read_bytes(), format="bytes")
        uploaded.append(prefix + rel)
    return uploaded


def download_catalog(ucs: UnifiedCloudService, prefix: str, dest: Path | None = None) -> Path:
    """Copy a stored catalog into a local directory (a temp dir by default) and return it."""
    target = layout.target("results")
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="nautilus-catalog-"))
    names = ucs.list_files_sync(target, prefix)
    if prefix + MANIFEST not in names:
        raise CatalogError(
            f"{ucs.uri(target, prefix)}: no {MANIFEST}; materialize nautilus_catalog for that day"
        )
    for name in names:
        rel = name[len(prefix) :]
        if not rel or ".." in rel.split("/"):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(ucs.download_bytes_sync(target, name))
    return dest
