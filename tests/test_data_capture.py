"""Binance websocket captures: the rebuilt book against the capture's own bookTicker, gaps, days.

The real captures (Binance USD-M and spot BTCUSDT, 2024-08-08 23:54 → 00:05) come from the
shared data folder; synthetic captures are written in the tests to provoke gaps and bad input.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.data import books, capture, importers, readers
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.storage.ucs import UnifiedCloudService

USDM = "hftbacktest_usdm_btcusdt_20240808.gz"
SPOT = ("hftbacktest_spot_btcusdt_20240808.gz", "hftbacktest_spot_btcusdt_20240809.gz")
FUT_KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
SPOT_KEY = "BINANCE:SPOT:BTC-USDT"


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(str(tmp_path / "root"))


def id_aligned(files: list[Path]) -> pl.DataFrame:
    """Every rebuilt state (after each applied message) beside the last bookTicker at or before
    its update id: bookTicker pushes every change of the top, so the two must agree."""
    cap = capture.parse_capture(files)
    seq = capture.sequence(cap)
    res = books.rebuild(capture.level_updates(cap, seq), 0)
    ids = capture.applied_update_ids(cap, seq)
    book = res.frame.with_columns(pl.Series("uid", ids[res.frame["msg"].to_numpy()]))
    ticks = capture.quotes_frame(cap).sort("u")
    return (
        book.sort("uid")
        .join_asof(
            ticks.select("u", "bid_price", "bid_size", "ask_price", "ask_size"),
            left_on="uid",
            right_on="u",
            strategy="backward",
        )
        .drop_nulls("u")
    )


def test_usdm_book_agrees_with_book_ticker(shared_data: Path) -> None:
    """Measured: 6,548 of 6,548 rebuilt states equal bookTicker (prices and sizes)."""
    j = id_aligned([shared_data / USDM])
    assert j.height > 6_000
    prices = (j["bid_price"] == j["bid_price_0"]) & (j["ask_price"] == j["ask_price_0"])
    sizes = (j["bid_size"] == j["bid_size_0"]) & (j["ask_size"] == j["ask_size_0"])
    print(
        f"\nUSD-M id-aligned agreement: prices {prices.mean():.4%}, +sizes {(prices & sizes).mean():.4%}"
    )
    assert prices.mean() == 1.0 and (prices & sizes).mean() == 1.0


def test_spot_book_agrees_with_book_ticker(shared_data: Path) -> None:
    j = id_aligned([shared_data / f for f in SPOT])
    assert j.height > 6_000
    prices = (j["bid_price"] == j["bid_price_0"]) & (j["ask_price"] == j["ask_price_0"])
    print(f"\nspot id-aligned agreement: prices {prices.mean():.4%} of {j.height}")
    assert prices.mean() >= 0.999


def reference_top(updates: books.LevelUpdates, upto_msg: int) -> tuple[list, list]:
    """An independent, obviously-correct replay (dicts) of messages 0..upto_msg."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for m in range(upto_msg + 1):
        if updates.msg_reset[m]:
            bids.clear()
            asks.clear()
        sel = np.flatnonzero(updates.msg == m)
        for i in sel:
            book = asks if updates.is_ask[i] else bids
            if updates.size[i] == 0:
                book.pop(float(updates.price[i]), None)
            else:
                book[float(updates.price[i])] = float(updates.size[i])
    b = sorted(bids.items(), reverse=True)[:10]
    a = sorted(asks.items())[:10]
    return b, a


def test_rebuild_equals_a_plain_replay(shared_data: Path) -> None:
    cap = capture.parse_capture([shared_data / USDM])
    seq = capture.sequence(cap)
    upd = capture.level_updates(cap, seq)
    res = books.rebuild(upd, 0)
    rows = res.frame.filter(pl.col("msg") == upd.msg_ts_event.size - 1)
    b, a = reference_top(upd, upd.msg_ts_event.size - 1)
    assert [rows[f"bid_price_{i}"][0] for i in range(10)] == [p for p, _ in b]
    assert [rows[f"bid_size_{i}"][0] for i in range(10)] == [s for _, s in b]
    assert [rows[f"ask_price_{i}"][0] for i in range(10)] == [p for p, _ in a]
    assert [rows[f"ask_size_{i}"][0] for i in range(10)] == [s for _, s in a]


def test_import_usdm_capture_writes_three_types(
    ucs: UnifiedCloudService, shared_data: Path
) -> None:
    report = importers.import_capture(ucs, [shared_data / USDM])
    assert report["instrument_key"] == FUT_KEY and report["market"] == "usd-m futures"
    dt = report["data_types"]
    assert dt["trades"]["rows_written"] == 21_313
    assert dt["quotes"]["rows_read"] == 66_089 and dt["quotes"]["dropped"] == {}
    assert dt["book_depth10"]["gaps"] == []
    assert dt["book_depth10"]["dropped"] == {"depth_before_first_snapshot": 4}
    book = readers.read_book_depth10(ucs, "2024-08-08", FUT_KEY)
    quotes = readers.read_quotes(ucs, "2024-08-08", FUT_KEY)
    # 100 ms throttle: never two rows in one interval of the exchange clock.
    assert (book["ts_event"] // 100_000_000).is_unique().all()
    assert (book["bid_price_9"].is_not_null()).all() and (book["ask_price_9"].is_not_null()).all()
    # Time-aligned (not id-aligned) the written book meets the quotes in force at its time.
    j = book.join_asof(
        quotes.select("ts_event", "bid_price", "ask_price"), on="ts_event", strategy="backward"
    ).drop_nulls("bid_price")
    ok = ((j["bid_price"] == j["bid_price_0"]) & (j["ask_price"] == j["ask_price_0"])).mean()
    print(f"\nUSD-M time-aligned agreement (100 ms book vs quotes): {ok:.4%} of {j.height}")
    assert ok >= 0.99
    # The capture ends 00:00:00.7: that day opens with the book in force at midnight.
    nxt = readers.read_book_depth10(ucs, "2024-08-09", FUT_KEY)
    assert nxt["ts_event"][0] == layout.day_bounds_ns("2024-08-09")[0]
    assert nxt.drop("ts_event", "ts_init").row(0) == book.drop("ts_event", "ts_init").row(-1)


def test_spot_capture_split_at_midnight(ucs: UnifiedCloudService, shared_data: Path) -> None:
    files = [shared_data / f for f in SPOT]
    report = importers.import_capture(ucs, files)
    assert report["instrument_key"] == SPOT_KEY and report["market"] == "spot"
    by = {(d["day"], d["data_type"]): d for d in report["days"]}
    assert set(by) == {(d, t) for d in ("2024-08-08", "2024-08-09") for t in layout.TICK_DATA_TYPES}
    midnight = layout.day_bounds_ns("2024-08-09")[0]
    for t in layout.TICK_DATA_TYPES:
        assert by[("2024-08-08", t)]["last_ts"] < midnight <= by[("2024-08-09", t)]["first_ts"]
    trades = [readers.read_trades(ucs, d, SPOT_KEY) for d in ("2024-08-08", "2024-08-09")]
    assert sum(t.height for t in trades) == report["data_types"]["trades"]["rows_read"]
    # One book across both files: no gap at the file boundary, the 2nd day carries the state.
    assert report["data_types"]["book_depth10"]["gaps"] == []
    assert by[("2024-08-09", "book_depth10")]["first_ts"] == midnight
    assert report["data_types"]["quotes"]["ts_event_from_local_clock"] > 0
    assert 1_000 < report["clock_offset_ms"] < 1_500


def write_capture(path: Path, lines: list[tuple[int, dict[str, Any]]]) -> Path:
    text = "\n".join(f"{ns} {json.dumps(msg, separators=(',', ':'))}" for ns, msg in lines)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def depth(E: int, U: int, u: int, pu: int, b: list, a: list, s: str = "BTCUSDT") -> dict:
    data = {"e": "depthUpdate", "E": E, "T": E, "s": s, "U": U, "u": u, "pu": pu, "b": b, "a": a}
    return {"stream": f"{s.lower()}@depth@0ms", "data": data}


def snapshot(last: int, E: int, bids: list, asks: list) -> dict:
    return {"lastUpdateId": last, "E": E, "T": E, "bids": bids, "asks": asks}


T_MS = 1_723_161_000_000  # 2024-08-08 23:50 UTC


def synthetic_lines(with_gap: bool) -> list[tuple[int, dict[str, Any]]]:
    bids = [[f"{100 - i * 0.1:.1f}", "1.0"] for i in range(12)]
    asks = [[f"{100.1 + i * 0.1:.1f}", "1.0"] for i in range(12)]
    lines = [
        (1, depth(T_MS, 5, 9, 4, [["99.0", "2"]], [])),  # before the snapshot: dropped
        (2, snapshot(10, T_MS + 1, bids, asks)),
        (3, depth(T_MS + 2, 9, 12, 8, [["100.0", "3"]], [])),  # straddles 10
    ]
    u = 12
    for k in range(1, 40):  # one diff every 50 ms
        nxt = u + 3
        pu = u + (7 if with_gap and k == 20 else 0)  # k == 20: predecessor id skips 7 updates
        lines.append((3 + k, depth(T_MS + 2 + 50 * k, u + 1, nxt, pu, [["100.0", f"{1 + k}"]], [])))
        u = nxt
    return lines


def test_sequence_gap_is_reported_and_no_book_written_across(
    ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    good = importers.import_capture(ucs, [write_capture(tmp_path / "g.gz", synthetic_lines(False))])
    assert good["data_types"]["book_depth10"]["gaps"] == []
    full = readers.read_book_depth10(ucs, "2024-08-08", FUT_KEY)
    report = importers.import_capture(
        ucs, [write_capture(tmp_path / "x.gz", synthetic_lines(True))]
    )
    stats = report["data_types"]["book_depth10"]
    assert len(stats["gaps"]) == 1
    gap = stats["gaps"][0]
    gap_ts = (T_MS + 2 + 50 * 20) * 1_000_000
    assert gap["from_ts"] == gap_ts and gap["diffs_dropped"] == 20
    assert stats["dropped"]["depth_in_sequence_gap"] == 20
    assert any("sequence gap" in w for w in report["warnings"])
    book = readers.read_book_depth10(ucs, "2024-08-08", FUT_KEY)
    assert book["ts_event"].max() < gap_ts  # nothing from the gap on
    assert full["ts_event"].max() > gap_ts
    # Before the gap both imports wrote the same states.
    assert book.equals(full.filter(pl.col("ts_event") < gap_ts))
    # The level the diffs kept raising: bid 100.0 size 1 + k, the last good k is 19.
    assert book["bid_size_0"][-1] == 20.0


def test_resync_on_a_later_snapshot(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    lines = synthetic_lines(True)
    bids = [[f"{100 - i * 0.1:.1f}", "5.0"] for i in range(12)]
    asks = [[f"{100.1 + i * 0.1:.1f}", "5.0"] for i in range(12)]
    last_u = 12 + 3 * 30  # the diff k=30 ends at this id; the snapshot lands inside k=31
    lines.insert(35, (1000, snapshot(last_u + 1, T_MS + 2 + 50 * 31, bids, asks)))
    report = importers.import_capture(ucs, [write_capture(tmp_path / "r.gz", lines)])
    stats = report["data_types"]["book_depth10"]
    assert len(stats["gaps"]) == 1 and stats["snapshots"] == 2
    book = readers.read_book_depth10(ucs, "2024-08-08", FUT_KEY)
    gap_ts = (T_MS + 2 + 50 * 20) * 1_000_000
    resync = (T_MS + 2 + 50 * 31) * 1_000_000
    ts = book["ts_event"].to_numpy()
    assert not ((ts >= gap_ts) & (ts < resync)).any()  # nothing while the book was unknown
    after = book.filter(pl.col("ts_event") >= resync)
    assert after.height > 0 and after["bid_size_1"][0] == 5.0  # from the new snapshot


def test_capture_of_another_symbol_is_refused(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    lines = synthetic_lines(False)
    lines.append((99, depth(T_MS + 5000, 1000, 1001, 999, [], [], s="ETHUSDT")))
    f = write_capture(tmp_path / "eth.gz", lines)
    with pytest.raises(DataValidationError, match="ETHUSDT.*imported as 'BTCUSDT'") as exc:
        importers.import_capture(ucs, [f], FUT_KEY)
    assert exc.value.column == "s"
    with pytest.raises(DataValidationError, match="holds symbols"):
        importers.import_capture(ucs, [f])
    assert not ucs.list_files_sync(layout.target("ticks"), "raw_tick_data/")


def test_not_a_capture(tmp_path: Path, ucs: UnifiedCloudService) -> None:
    f = tmp_path / "x.txt"
    f.write_text("hello,world\n1,2\n")
    with pytest.raises(DataValidationError, match="not a capture"):
        importers.import_capture(ucs, [f])


def test_cli_import_capture(tmp_path: Path) -> None:
    f = write_capture(tmp_path / "g.gz", synthetic_lines(True))
    root = tmp_path / "root"
    res = CliRunner().invoke(
        app, ["import", "capture", str(f), "--root", str(root), "--book-interval-ms", "0"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert (
        report["book_interval_ms"] == 0 and len(report["data_types"]["book_depth10"]["gaps"]) == 1
    )
    res = CliRunner().invoke(
        app,
        ["import", "capture", str(f), "--root", str(root), "--instrument", "BINANCE:SPOT:ETH-USDT"],
    )
    assert res.exit_code == 2 and "imported as 'ETHUSDT'" in res.output
