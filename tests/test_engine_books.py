"""Fills on quote and 10-level book data: every price explained by the data the run used.

Each test computes what the fills must be independently of the engine (walking the snapshot in
force at the order's arrival, the quote in force, the prints of the tape) and holds the engine's
fills to it. The engine is the real NautilusTrader 1.231; the books come from columnar tables
shaped as ``docs/storage.md`` defines ``quotes`` and ``book_depth10``.
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _engine_data import BTC, DAY1, MS, config, instrument_row, instruments_df, signals, t, trades

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.engine import conversion as cv
from backtest_pipeline.engine.driver import DayInput, EngineInputError, run_engine
from backtest_pipeline.run.inputs import MarketDataMissing, resolve_market_data
from backtest_pipeline.run.runner import BacktestFailed, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

LATENCY_NS = 20 * MS  # the default base latency: an order reaches the venue 20 ms after its signal
TICK = 0.1


def quotes_table(rows: list[tuple[int, float, float, float, float]]) -> pa.Table:
    """rows: (ts, bid_price, bid_size, ask_price, ask_size)."""
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "ts_event": pa.array(cols[0], pa.int64()),
            "bid_price": pa.array(cols[1], pa.float64()),
            "ask_price": pa.array(cols[3], pa.float64()),
            "bid_size": pa.array(cols[2], pa.float64()),
            "ask_size": pa.array(cols[4], pa.float64()),
        }
    )


def depth_table(
    snaps: list[tuple[int, list[tuple[float, float]], list[tuple[float, float]]]],
) -> pa.Table:
    """snaps: (ts, bids best first, asks best first); missing levels are null."""
    data: dict[str, list[float | None] | list[int]] = {"ts_event": [s[0] for s in snaps]}
    for side, pos in (("bid", 1), ("ask", 2)):
        for i in range(10):
            data[f"{side}_price_{i}"] = [s[pos][i][0] if i < len(s[pos]) else None for s in snaps]  # type: ignore[index]
            data[f"{side}_size_{i}"] = [s[pos][i][1] if i < len(s[pos]) else None for s in snaps]  # type: ignore[index]
    schema = pa.schema(
        [("ts_event", pa.int64())] + [(c, pa.float64()) for c in data if c != "ts_event"]
    )
    return pa.table(data, schema=schema)


def ladder(best: float, step: float, sizes: list[float]) -> list[tuple[float, float]]:
    return [(round(best + i * step, 1), s) for i, s in enumerate(sizes)]


def run_day(
    trade_rows: list[tuple[int, float, float, str]],
    sigs: pl.DataFrame,
    kind: str,
    book: pa.Table,
    **cfg: object,
) -> pl.DataFrame:
    day = DayInput(
        DAY1,
        instruments_df(instrument_row(BTC)),
        sigs,
        {BTC: trades(trade_rows)},
        {},
        quotes={BTC: book} if kind == "quotes" else {},
        depth={BTC: book} if kind == "depth" else {},
    )
    out = run_engine(config([BTC], **cfg), [day], market_data={BTC: kind})  # type: ignore[dict-item]
    assert out.stats["orders_unresolved"] == 0
    return out.fills.sort("ts_event", "fill_id")


def walk(levels: list[tuple[float, float]], qty: float) -> tuple[float, float]:
    """(filled quantity, VWAP) of taking ``qty`` from ``levels`` best first (the test's own)."""
    left, notional, filled = qty, 0.0, 0.0
    for price, size in levels:
        take = min(left, size)
        notional += take * price
        filled += take
        left -= take
        if left <= 1e-12:
            break
    return filled, notional / filled


def vwap(fills: pl.DataFrame) -> float:
    return float((fills["price"] * fills["quantity"]).sum() / fills["quantity"].sum())


# ---- depth: L2_MBP fed OrderBookDepth10 ----------------------------------------------------


def test_depth_market_buy_walks_the_snapshot_in_force() -> None:
    asks_a = ladder(100.1, TICK, [0.5, 0.7, 1.0, 2.0, 3.0])
    asks_b = ladder(100.4, TICK, [0.2, 0.3, 5.0])  # after the order: must not be used
    book = depth_table(
        [
            (t(DAY1, 1), ladder(100.0, -TICK, [1.0, 1.0]), asks_a),
            (t(DAY1, 10) + LATENCY_NS + 1, ladder(100.3, -TICK, [1.0]), asks_b),
        ]
    )
    # A sell print at the bid just before the order arrives: on L2 it does not move the book.
    tape = [(t(DAY1, 2), 100.0, 0.2, "sell"), (t(DAY1, 10.01), 100.0, 0.3, "sell"),
            (t(DAY1, 12), 100.4, 0.1, "buy")]  # fmt: skip
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 2.0, "execution_window_s": 5.0})  # fmt: skip
    fills = run_day(tape, sigs, "depth", book)
    filled, expected = walk(asks_a, 2.0)
    assert filled == pytest.approx(2.0)
    assert fills["quantity"].sum() == pytest.approx(2.0)
    assert vwap(fills) == pytest.approx(expected, rel=1e-12)
    assert fills["price"].to_list() == [100.1, 100.2, 100.3]  # three levels walked
    assert fills["price"].min() >= asks_a[0][0]  # never below the best ask in force


def test_depth_level_is_not_filled_twice_until_a_new_snapshot() -> None:
    asks = ladder(100.1, TICK, [0.5, 1.0, 1.0])
    book = depth_table([(t(DAY1, 1), ladder(100.0, -TICK, [1.0]), asks)])
    sigs = signals(
        {"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
         "target_position": 0.4, "execution_window_s": 5.0},
        {"signal_id": "s2", "ts_event": t(DAY1, 10) + 1, "instrument_key": BTC,
         "target_position": 0.8, "execution_window_s": 5.0},
    )  # fmt: skip
    fills = run_day([(t(DAY1, 2), 100.0, 0.1, "sell")], sigs, "depth", book)
    # s2 comes before s1's fill, so it buys 0.8 on a flat position: it meets the 0.1 that s1
    # left at 100.1, then the next level (without consumption: 0.5 at 100.1, 0.3 at 100.2).
    first = fills.filter(pl.col("order_id").str.starts_with("OP-s1"))
    second = fills.filter(pl.col("order_id").str.starts_with("OP-s2"))
    assert first["price"].to_list() == [100.1]
    assert second["price"].to_list() == [100.1, 100.2]
    assert second["quantity"].to_list() == pytest.approx([0.1, 0.7])


def test_depth_remainder_beyond_the_book_is_unfilled_not_invented() -> None:
    asks = ladder(100.1, TICK, [0.5, 0.5])
    book = depth_table([(t(DAY1, 1), ladder(100.0, -TICK, [1.0]), asks)])
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 3.0, "execution_window_s": 5.0})  # fmt: skip
    day = DayInput(DAY1, instruments_df(instrument_row(BTC)), sigs,
                   {BTC: trades([(t(DAY1, 2), 100.0, 0.1, "sell")])}, {}, depth={BTC: book})  # fmt: skip
    out = run_engine(config([BTC]), [day], market_data={BTC: "depth"})
    assert out.fills["quantity"].sum() == pytest.approx(1.0)  # all the book showed, nothing more
    assert sorted(out.fills["price"].to_list()) == [100.1, 100.2]
    order = out.orders.row(0, named=True)  # closed by the window-end cancel, the rest unfilled
    assert order["status"] == "PARTIALLY_FILLED"
    assert order["rejection_reason"].startswith("venue_dropped_order")
    assert out.stats["orders_dropped_by_venue"] == 1 and out.stats["orders_unresolved"] == 0


def test_depth_queue_position_caveat_is_in_the_run_log(caplog: pytest.LogCaptureFixture) -> None:
    book = depth_table([(t(DAY1, 1), ladder(100.0, -TICK, [1.0]), ladder(100.1, TICK, [1.0]))])
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 0.1})  # fmt: skip
    with caplog.at_level("INFO", logger="backtest_pipeline.engine"):
        run_day([(t(DAY1, 2), 100.0, 0.1, "sell")], sigs, "depth", book,
                fill_model={"queue_position": True})  # fmt: skip
    assert "resets every queue position at each OrderBookDepth10 snapshot" in caplog.text


def test_depth_limit_fills_only_at_prices_the_book_or_tape_offered() -> None:
    limit = 100.1
    snaps = [
        (t(DAY1, 1), ladder(100.0, -TICK, [1.0, 1.0]), ladder(100.3, TICK, [1.0, 1.0])),
        # The ask comes down to the limit: the book offers 0.4 there.
        (t(DAY1, 20), ladder(100.0, -TICK, [1.0]), ladder(100.1, TICK, [0.4, 1.0])),
    ]
    tape = [
        (t(DAY1, 2), 100.2, 0.1, "buy"),
        (t(DAY1, 12), 100.1, 0.3, "sell"),  # a print at the limit
        (t(DAY1, 15), 100.2, 0.5, "buy"),  # above the limit: offers nothing to a buy at 100.1
    ]
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0, "execution_window_s": 30.0, "algo": "LIMIT",
                    "limit_price": limit})  # fmt: skip
    fills = run_day(tape, sigs, "depth", depth_table(snaps))
    assert fills.height >= 2
    offered = {p for ts, p, _q, side in tape if side == "sell" and p <= limit and ts > t(DAY1, 10)}
    offered |= {p for _ts, _b, asks in snaps for p, _s in asks if p <= limit}
    assert set(fills["price"].to_list()) <= offered
    assert fills["price"].max() <= limit
    # From the tape, at most the print's size; from the book, at most what the level showed.
    by_ts = dict(zip(fills["ts_event"].to_list(), fills["quantity"].to_list(), strict=True))
    assert by_ts[t(DAY1, 12)] == pytest.approx(0.3)
    assert by_ts[t(DAY1, 20)] == pytest.approx(0.4)


def test_limit_below_everything_offered_never_fills() -> None:
    snaps = [(t(DAY1, 1), ladder(100.0, -TICK, [1.0]), ladder(100.2, TICK, [1.0]))]
    tape = [(t(DAY1, 12), 100.0, 0.3, "sell"), (t(DAY1, 14), 100.2, 0.3, "buy")]
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0, "execution_window_s": 30.0, "algo": "LIMIT",
                    "limit_price": 99.9})  # fmt: skip
    assert run_day(tape, sigs, "depth", depth_table(snaps)).height == 0


# ---- quotes: L1_MBP fed QuoteTick ---------------------------------------------------------


def test_quotes_market_buy_crosses_the_spread_even_after_a_sell_print() -> None:
    """Nautilus moves an L1 book to every trade; the re-stated quote keeps the ask in force."""
    bid, ask, ask_size = 100.0, 100.5, 0.4
    book = quotes_table([(t(DAY1, 1), bid, 1.0, ask, ask_size)])
    # A sell print at the bid 5 ms before the order arrives (the book it leaves: 100.0 both sides).
    tape = [(t(DAY1, 2), bid, 0.2, "sell"), (t(DAY1, 10.015), bid, 0.3, "sell")]
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0, "execution_window_s": 5.0})  # fmt: skip
    fills = run_day(tape, sigs, "quotes", book)
    assert fills["price"].min() >= ask
    # Nautilus's L1 rule: the displayed size at the ask, the rest one tick worse.
    assert fills["price"].to_list() == [ask, round(ask + TICK, 1)]
    assert fills["quantity"].to_list() == pytest.approx([ask_size, 1.0 - ask_size])


def test_quotes_restated_after_each_trade_only_where_needed() -> None:
    q = cv.QuoteColumns(
        bid_price=np.array([1.0, 2.0]), ask_price=np.array([1.5, 2.5]),
        bid_size=np.array([1.0, 1.0]), ask_size=np.array([2.0, 2.0]),
        ts_event=np.array([10, 20], dtype=np.uint64), ts_init=np.array([10, 20], dtype=np.uint64),
    )  # fmt: skip
    out = cv.quotes_restored_after_trades(q, np.array([5, 12, 12, 20, 25], dtype=np.uint64))
    # 5: before any quote; 12 (twice): the quote of 10; 20: has its own quote; 25: the one of 20.
    assert out.ts_event.tolist() == [10, 12, 20, 25]
    assert out.bid_price.tolist() == [1.0, 1.0, 2.0, 2.0]
    assert out.ask_size.tolist() == [2.0, 2.0, 2.0, 2.0]


def test_quotes_limit_fills_at_the_limit_from_the_tape() -> None:
    book = quotes_table([(t(DAY1, 1), 100.0, 1.0, 100.5, 1.0)])
    tape = [(t(DAY1, 2), 100.0, 0.1, "sell"), (t(DAY1, 12), 100.1, 0.3, "sell"),
            (t(DAY1, 13), 100.3, 0.3, "buy")]  # fmt: skip
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0, "execution_window_s": 20.0, "algo": "LIMIT",
                    "limit_price": 100.1})  # fmt: skip
    fills = run_day(tape, sigs, "quotes", book)
    assert fills["price"].to_list() == [100.1]
    assert fills["quantity"].to_list() == pytest.approx([0.3])


def test_engine_refuses_a_day_without_the_data_its_instrument_runs_on() -> None:
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0})  # fmt: skip
    day = DayInput(DAY1, instruments_df(instrument_row(BTC)), sigs,
                   {BTC: trades([(t(DAY1, 2), 100.0, 0.1, "sell")])}, {})  # fmt: skip
    with pytest.raises(EngineInputError, match="runs on depth but the inputs of 2024-01-01"):
        run_engine(config([BTC]), [day], market_data={BTC: "depth"})


# ---- conversion ----------------------------------------------------------------------------


def test_struct_path_equals_nautilus_constructors() -> None:
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    inst = TestInstrumentProvider.btcusdt_perp_binance()
    rng = np.random.default_rng(7)
    n = 500
    mid = 60_000 + np.cumsum(rng.normal(0, 1, n)).round(1)
    ts = (np.arange(n, dtype=np.uint64) * np.uint64(100 * MS)) + np.uint64(t(DAY1, 0))
    q = cv.QuoteColumns(bid_price=mid - 0.1, ask_price=mid + 0.1,
                        bid_size=rng.uniform(0.001, 5, n).round(3),
                        ask_size=rng.uniform(0.001, 5, n).round(3), ts_event=ts, ts_init=ts)  # fmt: skip
    fast = cv.quotes_to_ticks(inst, q)
    ref = cv.nautilus_quotes(inst, q)
    assert not cv.fast_path_disabled
    assert [(a.bid_price, a.ask_price, a.bid_size, a.ask_size, a.ts_event) for a in fast] == [
        (b.bid_price, b.ask_price, b.bid_size, b.ask_size, b.ts_event) for b in ref
    ]
    bp = mid[:, None] - 0.1 - np.arange(10) * 0.1
    ap = mid[:, None] + 0.1 + np.arange(10) * 0.1
    bs, az = rng.uniform(0.001, 5, (n, 10)).round(3), rng.uniform(0.001, 5, (n, 10)).round(3)
    bp[::3, 4:], bs[::3, 4:] = np.nan, np.nan  # shallow books: null levels
    d = cv.DepthColumns(bp, bs, ap, az, ts, ts)
    fast_d, ref_d = cv.depths_to_snapshots(inst, d), cv.nautilus_depths(inst, d)
    assert not cv.fast_path_disabled
    assert [(a.bids, a.asks, a.bid_counts, a.flags, a.ts_event) for a in fast_d] == [
        (b.bids, b.asks, b.bid_counts, b.flags, b.ts_event) for b in ref_d
    ]


# ---- resolving the data type from storage, and a whole run on depth --------------------------


def _put(ucs: UnifiedCloudService, path: str, table: pa.Table, row_group_size: int = 50) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size, write_statistics=["ts_event"])
    ucs.upload_to_gcs_sync(layout.target("ticks"), path, buf.getvalue())


def _books_from_trades(trade_table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Quotes and snapshots around the sample trades: once a second, the touch at the last print."""
    df = pl.from_arrow(trade_table).select(pl.col("ts_event").cast(pl.Int64), "price")
    assert isinstance(df, pl.DataFrame)
    sec = (
        df.with_columns((pl.col("ts_event") // 1_000_000_000).alias("s"))
        .group_by("s", maintain_order=True)
        .agg(pl.col("ts_event").last(), pl.col("price").last())
    )
    ts = sec["ts_event"].to_numpy()
    px = np.round(sec["price"].to_numpy(), 1)
    snaps = [
        (int(a), ladder(p - TICK, -TICK, [0.3 + 0.1 * i for i in range(10)]),
         ladder(p + TICK, TICK, [0.2 + 0.1 * i for i in range(10)]))
        for a, p in zip(ts, px, strict=True)
    ]  # fmt: skip
    quotes = quotes_table([(int(a), round(p - TICK, 1), 0.3, round(p + TICK, 1), 0.2)
                           for a, p in zip(ts, px, strict=True)])  # fmt: skip
    return quotes, depth_table(snaps)


@pytest.fixture
def book_store(local_ucs: UnifiedCloudService) -> tuple[UnifiedCloudService, list[date]]:
    generate_sample_data(local_ucs, DAY1, 2, trades_per_day=40_000, seed=3)
    days = layout.days_between(DAY1, date(2024, 1, 2))
    for d in days:
        tr = local_ucs.download_from_gcs_sync(layout.target("ticks"), layout.trades_path(d, BTC))
        quotes, depth = _books_from_trades(tr.to_arrow() if isinstance(tr, pl.DataFrame) else tr)
        _put(local_ucs, layout.quotes_path(d, BTC), quotes)
        _put(local_ucs, layout.book_depth10_path(d, BTC), depth)
    return local_ucs, days


def test_auto_picks_depth_when_present_and_quotes_when_a_day_lacks_it(
    book_store: tuple[UnifiedCloudService, list[date]],
) -> None:
    ucs, days = book_store
    cfg = config([BTC], strategy_id="demo-strategy")
    assert resolve_market_data(ucs, cfg, days) == {BTC: "depth"}
    ucs.delete_sync(layout.target("ticks"), layout.book_depth10_path(days[1], BTC))
    assert resolve_market_data(ucs, cfg, days) == {BTC: "quotes"}
    with pytest.raises(MarketDataMissing, match=r"depth asked for.*data_type-book_depth10/"
                       + BTC + r"\.parquet"):  # fmt: skip
        resolve_market_data(ucs, config([BTC], market_data="depth"), days)
    assert resolve_market_data(ucs, config([BTC], market_data="trades"), days) == {BTC: "trades"}


@pytest.mark.parametrize("mode", ["depth", "quotes"])
def test_run_market_orders_never_through_the_touch_in_force(
    book_store: tuple[UnifiedCloudService, list[date]], mode: str
) -> None:
    ucs, days = book_store
    cfg = config(
        [BTC], strategy_id="demo-strategy", market_data="auto" if mode == "depth" else mode
    )
    res = run_backtest(cfg, days[0], days[-1], ucs=ucs, write_results=False)
    assert res.summary["execution_stats"]["market_data"] == {BTC: mode}
    assert res.summary["execution_stats"]["venue_books"] == {
        "BINANCE-FUTURES": {
            "market_data": mode,
            "book_type": "L2_MBP" if mode == "depth" else "L1_MBP",
            "liquidity_consumption": mode == "depth",
            "queue_position": mode == "quotes",
        }
    }
    data_type = "book_depth10" if mode == "depth" else "quotes"
    paths = [i["path"] for i in res.summary["inputs"] if f"data_type-{data_type}/" in i["path"]]
    assert len(paths) == len(days)
    ops = res.operations.filter(pl.col("status") != "REJECTED")
    assert ops.height > 0 and ops["market_data"].unique().to_list() == [mode]
    # Arrival is the book's mid, with its spread (two ticks around the last print here).
    spread = ops["arrival_spread_bps"].drop_nulls().to_numpy()
    mid = ops.filter(pl.col("arrival_spread_bps").is_not_null())["arrival_price"].to_numpy()
    assert spread.size > 0 and np.allclose(spread, 2 * TICK / mid * 1e4)
    fills = res.fills.join(res.orders.select("order_id", "order_type"), on="order_id")
    market = fills.filter(pl.col("order_type") == "MARKET")
    assert market.height > 0
    ask_col, bid_col = (
        ("ask_price_0", "bid_price_0") if mode == "depth" else ("ask_price", "bid_price")
    )
    # The touch in force at each fill, from the stored book itself (no engine involved).
    for d in days:
        raw = ucs.download_from_gcs_sync(
            layout.target("ticks"), layout.tick_path(d, BTC, data_type)
        )
        book = raw if isinstance(raw, pl.DataFrame) else pl.from_arrow(raw)
        assert isinstance(book, pl.DataFrame)
        lo, hi = layout.day_bounds_ns(d)
        day_fills = market.filter(pl.col("ts_event").is_between(lo, hi - 1))
        book_ts = book["ts_event"].cast(pl.Int64).to_numpy()
        fill_ts = day_fills["ts_event"].cast(pl.Int64).to_numpy()
        idx = np.searchsorted(book_ts, fill_ts, side="right") - 1
        assert (idx >= 0).all()
        best_ask = book[ask_col].to_numpy()[idx]
        best_bid = book[bid_col].to_numpy()[idx]
        buys = day_fills["side"].to_numpy() == "BUY"
        px = day_fills["price"].to_numpy()
        assert (px[buys] >= best_ask[buys]).all()
        assert (px[~buys] <= best_bid[~buys]).all()


def test_run_asking_for_missing_quotes_fails_naming_the_objects(
    local_ucs: UnifiedCloudService,
) -> None:
    generate_sample_data(local_ucs, DAY1, 1, trades_per_day=5_000, seed=1)
    cfg = config([BTC], strategy_id="demo-strategy", market_data="quotes")
    with pytest.raises(BacktestFailed, match=r"quotes asked for.*data_type-quotes/" + BTC):
        run_backtest(cfg, DAY1, DAY1, ucs=local_ucs, write_results=False)


@pytest.mark.parametrize("queue", [None, False])
def test_quotes_limit_at_the_bid_waits_behind_the_displayed_size(queue: bool | None) -> None:
    """Default on quotes: the queue ahead is the bid size shown when the order arrived."""
    book = quotes_table([(t(DAY1, 1), 100.0, 1.0, 100.5, 1.0)])
    tape = [(t(DAY1, 2), 100.0, 0.1, "sell")] + [
        (t(DAY1, s), 100.0, 0.6, "sell") for s in (12, 13, 14)
    ]
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 0.5, "execution_window_s": 20.0, "algo": "LIMIT",
                    "limit_price": 100.0})  # fmt: skip
    fills = run_day(tape, sigs, "quotes", book, fill_model={"queue_position": queue})
    assert fills["quantity"].sum() == pytest.approx(0.5)
    assert set(fills["price"].to_list()) == {100.0}
    if queue is None:  # 1.0 ahead: the first 0.6 print only works the queue down
        assert fills["ts_event"].min() > t(DAY1, 12)
    else:  # no queue: the first print at the limit fills it
        assert fills["ts_event"].min() == t(DAY1, 12)


# ---- the real capture: Binance USD-M BTCUSDT, 2024-08-08 23:54 → 23:59:59 UTC --------------

CAPTURE = "hftbacktest_usdm_btcusdt_20240808.gz"
CAPTURE_DAY = date(2024, 8, 8)


def _capture_streams(path: str) -> tuple[pa.Table, pa.Table]:
    """The capture's trades and bookTicker quotes, at exchange time (the test's own parser)."""
    raw = pl.read_csv(path, has_header=False, separator="\n", new_columns=["line"], quote_char=None)
    msg = raw.select(pl.col("line").str.splitn(" ", 2).struct.field("field_1").alias("j"))
    lo, hi = layout.day_bounds_ns(CAPTURE_DAY)
    ms = pl.col("T").cast(pl.Int64) * 1_000_000
    tr = (
        msg.filter(pl.col("j").str.contains('"e":"trade"', literal=True))
        .select(pl.col("j").str.json_path_match(f"$.data.{k}").alias(k) for k in "Tptqm")
        .select(
            ms.alias("ts_event"),
            pl.col("t").alias("trade_id"),
            pl.col("p").cast(pl.Float64).alias("price"),
            pl.col("q").cast(pl.Float64).alias("size"),
            pl.when(pl.col("m") == "true")
            .then(pl.lit("sell"))
            .otherwise(pl.lit("buy"))
            .alias("side"),
        )  # fmt: skip
        .filter(pl.col("ts_event").is_between(lo, hi - 1))
        .sort("ts_event", maintain_order=True)
    )
    q = (
        msg.filter(pl.col("j").str.contains('"e":"bookTicker"', literal=True))
        .select(pl.col("j").str.json_path_match(f"$.data.{k}").alias(k) for k in "TbBaA")
        .select(
            ms.alias("ts_event"),
            *(
                pl.col(k).cast(pl.Float64).alias(n)
                for k, n in (
                    ("b", "bid_price"),
                    ("a", "ask_price"),
                    ("B", "bid_size"),
                    ("A", "ask_size"),
                )
            ),
        )  # fmt: skip
        .filter(pl.col("ts_event").is_between(lo, hi - 1))
        .sort("ts_event", maintain_order=True)
    )
    return tr.to_arrow(), q.to_arrow()


def test_real_capture_market_orders_meet_the_quote_in_force(shared_data: object) -> None:
    from pathlib import Path

    path = Path(str(shared_data)) / CAPTURE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    trade_table, quote_table = _capture_streams(str(path))
    t0 = int(quote_table.column("ts_event")[0].as_py())
    rows = []
    for i in range(18):  # market orders every ~15 s, alternating sides, growing past the top size
        target = (1 if i % 2 == 0 else -1) * (0.5 + 1.5 * (i % 4))
        rows.append({"signal_id": f"m{i}", "ts_event": t0 + (10 + 15 * i) * 1_000_000_000,
                     "instrument_key": BTC, "target_position": target,
                     "execution_window_s": 5.0})  # fmt: skip
    sigs = signals(*rows)
    day = DayInput(CAPTURE_DAY, instruments_df(instrument_row(BTC)), sigs, {BTC: trade_table},
                   {}, quotes={BTC: quote_table})  # fmt: skip
    out = run_engine(config([BTC], full_day=True), [day], market_data={BTC: "quotes"})
    fills = out.fills
    assert fills.height >= 18 and out.stats["orders_unresolved"] == 0
    q = pl.from_arrow(quote_table)
    assert isinstance(q, pl.DataFrame)
    qts = q["ts_event"].to_numpy()
    by_order = fills.group_by("order_id", maintain_order=True).agg(
        pl.col("side").first(), pl.col("ts_event").first(), pl.col("price"), pl.col("quantity")
    )
    walked = 0
    for oid, side, ts, prices, qtys in by_order.iter_rows():
        i = int(np.searchsorted(qts, ts, side="right")) - 1  # the quote in force at arrival
        bid, ask = float(q["bid_price"][i]), float(q["ask_price"][i])
        top = float(q["ask_size"][i] if side == "BUY" else q["bid_size"][i])
        if side == "BUY":
            assert min(prices) >= ask, (oid, prices, ask)
        else:
            assert max(prices) <= bid, (oid, prices, bid)
        # Nautilus's L1 rule, computed here: the displayed size at the touch, the rest one
        # tick worse.
        total = sum(qtys)
        touch = ask if side == "BUY" else bid
        worse = round(touch + (TICK if side == "BUY" else -TICK), 1)
        first = min(total, top)
        expected = (first * touch + (total - first) * worse) / total
        got = sum(p * x for p, x in zip(prices, qtys, strict=True)) / total
        assert got == pytest.approx(expected, rel=1e-12), oid
        walked += total > top
    assert walked >= 3  # some orders were larger than the displayed size


def _capture_depth(path: str) -> pa.Table:
    """10-level snapshots rebuilt from the capture's REST snapshot and ``@depth`` diffs.

    The test's own rebuild (Binance USD-M rules: drop diffs with ``u < lastUpdateId``, the first
    applied has ``U <= lastUpdateId <= u``, then each ``pu`` is the previous ``u``), one snapshot
    after every applied diff, stamped with the diff's transaction time.
    """
    import gzip
    import heapq
    import json

    book: dict[str, dict[float, float]] = {"b": {}, "a": {}}
    last_id: int | None = None
    prev_u: int | None = None
    snaps: list[tuple[int, list[tuple[float, float]], list[tuple[float, float]]]] = []
    lo, hi = layout.day_bounds_ns(CAPTURE_DAY)
    diffs: list[dict] = []  # buffered from the stream's start, as Binance's procedure says
    with gzip.open(path, "rt") as f:
        for line in f:
            body = json.loads(line.split(" ", 1)[1])
            if "lastUpdateId" in body:
                last_id = body["lastUpdateId"]
                for side, key in (("b", "bids"), ("a", "asks")):
                    book[side] = {float(p): float(q) for p, q in body[key] if float(q) > 0}
            elif body.get("data", {}).get("e") == "depthUpdate":
                diffs.append(body["data"])
    assert last_id is not None
    for data in diffs:
        if data["u"] < last_id:
            continue
        if prev_u is None:
            assert data["U"] <= last_id <= data["u"]
        else:
            assert data["pu"] == prev_u, "sequence gap in the capture"
        prev_u = data["u"]
        for side in ("b", "a"):
            for p, q in data[side]:
                if float(q) == 0:
                    book[side].pop(float(p), None)
                else:
                    book[side][float(p)] = float(q)
        ts = data["T"] * 1_000_000
        if lo <= ts < hi:
            bids = heapq.nlargest(10, book["b"].items())
            asks = heapq.nsmallest(10, book["a"].items())
            snaps.append((ts, bids, asks))
    assert snaps and prev_u is not None
    return depth_table(snaps)


@pytest.mark.slow  # the rebuild from 6,551 diffs on a 1,000-level snapshot takes ~5 s here
def test_real_capture_market_orders_walk_the_rebuilt_book(shared_data: object) -> None:
    from pathlib import Path

    path = Path(str(shared_data)) / CAPTURE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    trade_table, _quotes = _capture_streams(str(path))
    depth = _capture_depth(str(path))
    d = pl.from_arrow(depth)
    assert isinstance(d, pl.DataFrame)
    t0 = int(d["ts_event"][0])
    rows = []
    for i in range(18):
        target = (1 if i % 2 == 0 else -1) * (0.5 + 2.5 * (i % 4))
        rows.append({"signal_id": f"m{i}", "ts_event": t0 + (10 + 15 * i) * 1_000_000_000,
                     "instrument_key": BTC, "target_position": target,
                     "execution_window_s": 5.0})  # fmt: skip
    day = DayInput(CAPTURE_DAY, instruments_df(instrument_row(BTC)), signals(*rows),
                   {BTC: trade_table}, {}, depth={BTC: depth})  # fmt: skip
    out = run_engine(config([BTC], full_day=True), [day], market_data={BTC: "depth"})
    assert out.stats["orders_unresolved"] == 0
    dts = d["ts_event"].to_numpy()
    by_order = out.fills.group_by("order_id", maintain_order=True).agg(
        pl.col("side").first(), pl.col("ts_event").first(), pl.col("price"), pl.col("quantity")
    )
    assert by_order.height == 18
    walked = 0
    for oid, side, ts, prices, qtys in by_order.iter_rows():
        i = int(np.searchsorted(dts, ts, side="right")) - 1  # the snapshot in force at arrival
        s = "ask" if side == "BUY" else "bid"
        levels = [
            (float(d[f"{s}_price_{k}"][i]), float(d[f"{s}_size_{k}"][i]))
            for k in range(10)
            if d[f"{s}_price_{k}"][i] is not None
        ]
        total = sum(qtys)
        if side == "BUY":
            assert min(prices) >= levels[0][0], (oid, prices, levels[0])
        else:
            assert max(prices) <= levels[0][0], (oid, prices, levels[0])
        filled, expected = walk(levels, total)
        assert filled == pytest.approx(total)
        got = sum(p * x for p, x in zip(prices, qtys, strict=True)) / total
        assert got == pytest.approx(expected, rel=1e-12), oid
        walked += len(set(prices)) > 1
    assert walked >= 3  # several orders took more than the best level


def test_outputs_carry_exact_prices_and_null_entry_when_flat(
    book_store: tuple[UnifiedCloudService, list[date]],
) -> None:
    """fills/positions: prices are the decimal's nearest double; flat rows have no entry price."""
    from decimal import Decimal

    from backtest_pipeline.run.runner import result_tables

    ucs, days = book_store
    res = run_backtest(config([BTC], strategy_id="demo-strategy", market_data="trades"),
                       days[0], days[-1], ucs=ucs, write_results=False)  # fmt: skip
    tables = result_tables(res)
    fills, positions = tables["fills.parquet"], tables["positions.parquet"]
    prices = fills.column("price").to_pylist()
    assert prices and all(p == float(Decimal(repr(p)).quantize(Decimal("0.1"))) for p in prices)
    pos = pl.from_arrow(positions)
    assert isinstance(pos, pl.DataFrame)
    flat = pos.filter(pl.col("quantity") == 0.0)
    assert flat.height > 0 and flat["avg_entry_price"].null_count() == flat.height
    assert pos.filter(pl.col("avg_entry_price").is_nan()).height == 0
    assert pos.filter(pl.col("quantity") != 0.0)["avg_entry_price"].null_count() == 0


def test_interval_read_starts_from_the_quote_in_force_in_an_earlier_row_group(
    local_ucs: UnifiedCloudService,
) -> None:
    from backtest_pipeline.run.inputs import fetch_ticks

    n = 20_000  # one quote every 0.1 s up to 2,000 s, in row groups of 1,000
    rows = [(t(DAY1, 0.1 * i), 100.0, 1.0, 100.1 + 0.1 * (i % 3), 1.0) for i in range(1, n + 1)]
    rows.append((t(DAY1, 5000), 101.0, 1.0, 101.1, 1.0))
    _put(local_ucs, layout.quotes_path(DAY1, BTC), quotes_table(rows), row_group_size=1000)
    window = [(t(DAY1, 3000), t(DAY1, 3100))]  # no quote inside: the book is the last before it
    table, record = fetch_ticks(local_ucs, DAY1, BTC, "quotes", window, needed_by=1)
    assert table.column("ts_event").to_pylist() == [rows[n - 1][0]]
    assert table.column("ask_price").to_pylist() == [rows[n - 1][3]]
    assert 0 < record.bytes_read < record.bytes_total
    plain = local_ucs.download_from_gcs_streaming_sync(
        layout.target("ticks"), layout.quotes_path(DAY1, BTC), timestamp_range=window,
        include_prior=True,
    )  # fmt: skip
    assert plain.table.num_rows == 0  # what the trades' rule would have given: an empty book


def test_auto_keeps_one_book_type_per_venue(local_ucs: UnifiedCloudService) -> None:
    """Nautilus's book type is per venue: depth only where every instrument of the venue has it."""
    eth, bybit = "BINANCE-FUTURES:PERPETUAL:ETH-USDT", "BYBIT:PERPETUAL:BTC-USDT"
    tgt = layout.target("ticks")
    for key, kinds in ((BTC, ("depth", "quotes")), (eth, ()), (bybit, ("depth",))):
        local_ucs.upload_to_gcs_sync(tgt, layout.trades_path(DAY1, key), b"x")
        for kind in kinds:
            path = layout.book_depth10_path if kind == "depth" else layout.quotes_path
            local_ucs.upload_to_gcs_sync(tgt, path(DAY1, key), b"x")
    got = resolve_market_data(local_ucs, config([BTC, eth, bybit]), [DAY1])
    assert got == {BTC: "quotes", eth: "trades", bybit: "depth"}


def test_real_capture_imported_and_run_on_its_rebuilt_book(
    shared_data: object, local_ucs: UnifiedCloudService, tmp_path: object
) -> None:
    """The capture through the product's importer and a whole run: every fill explained.

    Market orders: never through the touch and their VWAP equal to walking the stored snapshot
    in force at arrival. Limit orders: only at prices the stored book or the tape offered at or
    through the limit during the order's life.
    """
    from pathlib import Path

    from backtest_pipeline.data.importers import import_capture, import_signals

    path = Path(str(shared_data)) / CAPTURE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    import_capture(local_ucs, [path])
    t_ticks = layout.target("ticks")
    raw = local_ucs.download_from_gcs_sync(t_ticks, layout.book_depth10_path(CAPTURE_DAY, BTC))
    book = raw if isinstance(raw, pl.DataFrame) else pl.from_arrow(raw)
    raw_t = local_ucs.download_from_gcs_sync(t_ticks, layout.trades_path(CAPTURE_DAY, BTC))
    tape = raw_t if isinstance(raw_t, pl.DataFrame) else pl.from_arrow(raw_t)
    assert isinstance(book, pl.DataFrame) and isinstance(tape, pl.DataFrame)
    book = book.with_columns(pl.col("ts_event").cast(pl.Int64))
    tape = tape.with_columns(pl.col("ts_event").cast(pl.Int64))
    t0 = int(book["ts_event"][0])
    rows: list[dict[str, object]] = []
    position = 0.0
    for i in range(16):  # every 20 s: market orders of 0.5–8 BTC, a passive limit every 4th
        ts = t0 + (8 + 20 * i) * 1_000_000_000
        step = (1 if i % 2 == 0 else -1) * (0.5 + 2.5 * (i % 4))
        algo, limit = "MARKET", None
        if i % 4 == 3:
            j = int(np.searchsorted(book["ts_event"].to_numpy(), ts, side="right")) - 1
            algo, step = "LIMIT", 1.0
            limit = float(book["bid_price_0"][j])  # join the bid: fills only if the market comes
        position += step
        rows.append({"signal_id": f"c{i}", "ts_event": ts, "instrument_key": BTC,
                     "target_position": position, "execution_window_s": 10.0, "algo": algo,
                     "limit_price": limit})  # fmt: skip
    sig_file = Path(str(tmp_path)) / "signals.parquet"
    signals(*rows).write_parquet(sig_file)
    import_signals(local_ucs, sig_file, "capture")
    cfg = config([BTC], strategy_id="capture")
    res = run_backtest(cfg, CAPTURE_DAY, CAPTURE_DAY, ucs=local_ucs, write_results=False)
    assert res.summary["execution_stats"]["market_data"] == {BTC: "depth"}
    assert res.summary["execution_stats"]["orders_unresolved"] == 0
    fills = res.fills.join(
        res.orders.select("order_id", "order_type", pl.col("price").alias("limit")), on="order_id"
    ).with_columns(pl.col("ts_event").cast(pl.Int64))
    book_ts = book["ts_event"].to_numpy()
    walked = checked_limits = 0
    for (oid,), part in fills.group_by(["order_id"], maintain_order=True):
        side, kind = part["side"][0], part["order_type"][0]
        s = "ask" if side == "BUY" else "bid"
        prices, qtys = part["price"].to_list(), part["quantity"].to_list()
        if kind == "MARKET":
            i = int(np.searchsorted(book_ts, int(part["ts_event"][0]), side="right")) - 1
            levels = [(float(book[f"{s}_price_{k}"][i]), float(book[f"{s}_size_{k}"][i]))
                      for k in range(10) if book[f"{s}_price_{k}"][i] is not None]  # fmt: skip
            touch = levels[0][0]
            assert (min(prices) >= touch) if side == "BUY" else (max(prices) <= touch), oid
            total = sum(qtys)
            filled, expected = walk(levels, total)
            assert filled == pytest.approx(total), oid
            got = sum(p * q for p, q in zip(prices, qtys, strict=True)) / total
            assert got == pytest.approx(expected, rel=1e-12), oid
            walked += len(set(prices)) > 1
        else:
            limit = float(part["limit"][0])
            order = res.orders.filter(pl.col("order_id") == oid).row(0, named=True)
            lo, hi = int(order["created_at"]), int(part["ts_event"].max())
            life_tape = tape.filter(pl.col("ts_event").is_between(lo, hi))
            life_book = book.filter(pl.col("ts_event").is_between(lo - 10**10, hi))
            through = (pl.col("price") <= limit) if side == "BUY" else (pl.col("price") >= limit)
            offered = set(life_tape.filter(through)["price"].to_list())
            for k in range(10):
                col = life_book[f"{s}_price_{k}"].drop_nulls()
                offered |= {
                    p for p in col.to_list() if (p <= limit if side == "BUY" else p >= limit)
                }
            assert set(prices) <= offered, (oid, prices, limit)
            checked_limits += 1
    assert walked >= 3
    assert checked_limits >= 1


def test_a_custom_day_loader_is_handed_the_resolved_market_data(
    book_store: tuple[UnifiedCloudService, list[date]],
) -> None:
    """A day loader (the Dagster path's catalog reader) replays what `backtest run` replays."""
    from backtest_pipeline.run.inputs import load_day

    ucs, days = book_store
    seen: list[object] = []

    def loader(u: UnifiedCloudService, cfg: BacktestConfig, day: date, **kw: object):  # type: ignore[no-untyped-def]
        seen.append(kw.get("market_data"))
        return load_day(u, cfg, day, **kw)  # type: ignore[arg-type]

    cfg = config([BTC], strategy_id="demo-strategy")
    res = run_backtest(cfg, days[0], days[0], ucs=ucs, write_results=False, day_loader=loader)
    direct = run_backtest(cfg, days[0], days[0], ucs=ucs, write_results=False)
    assert seen == [{BTC: "depth"}]
    assert res.summary["execution_stats"]["market_data"] == {BTC: "depth"}
    assert res.fills.equals(direct.fills) and res.fills.height > 0


def test_day_windows_carry_each_book_row_once_within_its_window() -> None:
    from backtest_pipeline.config import FeeOverride
    from backtest_pipeline.engine.driver import PreparedDay
    from backtest_pipeline.engine.instruments import build_instrument

    tr = trades([(t(DAY1, s), 100.0, 0.1, "buy") for s in range(1, 40)])
    snaps = [(t(DAY1, 0.5 + s), ladder(99.9, -TICK, [1.0]), ladder(100.1, TICK, [1.0]))
             for s in range(0, 40, 3)]  # fmt: skip
    depth = cv.depth_columns(depth_table(snaps))
    inst = {BTC: build_instrument(instrument_row(BTC), FeeOverride())}
    lo_day, hi_day = layout.day_bounds_ns(DAY1)
    prepared = PreparedDay({BTC: tr}, inst, lo_day, hi_day, {BTC: depth})
    windows = list(prepared.windows(7))
    assert len(windows) > 3
    seen = []
    for lo, hi, ticks, books in windows:
        for obj in books.get(BTC, []):
            assert lo <= obj.ts_event < hi
            seen.append(obj.ts_event)
        for obj in ticks.get(BTC, []):
            assert lo <= obj.ts_event < hi
    assert seen == [s[0] for s in snaps]


@pytest.mark.parametrize("mode", ["quotes", "depth"])
def test_a_crossing_book_fills_a_resting_limit_as_documented(mode: str) -> None:
    """Pins the documented difference: L1 fills a crossed limit whole, L2 what the level shows."""
    if mode == "quotes":
        book = quotes_table([(t(DAY1, 1), 100.0, 1.0, 100.5, 1.0),
                             (t(DAY1, 15), 99.9, 1.0, 100.0, 0.4)])  # fmt: skip
    else:
        book = depth_table([(t(DAY1, 1), ladder(100.0, -TICK, [1.0]), ladder(100.5, TICK, [1.0])),
                            (t(DAY1, 15), ladder(99.9, -TICK, [1.0]), ladder(100.0, TICK, [0.4]))])  # fmt: skip
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.0, "execution_window_s": 20.0, "algo": "LIMIT",
                    "limit_price": 100.1})  # fmt: skip
    fills = run_day([(t(DAY1, 2), 100.0, 0.1, "sell")], sigs, mode, book)
    assert fills["ts_event"].unique().to_list() == [t(DAY1, 15)]
    assert fills["price"].max() <= 100.1
    assert fills["quantity"].sum() == pytest.approx(1.0 if mode == "quotes" else 0.4)


@pytest.mark.parametrize(
    ("consumption", "queue", "expected"),
    [
        (False, None, [(13, 0.2), (14, 0.6), (15, 0.4)]),  # the default: behind the 1.0 shown
        (False, False, [(12, 0.6), (13, 0.6)]),  # no queue: the first prints fill it
        (True, False, [(12, 0.6)]),  # upstream #5017: identical prints after the first missed
        (True, None, [(13, 0.2)]),
    ],
)
def test_quotes_limit_under_identical_prints_as_documented(
    consumption: bool, queue: bool | None, expected: list[tuple[int, float]]
) -> None:
    """Pins why liquidity consumption stays off on quotes (and what queue positions do)."""
    book = quotes_table([(t(DAY1, 1), 100.0, 1.0, 100.5, 1.0)])
    tape = [(t(DAY1, 2), 100.0, 0.1, "sell")] + [
        (t(DAY1, s), 100.0, 0.6, "sell") for s in (12, 13, 14, 15, 16)
    ]
    sigs = signals({"signal_id": "s1", "ts_event": t(DAY1, 10), "instrument_key": BTC,
                    "target_position": 1.2, "execution_window_s": 20.0, "algo": "LIMIT",
                    "limit_price": 100.0})  # fmt: skip
    fm = {"liquidity_consumption": consumption, "queue_position": queue}
    fills = run_day(tape, sigs, "quotes", book, fill_model=fm)
    got = [
        ((ts - t(DAY1, 0)) // 1_000_000_000, q)
        for ts, q in fills.select("ts_event", "quantity").rows()
    ]
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert [g[1] for g in got] == pytest.approx([e[1] for e in expected])
