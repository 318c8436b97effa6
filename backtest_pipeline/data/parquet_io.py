"""The one place that turns input tables into Parquet bytes with the product's writer settings.

Trades files are read mostly in short, scattered time windows (signal intervals), through ranged
reads selected by per-row-group ``ts_event`` statistics (``ucs.download_from_gcs_streaming``).
The cost of such a read is roughly ``coverage × (1 + row-group span / window) + footer``, so the
row groups must be short, while the footer (read once per file, cached) grows with their number.
Statistics are written for ``ts_event`` only: min/max of ``trade_id`` strings and of the other
columns serve no pruning and would roughly double the footer.

Measured on a generated 2 M-trade day (bursty arrivals; 144 scattered 60 s windows = 10 % of the
day; bytes counted by the UCS streaming reader on the local root, footer included once; the
script is ``tests/test_data_parquet_io.py::test_row_group_measurement`` in reduced form):

=========  =======  ======  ====================  =====================  ======================
rows/RG    file MB  footer  MB read, 1 call/win   MB read, 70 s windows  MB read, 1 call total
=========  =======  ======  ====================  =====================  ======================
500        20.6     1.62 MB 4.15                  4.42                   4.76
**1000**   17.5     817 KB  **3.71**              **3.97**               **4.16**
1500       16.2     546 KB  3.99                  4.23                   4.21
2000       15.6     409 KB  4.37                  4.61                   4.33
4000       14.6     207 KB  6.25                  6.52                   5.05
16000      14.3     54 KB   19.41                 19.63                  8.41
=========  =======  ======  ====================  =====================  ======================

1,000 rows per row group minimises the bytes read (≈ 21 % of the file for 10 % coverage), at the
price of an ~0.8 MB footer (read once per object and cached by UCS) and a file ~12 % larger
than with 2,000 rows. Statistics on every column would add ~60 % to the footer for no pruning.
"""

from __future__ import annotations

import io
from typing import Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline.data import schemas
from backtest_pipeline.storage import footer_index

TRADES_ROW_GROUP_SIZE: Final = 1_000
COMPRESSION: Final = "zstd"
COMPRESSION_LEVEL: Final = 3
# Sorted int64 times delta-encode to a few bits per row; sequential ids prefix-compress; prices and
# sizes repeat within a short row group, so a dictionary beats plain+zstd (-13 % file size overall).
TRADES_ENCODINGS: Final[dict[str, str]] = {
    "ts_event": "DELTA_BINARY_PACKED",
    "ts_init": "DELTA_BINARY_PACKED",
    "trade_id": "DELTA_BYTE_ARRAY",
}


def _as_table(table: pa.Table | pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Exactly the canonical schema: column order, int64 ns timestamps, plain (not large) strings.

    A missing optional column is added the way validation fills it (``ts_init`` = ``ts_event``,
    other nullable columns null); a missing required column is an error.
    """
    t = table.to_arrow() if isinstance(table, pl.DataFrame) else table
    for field in schema:
        if field.name in t.column_names:
            continue
        if field.name == "ts_init" and "ts_event" in t.column_names:
            t = t.append_column(field.name, t.column("ts_event"))
        elif field.nullable:
            t = t.append_column(field.name, pa.nulls(t.num_rows, field.type))
        else:
            raise ValueError(
                f"cannot write Parquet: required column {field.name!r} missing; has {t.column_names}"
            )
    t = t.select(schema.names)
    if "ts_event" in schema.names and pa.types.is_timestamp(t.schema.field("ts_event").type):
        t = t.set_column(
            t.schema.get_field_index("ts_event"),
            "ts_event",
            t.column("ts_event").cast(pa.timestamp("ns")).cast(pa.int64()),
        )
    if "ts_init" in schema.names and pa.types.is_timestamp(t.schema.field("ts_init").type):
        t = t.set_column(
            t.schema.get_field_index("ts_init"),
            "ts_init",
            t.column("ts_init").cast(pa.timestamp("ns")).cast(pa.int64()),
        )
    return t.cast(schema)


def trades_to_parquet_bytes(
    table: pa.Table | pl.DataFrame,
    *,
    row_group_size: int = TRADES_ROW_GROUP_SIZE,
) -> bytes:
    """Serialise a (validated) trades table for the ticks bucket.

    Short row groups + ``ts_event`` statistics make a time window map to a few small ranged reads;
    the sorting-column declaration tells other readers (DataFusion, Polars) the file is ordered.
    Deterministic: the same table always gives the same bytes.
    """
    t = _as_table(table, schemas.TRADES_SCHEMA)
    return _ticks_bytes(t, row_group_size, ["side", "price", "size"], TRADES_ENCODINGS)


# Quotes and book snapshots are read in the same signal windows as trades, so they follow the same
# rule: short row groups, statistics on ts_event only. A quote row is ~5 numbers (like a trade); a
# book row is 42, so its groups hold fewer rows (250 rows = 25 s of 100 ms snapshots); the
# row-group index keeps their large footer from being read whole. Measured in docs/market-data.md.
QUOTES_ROW_GROUP_SIZE: Final = 1_000
BOOK_ROW_GROUP_SIZE: Final = 250
_TS_ENCODINGS: Final[dict[str, str]] = {
    "ts_event": "DELTA_BINARY_PACKED",
    "ts_init": "DELTA_BINARY_PACKED",
}


def _ticks_bytes(
    t: pa.Table,
    row_group_size: int,
    dictionary: list[str] | bool | None = None,
    encodings: dict[str, str] | None = None,
    index: bool = False,
) -> bytes:
    """The one tick writer: short row groups, ts_event statistics, sorted by ts_event. Quotes
    dictionary-encode every value column (levels repeat row to row) unless told otherwise.

    ``index`` appends the row-group index of :mod:`backtest_pipeline.storage.footer_index`, so
    that a window read fetches only its row groups' part of the footer.
    """
    encodings = _TS_ENCODINGS if encodings is None else encodings
    if dictionary is None:
        dictionary = [n for n in t.column_names if n not in _TS_ENCODINGS]
    data = _parquet_bytes(
        t,
        row_group_size=row_group_size,
        write_statistics=["ts_event"],
        use_dictionary=dictionary,
        column_encoding=encodings,
        sorting_columns=[pq.SortingColumn(0)],
    )
    return footer_index.with_index(data) if index and t.num_rows else data


def _parquet_bytes(t: pa.Table, **options: Any) -> bytes:
    """Every object the product writes is compressed the same way (deterministic bytes)."""
    buf = io.BytesIO()
    pq.write_table(t, buf, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL, **options)
    return buf.getvalue()


def quotes_to_parquet_bytes(
    table: pa.Table | pl.DataFrame, *, row_group_size: int = QUOTES_ROW_GROUP_SIZE
) -> bytes:
    """Serialise a (validated) quotes table for the ticks bucket; deterministic."""
    return _ticks_bytes(_as_table(table, schemas.QUOTES_SCHEMA), row_group_size, index=True)


def book_depth10_to_parquet_bytes(
    table: pa.Table | pl.DataFrame,
    *,
    row_group_size: int = BOOK_ROW_GROUP_SIZE,
    metadata: dict[bytes, bytes] | None = None,
) -> bytes:
    """Serialise (validated) 10-level book snapshots for the ticks bucket; deterministic.

    ``metadata`` goes into the footer's key-value metadata (the invalid periods of
    :func:`books.encode_invalid_periods`): readers already fetch the footer, so it costs no
    read. Without it the bytes are exactly those of a file written before the key existed.
    """
    t = _as_table(table, schemas.BOOK_DEPTH10_SCHEMA)
    if metadata:
        t = t.replace_schema_metadata(metadata)
    return _ticks_bytes(t, row_group_size, dictionary=False, index=True)


def tick_to_parquet_bytes(
    table: pa.Table | pl.DataFrame, data_type: str, metadata: dict[bytes, bytes] | None = None
) -> bytes:
    """The writer of a tick data type (`trades`, `quotes`, `book_depth10`) with its settings."""
    if data_type == "trades":
        return trades_to_parquet_bytes(table)
    if data_type == "quotes":
        return quotes_to_parquet_bytes(table)
    if data_type == "book_depth10":
        return book_depth10_to_parquet_bytes(table, metadata=metadata)
    raise ValueError(f"no writer for tick data type {data_type!r}")


def table_to_parquet_bytes(
    table: pa.Table | pl.DataFrame,
    schema: pa.Schema | None = None,
    *,
    ts_statistics: bool = True,
) -> bytes:
    """Small tables (instruments, signals, funding, bars): one row group, zstd.

    With a ``schema`` the table is cast to it first (the canonical column set and types). Statistics
    are kept on ``ts_event`` when present so the ranged reader can select from these files too.
    """
    t = table.to_arrow() if isinstance(table, pl.DataFrame) else table
    if schema is not None:
        t = _as_table(t, schema)
    stats: bool | list[str] = (
        ["ts_event"] if ts_statistics and "ts_event" in t.column_names else True
    )
    return _parquet_bytes(t, write_statistics=stats)
