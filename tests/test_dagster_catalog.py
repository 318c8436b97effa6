"""The vectorised Nautilus catalog writer/reader (plain functions, no Dagster)."""

import glob
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from nautilus_trader.model.data import TradeTick
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.persistence.catalog.parquet import _timestamps_to_filename

from backtest_pipeline.config import FeeOverride
from backtest_pipeline.data.sample import generate_trades, instruments_for_day
from backtest_pipeline.engine import catalog as c
from backtest_pipeline.engine.conversion import trades_to_ticks
from backtest_pipeline.engine.instruments import build_instrument
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 1)


@pytest.fixture(scope="module")
def day_data() -> tuple[pl.DataFrame, pl.DataFrame]:
    instruments = instruments_for_day()
    table, _mid = generate_trades(KEY, DAY, 5_000)
    trades = pl.from_arrow(table)
    assert isinstance(trades, pl.DataFrame)
    return instruments, trades


def test_fixed_point_roundtrip() -> None:
    values = np.array([0.0, 0.1, 42_000.1, 123_456.789, 1e-9 * 3, 99_999_999.5])
    for prec in (0, 1, 3, 9):
        back = c.decode_fixed(c.encode_fixed(values, prec), prec)
        assert np.array_equal(back, np.round(values, prec))


def test_file_name_matches_nautilus() -> None:
    for a, b in [(0, 1), (1_704_067_207_960_000_000, 1_704_153_599_999_999_999)]:
        assert c.trade_file_name(a, b) == _timestamps_to_filename(a, b)


def test_vectorised_file_is_identical_to_write_data(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    row = instruments.filter(pl.col("instrument_key") == KEY).row(0, named=True)
    inst = build_instrument(row, FeeOverride())
    ticks = trades_to_ticks(trades, inst)
    ParquetDataCatalog(str(tmp_path / "ref")).write_data(ticks)
    c.write_day_catalog(tmp_path / "mine", DAY, {KEY: trades.to_arrow()}, instruments)
    ref = glob.glob(str(tmp_path / "ref/data/trade_tick/*/*.parquet"))
    mine = glob.glob(str(tmp_path / "mine/data/trade_tick/*/*.parquet"))
    assert [Path(p).name for p in ref] == [Path(p).name for p in mine]
    assert pq.read_table(ref[0]).equals(pq.read_table(mine[0]), check_metadata=True)

    # Nautilus reads our catalog back: same ticks, field by field
    cat = ParquetDataCatalog(str(tmp_path / "mine"))
    got = cat.trade_ticks()
    assert len(got) == len(ticks)
    for x, y in zip(got, ticks, strict=True):
        assert isinstance(x, TradeTick)
        assert (x.instrument_id, x.price, x.size, x.aggressor_side, x.trade_id, x.ts_event) == (
            y.instrument_id,
            y.price,
            y.size,
            y.aggressor_side,
            y.trade_id,
            y.ts_event,
        )
    assert [str(i.id) for i in cat.instruments()] == [str(inst.id)]
    assert len(cat.query(TradeTick, instrument_ids=[str(inst.id)])) == len(ticks)

    # and our reader gives back the trade columns exactly
    back = pl.from_arrow(c.read_day_trades(tmp_path / "mine")[KEY])
    cols = ["ts_event", "trade_id", "price", "size", "side"]
    assert back.select(cols).equals(
        trades.select(cols).with_columns(pl.col("ts_event").cast(pl.Int64))
    )


def test_empty_slice_and_missing_manifest(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    m = c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades.head(0).to_arrow()}, instruments)
    assert m["instruments"][KEY]["rows"] == 0 and m["instruments"][KEY]["file"] is None
    assert c.read_day_trades(tmp_path / "cat")[KEY].num_rows == 0
    with pytest.raises(c.CatalogError, match="incomplete"):
        c.read_manifest(tmp_path / "nothing")


def test_upload_and_download_through_ucs(
    ucs: UnifiedCloudService, tmp_path: Path, day_data
) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades.to_arrow()}, instruments)
    prefix = c.catalog_prefix(DAY, "demo")
    names = c.upload_catalog(ucs, tmp_path / "cat", prefix)
    assert names[-1] == prefix + c.MANIFEST
    local = c.download_catalog(ucs, prefix, tmp_path / "down")
    assert c.read_day_trades(local)[KEY].equals(c.read_day_trades(tmp_path / "cat")[KEY])
    with pytest.raises(c.CatalogError, match="no _manifest.json"):
        c.download_catalog(ucs, c.catalog_prefix(DAY, "other"), tmp_path / "x")
