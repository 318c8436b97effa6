"""Columnar trades → Nautilus ``TradeTick`` objects, and the per-second marks derived from them.

The engine only accepts Cython ``TradeTick`` objects; building them one Python row at a time
costs more than the backtest itself, so the columns are prepared with polars/numpy and handed to
``TradeTick.from_raw_arrays_to_list`` in one call.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from nautilus_trader.model.data import TradeTick
from nautilus_trader.model.instruments import Instrument

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
    """
    df = normalise_trades(table, instrument.size_precision)
    if df.height == 0:
        return []
    # The Cython API takes writable memoryviews; polars' zero-copy arrays are read-only.
    ts_event = np.array(df["ts_event"].to_numpy(), dtype=np.uint64)
    ts_init = np.array((df["ts_init"] if use_ts_init else df["ts_event"]).to_numpy(), np.uint64)
    return TradeTick.from_raw_arrays_to_list(
        instrument.id,
        instrument.price_precision,
        instrument.size_precision,
        np.array(df["price"].to_numpy(), dtype=np.float64),
        np.array(df["size"].to_numpy(), dtype=np.float64),
        np.array(df["aggressor"].to_numpy(), dtype=np.uint8),
        df["trade_id"].to_list(),
        ts_event,
        ts_init,
    )


def marks_per_second(table: pa.Table | pl.DataFrame, instrument_key: str) -> pl.DataFrame:
    """Last trade price in each UTC second, stamped with that trade's own ts_event.

    Stamping with the trade's time (not the second's start) keeps the marks free of look-ahead.
    """
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
