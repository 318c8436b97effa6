"""Every bad input of the data layer fails with a message naming the object and the problem."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import parquet_io, readers, schemas
from backtest_pipeline.data.schemas import DataValidationError, MissingDataError
from backtest_pipeline.storage.ucs import UnifiedCloudService

OBJ = "gs://bucket/some/object.parquet"
KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = "2024-01-01"
T0 = layout.day_bounds_ns(DAY)[0]


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(root=str(tmp_path / "root"))


def trades(**over: list) -> pl.DataFrame:
    cols = {
        "ts_event": [T0 + 1, T0 + 2, T0 + 2, T0 + 5],
        "trade_id": ["1", "2", "3", "4"],
        "price": [100.0, 100.5, 100.4, 101.0],
        "size": [0.1, 0.2, 0.3, 0.4],
        "side": ["buy", "sell", "buy", "sell"],
    }
    cols.update(over)
    return pl.DataFrame(cols)


def signals(**over: list) -> pl.DataFrame:
    cols = {
        "signal_id": ["a", "b", "c"],
        "ts_event": [T0 + 10, T0 + 20, T0 + 30],
        "instrument_key": [KEY] * 3,
        "target_position": [0.1, 0.0, -0.1],
        "execution_window_s": [60.0, 30.0, 90.0],
        "algo": ["MARKET", "LIMIT", "TWAP"],
        "limit_price": [None, 100.0, None],
    }
    cols.update(over)
    return pl.DataFrame(cols)


def instruments(keys: list[str] | None = None) -> pl.DataFrame:
    return schemas.instruments_frame([schemas.default_instrument_row(k) for k in (keys or [KEY])])


def test_good_tables_normalise() -> None:
    df = trades(side=["BUY", "sell", "buy", "Sell"])
    out = schemas.validate_trades(df, OBJ)
    assert out["side"].to_list() == ["buy", "sell", "buy", "sell"]
    assert out["ts_init"].to_list() == out["ts_event"].to_list()
    # timestamp[ns, UTC] accepted and normalised to int64 ns; Arrow in → Arrow out
    tbl = df.with_columns(pl.col("ts_event").cast(pl.Datetime("ns", "UTC"))).to_arrow()
    arrow_out = schemas.validate_trades(tbl, OBJ)
    assert isinstance(arrow_out, pa.Table) and arrow_out.schema == schemas.TRADES_SCHEMA
    assert arrow_out.column("ts_event").to_pylist()[0] == T0 + 1
    schemas.validate_signals(signals(), OBJ, day=DAY)
    schemas.validate_instruments(instruments(list(schemas.REFERENCE_INSTRUMENTS)), OBJ)


@pytest.mark.parametrize(
    ("frame", "pattern"),
    [
        (trades().head(0), "empty trades table"),
        (trades().drop("size"), r"missing required column\(s\) \['size'\]"),
        (trades().rename({"price": "prices"}), "'prices' looks like a renamed 'price'"),
        (trades(price=["1", "2", "3", "4"]), r"column 'price': expected float64, found String"),
        (
            trades().with_columns(pl.col("ts_event").cast(pl.Float64)),
            "column 'ts_event': expected int64",
        ),
        (trades(ts_event=[T0 + 1, T0 + 3, T0 + 2, T0 + 5]), r"sorted by ts_event.*row 2"),
        (
            trades(price=[100.0, float("nan"), 1.0, 1.0]),
            r"'price'.*finite values > 0, found nan at row 1",
        ),
        (trades(price=[100.0, 1.0, 0.0, 1.0]), r"'price'.*found 0.0 at row 2"),
        (trades(size=[0.1, -0.2, 0.3, 0.4]), r"'size'.*found -0.2 at row 1"),
        (trades(size=[0.1, 0.2, float("inf"), 0.4]), r"'size'.*found inf at row 2"),
        (trades(trade_id=["1", "2", "1", "4"]), r"'trade_id'.*unique.*'1' more than once"),
        (
            trades(side=["buy", "hold", "buy", "sell"]),
            r"'side'.*'buy' or 'sell', found 'hold' at row 1",
        ),
        (trades(price=[100.0, None, 1.0, 1.0]), r"'price'.*non-null value, found null at row 1"),
    ],
)
def test_bad_trades(frame: pl.DataFrame, pattern: str) -> None:
    with pytest.raises(DataValidationError, match=pattern) as ei:
        schemas.validate_trades(frame, OBJ, allow_empty=False)
    assert str(ei.value).startswith(OBJ)


def test_trades_outside_day() -> None:
    with pytest.raises(DataValidationError, match=r"inside the UTC day 2024-01-02"):
        schemas.validate_trades(trades(), OBJ, day="2024-01-02")


@pytest.mark.parametrize(
    ("frame", "pattern"),
    [
        (signals(algo=["MARKET", "VWAP", "TWAP"]), r"'algo'.*MARKET.*found 'VWAP' at row 1"),
        (signals(ts_event=[T0 + 10, T0 + 5, T0 + 30]), r"signals must be sorted.*row 1"),
        (signals(signal_id=["a", "b", "a"]), r"'signal_id'.*'a' more than once"),
        (signals(execution_window_s=[60.0, 0.0, 1.0]), r"'execution_window_s'.*> 0, found 0.0"),
        (signals(limit_price=[None, -1.0, None]), r"'limit_price'.*found -1.0"),
        (signals(limit_price=[100.0, None, None]), r"'limit_price'.*null unless algo is LIMIT"),
        (signals(instrument_key=[KEY, "../x", KEY]), r"'instrument_key'.*row 1.*'\.\.'"),
        (signals(instrument_key=[KEY, KEY, "/abs:SPOT:A-B"]), r"'instrument_key'.*row 2.*outside"),
        (signals(instrument_key=["A:SPOT:B-C\x00", KEY, KEY]), r"'instrument_key'.*row 0.*\\x00"),
        (signals(instrument_key=[KEY, "BINANCE:OPTION:BTC-USDT", KEY]), r"type 'OPTION'"),
        (signals().drop("algo"), r"missing required column\(s\) \['algo'\]"),
    ],
)
def test_bad_signals(frame: pl.DataFrame, pattern: str) -> None:
    with pytest.raises(DataValidationError, match=pattern) as ei:
        schemas.validate_signals(frame, OBJ)
    assert str(ei.value).startswith(OBJ)


def test_bad_instruments() -> None:
    dup = pl.concat([instruments(), instruments()])
    with pytest.raises(DataValidationError, match=r"'instrument_key'.*unique.*more than once"):
        schemas.validate_instruments(dup, OBJ)
    wrong_venue = instruments().with_columns(venue=pl.lit("BYBIT"))
    with pytest.raises(DataValidationError, match=r"'venue'.*implied by instrument_key"):
        schemas.validate_instruments(wrong_venue, OBJ)
    with pytest.raises(DataValidationError, match=r"'tick_size'.*> 0"):
        schemas.validate_instruments(instruments().with_columns(tick_size=pl.lit(0.0)), OBJ)
    with pytest.raises(DataValidationError, match=r"'price_precision'.*expected int32"):
        schemas.validate_instruments(instruments().with_columns(price_precision=pl.lit("2")), OBJ)
    with pytest.raises(DataValidationError, match="empty instruments"):
        schemas.validate_instruments(instruments().head(0), OBJ)


def test_readers_missing_empty_and_bad_ids(ucs: UnifiedCloudService) -> None:
    with pytest.raises(
        MissingDataError,
        match=r"instruments-store.*instruments\.parquet: instruments of 2024-01-01",
    ):
        readers.read_instruments(ucs, DAY)
    with pytest.raises(FileNotFoundError):
        readers.read_funding(ucs, DAY, KEY)
    t_sig = layout.target("signals")
    ucs.upload_to_gcs_sync(t_sig, layout.signals_path(DAY, "s"), b"", format="bytes")
    with pytest.raises(
        DataValidationError, match=r"signals\.parquet: the object is empty \(0 bytes\)"
    ):
        readers.read_signals(ucs, DAY, "s")
    ucs.upload_to_gcs_sync(
        t_sig, layout.signals_path(DAY, "s"), b"not parquet at all", format="bytes"
    )
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        readers.read_signals(ucs, DAY, "s")
    for bad in ("../x", "/abs", "a\x07b"):
        with pytest.raises(layout.LayoutError):
            readers.read_signals(ucs, DAY, bad)
        with pytest.raises(layout.LayoutError):
            readers.read_funding(ucs, DAY, bad)


def test_readers_roundtrip_and_object_name(ucs: UnifiedCloudService) -> None:
    t_sig = layout.target("signals")
    path = layout.signals_path(DAY, "s")
    bad = signals(algo=["MARKET", "LIMIT", "ICEBERG"])
    ucs.upload_to_gcs_sync(t_sig, path, parquet_io.table_to_parquet_bytes(bad), format="parquet")
    with pytest.raises(DataValidationError) as ei:
        readers.read_signals(ucs, DAY, "s")
    assert (
        ei.value.object_name == ucs.uri(t_sig, path)
        and ei.value.column == "algo"
        and ei.value.row == 2
    )
    good = signals()
    ucs.upload_to_gcs_sync(
        t_sig, path, parquet_io.table_to_parquet_bytes(good, schemas.SIGNALS_SCHEMA)
    )
    assert readers.read_signals(ucs, DAY, "s").equals(schemas.validate_signals(good, OBJ))
    with pytest.raises(DataValidationError, match=r"inside the UTC day 2024-01-02"):
        ucs.upload_to_gcs_sync(
            t_sig, layout.signals_path("2024-01-02", "s"), parquet_io.table_to_parquet_bytes(good)
        )
        readers.read_signals(ucs, "2024-01-02", "s")
