"""Importers: the real Tardis fixture, crafted Binance trades/aggTrades files, signals files."""

from __future__ import annotations

import gzip
import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import importers, readers
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.storage.ucs import UnifiedCloudService

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TARDIS = SHARED_DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"
BTC_PERP = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
SPOT = "BINANCE:SPOT:BTC-USDT"


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(root=str(tmp_path / "root"))


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


needs_tardis = pytest.mark.skipif(
    not TARDIS.is_file(), reason=f"shared real-data folder absent ({TARDIS} not found)"
)


@needs_tardis
@pytest.mark.parametrize("compress", [False, True])
def test_tardis_real_file(ucs: UnifiedCloudService, tmp_path: Path, compress: bool) -> None:
    src = TARDIS
    if compress:
        src = tmp_path / "trades.csv.gz"
        src.write_bytes(gzip.compress(TARDIS.read_bytes()))
    report = importers.import_tardis(ucs, [src])
    assert report["rows_read"] == 9_999 and report["rows_written"] == 9_999
    (day,) = report["days"]
    assert day["day"] == "2020-02-22" and day["instrument_key"] == BTC_PERP and day["rows"] == 9_999
    assert day["first_ts"] == 1582329602111000000
    assert day["last_ts"] == 1582337147728000000

    df = readers.read_trades(ucs, "2020-02-22", BTC_PERP)
    assert df.height == 9_999
    first, last = df.row(0, named=True), df.row(-1, named=True)
    assert first == {
        "ts_event": 1582329602111000000,
        "ts_init": 1582329602418379000,
        "trade_id": "42377944",
        "price": 9682.0,
        "size": 0.132,
        "side": "buy",
    }
    assert (last["trade_id"], last["price"], last["size"], last["side"]) == (
        "42387942",
        9666.84,
        0.07,
        "sell",
    )
    assert last["ts_init"] == 1582337147852384000
    # side mapping is the file's own aggressor side, both present
    raw = pl.read_csv(TARDIS)
    assert (
        df["side"].value_counts().sort("side").rows()
        == raw["side"].value_counts().sort("side").rows()
    )
    assert df["ts_event"].is_sorted()

    inst = readers.read_instruments(ucs, "2020-02-22")
    row = inst.row(0, named=True)
    assert row["instrument_key"] == BTC_PERP and row["venue"] == "BINANCE-FUTURES"
    # 2020 prices have 2 decimals: the instrument must describe the data (finer than today's 0.1 tick)
    assert row["tick_size"] == 0.01 and row["price_precision"] == 2


@needs_tardis
def test_tardis_reimport_replaces_and_keeps_instruments(ucs: UnifiedCloudService) -> None:
    importers.import_tardis(ucs, [TARDIS])
    report = importers.import_tardis(ucs, [TARDIS])
    assert report["days"][0]["replaced"] is True
    assert any("replaced" in w for w in report["warnings"])
    assert report["instruments_added"] == []
    assert readers.read_instruments(ucs, "2020-02-22").height == 1


def _binance_rows(kind: str, unit: str) -> list[list[str]]:
    """Four trades straddling 2024-03-01 00:00 UTC, one with duplicated timestamp."""
    times = [
        _ms("2024-02-29T23:59:58"),
        _ms("2024-02-29T23:59:59"),
        _ms("2024-03-01T00:00:00"),
        _ms("2024-03-01T00:00:00"),
    ]
    if unit == "us":
        times = [t * 1000 for t in times]
    makers = ["true", "False", "TRUE", "false"]
    rows = []
    for i, (t, m) in enumerate(zip(times, makers, strict=True)):
        price, qty = f"{62000 + i}.5", f"0.00{i + 1}"
        if kind == "trades":
            rows.append([str(1000 + i), price, qty, "1.0", str(t), m, "True"])
        else:
            rows.append(
                [str(500 + i), price, qty, str(1000 + 2 * i), str(1001 + 2 * i), str(t), m, "True"]
            )
    return rows


def _binance_file(
    tmp_path: Path, kind: str, unit: str, header: bool, zipped: bool, ncol: int
) -> Path:
    rows = [r[:ncol] for r in _binance_rows(kind, unit)]
    cols = importers.BINANCE_TRADES_COLUMNS if kind == "trades" else importers.BINANCE_AGG_COLUMNS
    lines = ([",".join(cols[:ncol])] if header else []) + [",".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    name = f"BTCUSDT-{kind}-2024-02-29-{unit}-{int(header)}-{ncol}"
    if zipped:
        path = tmp_path / f"{name}.zip"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"{name}.csv", text)
        path.write_bytes(buf.getvalue())
    else:
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("kind", "unit", "header", "zipped", "ncol"),
    [
        ("trades", "ms", True, False, 7),
        ("trades", "ms", False, False, 6),  # futures trades: no is_best_match
        ("trades", "us", False, True, 7),  # spot 2025+: µs
        ("aggTrades", "ms", True, True, 8),
        ("aggTrades", "us", False, False, 8),
        ("aggTrades", "ms", False, False, 7),  # futures aggTrades
    ],
)
def test_binance_variants_split_at_midnight(
    ucs: UnifiedCloudService,
    tmp_path: Path,
    kind: str,
    unit: str,
    header: bool,
    zipped: bool,
    ncol: int,
) -> None:
    path = _binance_file(tmp_path, kind, unit, header, zipped, ncol)
    report = importers.import_binance(ucs, [path], SPOT)
    assert report["kinds"][str(path)] == kind
    assert [(d["day"], d["rows"]) for d in report["days"]] == [("2024-02-29", 2), ("2024-03-01", 2)]
    d1 = readers.read_trades(ucs, "2024-02-29", SPOT)
    d2 = readers.read_trades(ucs, "2024-03-01", SPOT)
    assert d1["side"].to_list() == ["sell", "buy"]  # is_buyer_maker true → aggressor sell
    assert d2["side"].to_list() == ["sell", "buy"]
    first_id = "1000" if kind == "trades" else "500"
    assert d1["trade_id"][0] == first_id
    assert d1["ts_event"][0] == _ms("2024-02-29T23:59:58") * 1_000_000
    assert d2["ts_event"].to_list() == [_ms("2024-03-01T00:00:00") * 1_000_000] * 2
    assert d2["price"].to_list() == [62002.5, 62003.5]
    for day in ("2024-02-29", "2024-03-01"):
        keys = readers.read_instruments(ucs, day)["instrument_key"].to_list()
        assert keys == [SPOT]


def test_binance_existing_instruments_kept(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    path = _binance_file(tmp_path, "trades", "ms", True, False, 7)
    importers.import_binance(ucs, [path], SPOT)
    report = importers.import_binance(ucs, [path], "BINANCE:SPOT:ETH-USDT")
    assert {d["instrument_key"] for d in report["instruments_added"]} == {"BINANCE:SPOT:ETH-USDT"}
    keys = readers.read_instruments(ucs, "2024-02-29")["instrument_key"].to_list()
    assert keys == [SPOT, "BINANCE:SPOT:ETH-USDT"]


def test_binance_bad_inputs(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    bad_bool = tmp_path / "bad.csv"
    bad_bool.write_text("1,100.0,1.0,100.0,1709251199000,maybe\n")
    with pytest.raises(DataValidationError, match=r"bad\.csv.*is_buyer_maker.*'maybe' at row 0"):
        importers.import_binance(ucs, [bad_bool], SPOT)
    bad_price = tmp_path / "price.csv"
    bad_price.write_text("1,abc,1.0,100.0,1709251199000,true,True\n")
    with pytest.raises(DataValidationError, match=r"price\.csv.*'price'.*'abc'"):
        importers.import_binance(ucs, [bad_price], SPOT)
    zero = tmp_path / "zero.csv"
    zero.write_text("1,0,1.0,100.0,1709251199000,true,True\n")
    with pytest.raises(DataValidationError, match=r"zero\.csv.*'price'.*> 0"):
        importers.import_binance(ucs, [zero], SPOT)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataValidationError, match=r"empty\.csv.*empty"):
        importers.import_binance(ucs, [empty], SPOT)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    with pytest.raises(DataValidationError, match="exactly one CSV"):
        importers.import_binance(ucs, [two], SPOT)
    with pytest.raises(layout.LayoutError):
        importers.import_binance(ucs, [bad_bool], "../x")


def test_tardis_missing_column_and_unknown_exchange(
    ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    f = tmp_path / "t.csv"
    f.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price\nbinance,BTCUSDT,1,2,3,buy,1\n"
    )
    with pytest.raises(DataValidationError, match=r"t\.csv.*missing column.*'amount'"):
        importers.import_tardis(ucs, [f])
    f.write_text(
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\nnowhere,BTCUSDT,1,2,3,buy,1,1\n"
    )
    with pytest.raises(DataValidationError, match="unknown Tardis exchange 'nowhere'"):
        importers.import_tardis(ucs, [f])


def test_symbol_mapping() -> None:
    assert importers.tardis_instrument_key("binance-futures", "BTCUSDT") == BTC_PERP
    assert importers.tardis_instrument_key("binance", "ETHBTC") == "BINANCE:SPOT:ETH-BTC"
    assert importers.tardis_instrument_key("okex-swap", "BTC-USDT-SWAP") == "OKX:PERPETUAL:BTC-USDT"
    assert importers.tardis_instrument_key("bitmex", "XBTUSD") == "BITMEX:PERPETUAL:BTC-USD"
    assert (
        importers.tardis_instrument_key("deribit", "BTC-PERPETUAL") == "DERIBIT:PERPETUAL:BTC-USD"
    )
    with pytest.raises(DataValidationError, match="dated future"):
        importers.tardis_instrument_key("binance-futures", "BTCUSDT_240329")


def _signals_csv(tmp_path: Path, rows: list[str]) -> Path:
    f = tmp_path / "signals.csv"
    f.write_text(
        "signal_id,ts_event,instrument_key,target_position,execution_window_s,algo,limit_price\n"
        + "\n".join(rows)
        + "\n"
    )
    return f


def test_import_signals_split_by_day(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    f = _signals_csv(
        tmp_path,
        [
            f"s1,2024-02-29T23:59:00Z,{BTC_PERP},0.1,60,MARKET,",
            f"s2,2024-03-01T00:00:30Z,{BTC_PERP},0.0,30,LIMIT,",
            f"s3,2024-03-01T01:00:00Z,{BTC_PERP},-0.2,90,LIMIT,61000.5",
        ],
    )
    report = importers.import_signals(ucs, f, "strat-a")
    assert [(d["day"], d["rows"]) for d in report["days"]] == [("2024-02-29", 1), ("2024-03-01", 2)]
    s = readers.read_signals(ucs, "2024-03-01", "strat-a")
    assert s["signal_id"].to_list() == ["s2", "s3"]
    assert s["limit_price"].to_list() == [None, 61000.5]
    # parquet input, int ns timestamps, replacing with a warning
    pq_path = tmp_path / "signals.parquet"
    s.write_parquet(pq_path)
    report = importers.import_signals(ucs, pq_path, "strat-a")
    assert report["days"][0]["replaced"] is True


def test_import_signals_rejects_bad_file(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    f = _signals_csv(
        tmp_path,
        [f"s1,2024-03-01T00:01:00Z,{BTC_PERP},0.1,60,VWAP,"],
    )
    with pytest.raises(DataValidationError, match=r"signals\.csv.*'algo'.*VWAP"):
        importers.import_signals(ucs, f, "strat-a")
    with pytest.raises(layout.LayoutError, match="contains"):
        importers.import_signals(ucs, f, "bad/strategy")
    assert ucs.list_files_sync(layout.target("signals"), "signals/") == []
