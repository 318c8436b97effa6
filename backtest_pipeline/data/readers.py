"""Validating readers of the small per-day input objects (instruments, signals, funding).

A missing object is an error naming the object, never a silent skip: a backtest that quietly
drops a day would report a wrong PnL. Trades are read by the streaming range reader (UCS) and
validated with :func:`backtest_pipeline.data.schemas.validate_trades`; :func:`read_trades` here is
the whole-object variant (full-day runs, importers, tests).
"""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.data import schemas
from backtest_pipeline.data.schemas import DataValidationError, MissingDataError

try:  # the storage error types; readers also work with any UCS-like object
    from backtest_pipeline.storage.base import ObjectNotFoundError
except ImportError:  # pragma: no cover
    ObjectNotFoundError = FileNotFoundError  # type: ignore[misc,assignment]


def object_name(ucs: Any, target: layout.CloudTarget, path: str) -> str:
    """`gs://bucket/path` (or the local root's URI) for messages."""
    uri = getattr(ucs, "uri", None)
    return uri(target, path) if callable(uri) else f"gs://{target.gcs_bucket}/{path}"


def parquet_bytes_to_table(data: bytes, name: str) -> pa.Table:
    """Parse Parquet bytes, turning 'empty' and 'not Parquet' into errors naming the object.

    Through ``ParquetFile``, not ``pq.read_table``: the latter goes through ``pyarrow.dataset``,
    whose import pulls in pandas (0.5-0.8 s here) in a process that otherwise never needs it (the
    Dagster run's own process: its backtest runs in another); one in-memory file reads the same.
    """
    if not data:
        raise DataValidationError(name, "the object is empty (0 bytes), not a Parquet file")
    try:
        return pq.ParquetFile(io.BytesIO(data)).read()
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants
        raise DataValidationError(
            name, f"not a readable Parquet file ({len(data)} bytes): {exc}"
        ) from exc


def read_parquet_object(
    ucs: Any, target: layout.CloudTarget, path: str, what: str
) -> tuple[pa.Table, str]:
    """Whole object as an Arrow table, plus its name; MissingDataError if absent."""
    name = object_name(ucs, target, path)
    try:
        data = ucs.download_bytes_sync(target, path)
    except (ObjectNotFoundError, FileNotFoundError) as exc:
        raise MissingDataError(name, f"{what} object does not exist") from exc
    return parquet_bytes_to_table(data, name), name


def read_instruments(ucs: Any, day: str | date) -> pl.DataFrame:
    """The instruments available on `day` (validated, canonical columns)."""
    path = layout.instruments_path(day)
    table, name = read_parquet_object(
        ucs, layout.target("instruments"), path, f"instruments of {layout.day_str(day)}"
    )
    return schemas.validate_instruments(table, name)


def read_signals(ucs: Any, day: str | date, strategy_id: str) -> pl.DataFrame:
    """Signals of `strategy_id` on `day`; every ts_event must fall inside that UTC day."""
    path = layout.signals_path(day, strategy_id)  # validates the strategy id before any I/O
    what = f"signals of strategy {strategy_id!r} on {layout.day_str(day)}"
    table, name = read_parquet_object(ucs, layout.target("signals"), path, what)
    return schemas.validate_signals(table, name, day=day)


def read_funding(ucs: Any, day: str | date, instrument_key: str) -> pl.DataFrame:
    """Funding events of a perpetual on `day`."""
    path = layout.funding_path(day, instrument_key)
    what = f"funding rates of {instrument_key} on {layout.day_str(day)}"
    table, name = read_parquet_object(ucs, layout.target("ticks"), path, what)
    return schemas.validate_funding(table, name, day=day)


TICK_FRAME_VALIDATORS: dict[str, Any] = {
    "trades": schemas.validate_trades_frame,
    "quotes": schemas.validate_quotes_frame,
    "book_depth10": schemas.validate_book_depth10_frame,
}


def read_tick_day(ucs: Any, day: str | date, instrument_key: str, data_type: str) -> pl.DataFrame:
    """A whole tick day file of ``data_type`` (validated: crossed or locked quotes and books,
    level order, sizes and time order are errors naming the row). Window reads should use the
    UCS streaming reader; a whole day must hold rows."""
    path = layout.tick_path(day, instrument_key, data_type)
    what = f"{data_type} of {instrument_key} on {layout.day_str(day)}"
    table, name = read_parquet_object(ucs, layout.target("ticks"), path, what)
    return TICK_FRAME_VALIDATORS[data_type](table, name, day=day, allow_empty=False)


def read_trades(ucs: Any, day: str | date, instrument_key: str) -> pl.DataFrame:
    """A whole trades day file (validated)."""
    return read_tick_day(ucs, day, instrument_key, "trades")


def read_quotes(ucs: Any, day: str | date, instrument_key: str) -> pl.DataFrame:
    """A whole quotes (L1) day file (validated)."""
    return read_tick_day(ucs, day, instrument_key, "quotes")


def read_book_depth10(ucs: Any, day: str | date, instrument_key: str) -> pl.DataFrame:
    """A whole book_depth10 day file (validated)."""
    return read_tick_day(ucs, day, instrument_key, "book_depth10")


# Re-exported so callers of the readers need one import: the streaming reader validates its
# window's rows with this (Arrow in → Arrow out; an empty window is fine).
validate_trades = schemas.validate_trades


def empty_signals() -> pl.DataFrame:
    """A zero-row signals frame with the canonical schema (a day the strategy did not signal)."""
    out = schemas.empty_frame(schemas.SIGNALS_SCHEMA)
    assert isinstance(out, pl.DataFrame)
    return out
