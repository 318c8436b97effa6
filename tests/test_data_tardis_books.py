"""Tardis quotes / book_snapshot_N / incremental_book_L2 and Binance bookTicker importers.

Every CSV is written by the test in the vendor's published layout, so the expected rows are
known exactly; the incremental book is checked against a plain dict replay of the same updates.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.data import importers, readers
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = "2024-03-01"
T_US = layout.day_bounds_ns(DAY)[0] // 1_000  # Tardis timestamps are µs


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(str(tmp_path / "root"))


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tardis_quotes(path: Path) -> Path:
    head = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"
    rows = [
        f"binance-futures,BTCUSDT,{T_US + 1000},{T_US + 1500},1.5,100.2,100.1,2.0",
        f"binance-futures,BTCUSDT,{T_US + 2000},{T_US + 2500},,,100.1,2.0",  # one-sided
        f"binance-futures,BTCUSDT,{T_US + 3000},{T_US + 3500},1.0,100.1,100.1,1.0",  # locked
        f"binance-futures,BTCUSDT,{T_US + 4000},{T_US + 4500},1.0,100.0,100.1,1.0",  # crossed
        f"binance-futures,BTCUSDT,{T_US + 5000},{T_US + 5500},0.7,100.3,100.2,0.4",
        # The next UTC day: split at midnight.
        f"binance-futures,BTCUSDT,{T_US + 86_400_000_000 + 7},{T_US + 86_400_000_000 + 9},1,101,100.9,1",
    ]
    return write(path, [head, *rows], gz=True)


def snapshot_csv(path: Path, depth: int, rows: int = 3) -> tuple[Path, list[dict[str, float]]]:
    cols = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(depth):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    lines, expect = [",".join(cols)], []
    for r in range(rows):
        vals = ["binance-futures", "BTCUSDT", str(T_US + 100_000 * r), str(T_US + 100_000 * r + 3)]
        exp: dict[str, float] = {}
        for i in range(depth):
            ap, aa = round(100.1 + r * 0.1 + i * 0.1, 1), round(1 + i + r / 10, 3)
            bp, ba = round(100.0 + r * 0.1 - i * 0.1, 1), round(2 + i + r / 10, 3)
            thin = r == 2 and i >= 3  # the last row has a thinner ask side
            vals += ["" if thin else str(ap), "" if thin else str(aa), str(bp), str(ba)]
            if i < 10:
                exp |= {f"bid_price_{i}": bp, f"bid_size_{i}": ba}
                if not thin:
                    exp |= {f"ask_price_{i}": ap, f"ask_size_{i}": aa}
        lines.append(",".join(vals))
        expect.append(exp)
    return write(path, lines), expect


def test_header_detection(tmp_path: Path) -> None:
    q = tardis_quotes(tmp_path / "q.csv.gz")
    assert importers.detect_tardis_type(importers.read_input_bytes(q), "q") == ("quotes", 0)
    for depth in (5, 10, 25):
        f, _ = snapshot_csv(tmp_path / f"s{depth}.csv", depth)
        assert importers.detect_tardis_type(f.read_bytes(), "s") == ("book_snapshot", depth)
    inc = incremental_csv(tmp_path / "i.csv", [])
    assert importers.detect_tardis_type(inc.read_bytes(), "i") == ("incremental_book_L2", 0)
    trades = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
    assert importers.detect_tardis_type(trades.encode(), "t") == ("trades", 0)
    with pytest.raises(DataValidationError, match="not a Tardis CSV of a known type"):
        importers.detect_tardis_type(b"exchange,symbol,timestamp,funding_rate\n", "x.csv")


def test_tardis_quotes_dropped_rows_reported_and_days_split(
    ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    report = importers.import_tardis_files(ucs, [tardis_quotes(tmp_path / "q.csv.gz")])
    stats = report["data_types"]["quotes"]
    assert stats["rows_read"] == 6 and stats["rows_written"] == 3
    assert stats["dropped"] == {"one_sided_or_empty": 1, "crossed_or_locked": 2}
    q = readers.read_quotes(ucs, DAY, KEY)
    assert q["ts_event"].to_list() == [(T_US + 1000) * 1000, (T_US + 5000) * 1000]
    assert q["ts_init"].to_list() == [(T_US + 1500) * 1000, (T_US + 5500) * 1000]
    assert q.row(1)[2:] == (100.2, 0.4, 100.3, 0.7)
    nxt = readers.read_quotes(ucs, "2024-03-02", KEY)
    assert nxt.height == 1 and nxt["bid_price"][0] == 100.9
    instruments = readers.read_instruments(ucs, "2024-03-02")
    assert instruments["instrument_key"].to_list() == [KEY]


@pytest.mark.parametrize("depth", [5, 10, 25])
def test_tardis_book_snapshots_keep_top_10(
    ucs: UnifiedCloudService, tmp_path: Path, depth: int
) -> None:
    f, expect = snapshot_csv(tmp_path / f"book_snapshot_{depth}.csv", depth)
    report = importers.import_tardis_files(ucs, [f])
    assert report["kinds"][str(f)] == f"book_snapshot_{depth}"
    book = readers.read_book_depth10(ucs, DAY, KEY)
    assert book.height == 3
    for r, exp in enumerate(expect):
        row = book.row(r, named=True)
        levels = {k: v for k, v in row.items() if k.startswith(("bid_", "ask_"))}
        assert {k: v for k, v in levels.items() if v is not None} == exp
    assert book["ask_price_3"][2] is None and book["bid_price_3"][2] is not None


def incremental_csv(path: Path, rows: list[tuple[int, bool, str, float, float]]) -> Path:
    head = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
    lines = [head] + [
        f"binance-futures,BTCUSDT,{T_US + t},{T_US + t + 5},{str(s).lower()},{side},{p},{a}"
        for t, s, side, p, a in rows
    ]
    return write(path, lines)


def incremental_rows() -> list[tuple[int, bool, str, float, float]]:
    """A snapshot of 12 levels a side, updates every 30 ms for 1 s, a re-snapshot at 600 ms."""
    rows: list[tuple[int, bool, str, float, float]] = [
        (-5, False, "bid", 50.0, 1.0)
    ]  # pre-snapshot
    for i in range(12):
        rows.append((0, True, "bid", round(100.0 - i * 0.5, 1), 1.0 + i))
        rows.append((0, True, "ask", round(100.5 + i * 0.5, 1), 2.0 + i))
    for k in range(1, 34):
        t = 30_000 * k
        if t == 600_000:
            for i in range(11):
                rows.append((t, True, "bid", round(99.0 - i * 0.5, 1), 7.0))
                rows.append((t, True, "ask", round(101.0 + i * 0.5, 1), 7.0))
            continue
        rows.append((t, False, "bid", 100.0, 0.0 if k % 5 == 0 else 1.0 + k))  # delete / re-add
        rows.append((t, False, "ask", round(100.5 + (k % 3) * 0.25, 2), 0.5 * k))
        rows.append((t, False, "bid", round(99.75 - (k % 4) * 0.5, 2), float(k)))
    return rows


def replay(rows: list[tuple[int, bool, str, float, float]], upto_us: int) -> dict[str, float]:
    """Plain dict replay: the top 10 after every row with t <= upto_us (snapshot runs reset)."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    started, prev_snap = False, False
    for t, snap, side, p, a in rows:
        if t > upto_us:
            break
        if snap and not prev_snap:
            book = {"bid": {}, "ask": {}}
            started = True
        prev_snap = snap
        if not started:
            continue
        if a == 0:
            book[side].pop(p, None)
        else:
            book[side][p] = a
    out: dict[str, float] = {}
    for side, rev in (("bid", True), ("ask", False)):
        for i, (p, a) in enumerate(sorted(book[side].items(), reverse=rev)[:10]):
            out |= {f"{side}_price_{i}": p, f"{side}_size_{i}": a}
    return out


@pytest.mark.parametrize("interval_ms", [0, 100])
def test_tardis_incremental_book_rebuilt(
    ucs: UnifiedCloudService, tmp_path: Path, interval_ms: int
) -> None:
    rows = incremental_rows()
    f = incremental_csv(tmp_path / "incremental_book_L2.csv", rows)
    report = importers.import_tardis_files(ucs, [f], book_interval_ms=interval_ms)
    stats = report["data_types"]["book_depth10"]
    assert stats["dropped"]["updates_before_first_snapshot"] == 1
    book = readers.read_book_depth10(ucs, DAY, KEY)
    times = (book["ts_event"] // 1_000 - T_US).to_list()
    if interval_ms == 0:
        # One row per message whose top 10 changed (the snapshot at 0, then each 30 ms update).
        assert times[0] == 0 and len(times) >= 30
    else:
        assert len(set(t // 100_000 for t in times)) == len(times)  # at most one per 100 ms
        assert len(times) == 10  # [0,100) … [900,1000) ms all change
    for r, t in enumerate(times):
        row = book.row(r, named=True)
        got = {k: v for k, v in row.items() if k.startswith(("bid_", "ask_")) and v is not None}
        assert got == replay(rows, t), f"row {r} at {t} µs"


def test_tardis_cli_detects_each_file(tmp_path: Path) -> None:
    q = tardis_quotes(tmp_path / "q.csv.gz")
    s, _ = snapshot_csv(tmp_path / "s.csv", 5)
    root = tmp_path / "root"
    res = CliRunner().invoke(app, ["import", "tardis", str(q), str(s), "--root", str(root)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["kinds"] == {str(q): "quotes", str(s): "book_snapshot_5"}
    assert set(report["data_types"]) == {"quotes", "book_depth10"}


def book_ticker_csv(rows: int = 5, header: bool = True) -> bytes:
    t0 = layout.day_bounds_ns(DAY)[0] // 1_000_000
    lines = [",".join(importers.BINANCE_BOOK_TICKER_COLUMNS)] if header else []
    for i in range(rows):
        bid = 100.0 + i * 0.1
        ask = bid + (0.0 if i == 3 else 0.1)  # row 3 is locked: dropped and counted
        lines.append(
            f"{1000 + i},{bid:.1f},{1 + i},{ask:.1f},{2 + i},{t0 + i * 10},{t0 + i * 10 + 1}"
        )
    return ("\n".join(lines) + "\n").encode()


def test_binance_book_ticker_zip(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    z = tmp_path / "BTCUSDT-bookTicker-2024-03-01.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("BTCUSDT-bookTicker-2024-03-01.csv", book_ticker_csv())
    z.write_bytes(buf.getvalue())
    report = importers.import_binance_files(ucs, [z], KEY)
    assert report["kinds"][str(z)] == "bookTicker"
    assert report["data_types"]["quotes"]["dropped"] == {"crossed_or_locked": 1}
    q = readers.read_quotes(ucs, DAY, KEY)
    t0 = layout.day_bounds_ns(DAY)[0]
    assert q["ts_event"].to_list() == [t0 + i * 10_000_000 for i in (0, 1, 2, 4)]
    assert q["ts_init"][0] == t0 + 1_000_000 and q["bid_size"].to_list() == [1, 2, 3, 5]


def test_binance_file_of_another_symbol(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    f = tmp_path / "ETHUSDT-bookTicker-2024-03-01.csv"
    f.write_bytes(book_ticker_csv())
    with pytest.raises(DataValidationError, match="named for symbol 'ETHUSDT'"):
        importers.import_binance_files(ucs, [f], KEY)
    assert not ucs.list_files_sync(layout.target("ticks"), "raw_tick_data/")


def test_bad_tardis_book_values_name_row(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    f, _ = snapshot_csv(tmp_path / "s.csv", 5)
    text = f.read_text().splitlines()
    text[2] = text[2].replace("100.1,", "abc,", 1)
    f.write_text("\n".join(text) + "\n")
    with pytest.raises(DataValidationError, match="'abc' at row 1"):
        importers.import_tardis_files(ucs, [f])
    # Levels out of order in the vendor file: the validator names the column and row.
    f2, _ = snapshot_csv(tmp_path / "s2.csv", 5)
    t2 = f2.read_text().splitlines()
    cells = t2[1].split(",")
    cells[4 + 4 * 2] = "100.05"  # asks[2].price below asks[1].price
    t2[1] = ",".join(cells)
    f2.write_text("\n".join(t2) + "\n")
    with pytest.raises(DataValidationError, match="strictly increasing") as exc:
        importers.import_tardis_files(ucs, [f2])
    assert exc.value.column == "ask_price_2" and exc.value.row == 0


def test_incremental_without_snapshot_writes_no_book(
    ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    rows = [(10 * k, False, "bid", 100.0, float(k)) for k in range(1, 6)]
    report = importers.import_tardis_files(ucs, [incremental_csv(tmp_path / "i.csv", rows)])
    stats = report["data_types"]["book_depth10"]
    assert stats["dropped"] == {"updates_before_first_snapshot": 5}
    assert stats["rows_written"] == 0 and report["days"] == []


def test_incremental_across_midnight_carries_the_state(
    ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    day_us = 86_400_000_000
    rows = [r for r in incremental_rows() if r[0] < 300_000]
    late = [(day_us - 1_000_000 + t, s, side, p, a) for t, s, side, p, a in rows]
    late.append((day_us + 250_000, False, "ask", 100.5, 9.0))  # 00:00:00.25 the next day
    report = importers.import_tardis_files(ucs, [incremental_csv(tmp_path / "m.csv", late)])
    days = [(d["day"], d["data_type"]) for d in report["days"]]
    assert days == [("2024-03-01", "book_depth10"), ("2024-03-02", "book_depth10")]
    first = readers.read_book_depth10(ucs, DAY, KEY)
    nxt = readers.read_book_depth10(ucs, "2024-03-02", KEY)
    midnight = layout.day_bounds_ns("2024-03-02")[0]
    assert nxt["ts_event"].to_list()[0] == midnight
    assert nxt.drop("ts_event", "ts_init").row(0) == first.drop("ts_event", "ts_init").row(-1)
    assert nxt["ask_size_0"][1] == 9.0
