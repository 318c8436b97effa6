"""Quotes and 10-level books in the vectorised Nautilus catalog: Nautilus reads what we wrote.

The catalog files are written with pyarrow in NautilusTrader 1.231's own schemas; here they are
read back with Nautilus's ``ParquetDataCatalog`` and compared, field by field, with the objects
the engine path builds from the same rows (``conversion.quotes_to_ticks`` / ``depths_to_snapshots``),
and with Nautilus's own writer's files; our reader must give back the rows exactly.
"""

import glob
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from nautilus_trader.model.data import OrderBookDepth10, QuoteTick
from nautilus_trader.persistence.catalog import ParquetDataCatalog

from backtest_pipeline.config import FeeOverride
from backtest_pipeline.data import schemas
from backtest_pipeline.data.sample import generate_book, generate_trades, instruments_for_day
from backtest_pipeline.engine import catalog as c
from backtest_pipeline.engine import conversion as cv
from backtest_pipeline.engine.instruments import build_instrument

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 1)


@pytest.fixture(scope="module")
def day_data() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    instruments = instruments_for_day()
    trades, mid = generate_trades(KEY, DAY, 3_000)
    depth, quotes = generate_book(KEY, DAY, trades, mid)
    # a few missing levels (a thin book): nulls must survive the round trip
    depth = depth.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col(c_)).alias(c_)
        for c_ in ("ask_price_9", "ask_size_9", "bid_price_8", "bid_size_8",
                   "bid_price_9", "bid_size_9")
    )  # fmt: skip
    # as a run reads them: without ts_init, which validation sets to ts_event (and a part of
    # the day: Nautilus's objects are compared one by one)
    quotes, depth = quotes.drop("ts_init").head(6_000), depth.drop("ts_init").head(6_000)
    quotes = pl.from_arrow(schemas.validate_tick(quotes.to_arrow(), "quotes", "quotes", day=DAY))
    depth = pl.from_arrow(schemas.validate_tick(depth.to_arrow(), "book_depth10", "book", day=DAY))
    return instruments, pl.from_arrow(trades), quotes, depth  # type: ignore[return-value]


def _write(tmp: Path, day_data) -> Path:  # type: ignore[no-untyped-def]
    instruments, trades, quotes, depth = day_data
    c.write_day_catalog(
        tmp, DAY, {KEY: trades}, instruments,
        books={KEY: {"quotes": quotes, "book_depth10": depth}},
    )  # fmt: skip
    return tmp


def _instrument(instruments: pl.DataFrame):  # type: ignore[no-untyped-def]
    return build_instrument(instruments.filter(pl.col("instrument_key") == KEY).row(0, named=True),
                            FeeOverride())  # fmt: skip


def test_nautilus_reads_our_quotes_as_the_engine_builds_them(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, _trades, quotes, _depth = day_data
    cat = ParquetDataCatalog(str(_write(tmp_path / "cat", day_data)))
    inst = _instrument(instruments)
    want = cv.quotes_to_ticks(inst, cv.quote_columns(quotes))
    got = cat.quote_ticks(instrument_ids=[str(inst.id)])
    assert len(got) == len(want) == quotes.height > 0
    for x, y in zip(got, want, strict=True):
        assert isinstance(x, QuoteTick) and x.instrument_id == y.instrument_id
        assert (x.bid_price, x.ask_price, x.bid_size, x.ask_size, x.ts_event, x.ts_init) == (
            y.bid_price, y.ask_price, y.bid_size, y.ask_size, y.ts_event, y.ts_init,
        )  # fmt: skip
    # Nautilus's own writer gives the same table (schema, metadata, values)
    ParquetDataCatalog(str(tmp_path / "ref")).write_data(want)
    ref = glob.glob(str(tmp_path / "ref/data/quote_tick/*/*.parquet"))
    mine = glob.glob(str(tmp_path / "cat/data/quote_tick/*/*.parquet"))
    assert [Path(p).name for p in ref] == [Path(p).name for p in mine]
    assert pq.read_table(ref[0]).equals(pq.read_table(mine[0]), check_metadata=True)


def test_nautilus_reads_our_snapshots_as_the_engine_builds_them(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, _trades, _quotes, depth = day_data
    cat = ParquetDataCatalog(str(_write(tmp_path / "cat", day_data)))
    inst = _instrument(instruments)
    want = cv.depths_to_snapshots(inst, cv.depth_columns(depth))
    got = cat.order_book_depth10(instrument_ids=[str(inst.id)])
    assert len(got) == len(want) == depth.height > 0
    for x, y in zip(got, want, strict=True):
        assert isinstance(x, OrderBookDepth10)
        assert (x.flags, x.sequence, x.ts_event, x.ts_init) == (y.flags, y.sequence, y.ts_event,
                                                                y.ts_init)  # fmt: skip
        assert x.flags == cv.DEPTH_FLAGS == c.DEPTH10_FLAGS
        assert (x.bid_counts, x.ask_counts) == (y.bid_counts, y.ask_counts)
        for a, b in zip(x.bids + x.asks, y.bids + y.asks, strict=True):
            assert (a.price, a.size) == (b.price, b.size)
    assert any(0 in x.bid_counts for x in got)  # the thinned levels were written as null orders
    # Nautilus's own writer on the whole books (it refuses null orders of another precision):
    # the same file, byte for byte in its table.
    full = depth.filter(pl.all_horizontal(pl.all().is_not_null()))
    assert 0 < full.height < depth.height
    ParquetDataCatalog(str(tmp_path / "ref")).write_data(
        cv.depths_to_snapshots(inst, cv.depth_columns(full))
    )
    c.write_book(tmp_path / "full", full, "book_depth10", str(inst.id), inst.price_precision,
                 inst.size_precision)  # fmt: skip
    ref = glob.glob(str(tmp_path / "ref/data/order_book_depths/*/*.parquet"))
    mine = glob.glob(str(tmp_path / "full/data/order_book_depths/*/*.parquet"))
    assert [Path(p).name for p in ref] == [Path(p).name for p in mine]
    assert pq.read_table(ref[0]).equals(pq.read_table(mine[0]), check_metadata=True)


def test_our_reader_gives_the_rows_back_exactly(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    _instruments, _trades, quotes, depth = day_data
    books = c.read_day_books(_write(tmp_path / "cat", day_data))
    for data_type, table in (("quotes", quotes), ("book_depth10", depth)):
        back = pl.from_arrow(schemas.validate_tick(books[data_type][KEY], data_type, "x", day=DAY))
        assert isinstance(back, pl.DataFrame)
        assert back.schema == table.schema, data_type
        assert back.equals(table), data_type
        n_null = sum(back[col].null_count() for col in back.columns)
        assert (n_null > 0) == (data_type == "book_depth10")
    manifest = c.read_manifest(tmp_path / "cat")
    entry = manifest["instruments"][KEY]["books"]
    assert (
        entry["quotes"]["rows"] == quotes.height and entry["book_depth10"]["rows"] == depth.height
    )


def test_an_empty_book_slice_is_no_file(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, trades, quotes, _depth = day_data
    c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades}, instruments,
                        books={KEY: {"quotes": quotes.head(0)}})  # fmt: skip
    entry = c.read_manifest(tmp_path / "cat")["instruments"][KEY]["books"]["quotes"]
    assert entry == {"rows": 0, "file": None}
    back = c.read_day_books(tmp_path / "cat")["quotes"][KEY]
    assert back.num_rows == 0 and "bid_price" in back.column_names
    assert np.all(np.isin(["ts_event", "ask_size"], back.column_names))
