"""End-to-end checks of run_engine on a real NautilusTrader engine with small crafted data."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from _engine_data import (
    BTC,
    BTC_BYBIT,
    DAY1,
    DAY2,
    MS,
    S,
    config,
    day_input,
    funding_df,
    instrument_row,
    instruments_df,
    signals,
    steady_trades,
    t,
    trades,
)  # fmt: skip

from backtest_pipeline.engine.conversion import marks_per_second
from backtest_pipeline.engine.driver import EngineInputError, run_engine

INST = instruments_df(instrument_row(BTC))


def _sig(sid: str, sec: float, target: float, **kw: object) -> dict[str, object]:
    return {"signal_id": sid, "ts_event": t(DAY1, sec), "instrument_key": BTC,
            "target_position": target, **kw}  # fmt: skip


def test_market_fills_after_latency_at_traded_price() -> None:
    cfg = config([BTC], venues={"BINANCE-FUTURES": {"latency": {"base_ms": 120}}})
    tr = steady_trades(DAY1, 100, 120, 0.05, 40_000.0, drift=0.1)
    out = run_engine(cfg, [day_input(DAY1, INST, signals(_sig("s1", 110, 0.5)), {BTC: tr})])
    assert out.fills.height >= 1
    f = out.fills.row(0, named=True)
    assert f["ts_event"] >= t(DAY1, 110) + 120 * MS
    trades = pl.from_arrow(tr)
    printed = trades.filter(
        (pl.col("ts_event") >= t(DAY1, 110)) & (pl.col("ts_event") <= f["ts_event"])
    )["price"].to_list()
    assert f["price"] in printed
    assert f["venue"] == "BINANCE-FUTURES" and f["fee_currency"] == "USDT"
    assert f["fee"] == pytest.approx(0.5 * f["price"] * 0.0005)
    assert out.orders["status"].to_list() == ["FILLED"]
    assert out.stats["fills"] == out.fills.height and out.stats["ticks_read"] == tr.num_rows
    # The engine saw the market only while the order worked (engine_feed: operations).
    assert 0 < out.stats["ticks_processed"] < tr.num_rows
    assert list(out.fills.columns) == ["fill_id", "order_id", "instrument_key", "side",
        "quantity", "price", "fee", "fee_currency", "ts_event", "venue"]  # fmt: skip


def test_limit_rest_cancelled_at_window_end_with_shortfall() -> None:
    cfg = config([BTC])
    tr = steady_trades(DAY1, 100, 140, 0.5, 40_000.0)
    sig = signals(_sig("s1", 110, 1.0, algo="LIMIT", limit_price=39_900.0, execution_window_s=10))
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    o = out.orders.row(0, named=True)
    assert (o["order_type"], o["price"], o["status"]) == ("LIMIT", 39_900.0, "CANCELED")
    assert o["updated_at"] >= t(DAY1, 120)
    op = out.operations.row(0, named=True)
    assert op["shortfall"] == pytest.approx(1.0) and op["filled_quantity"] == 0.0
    hist = out.order_status_history.filter(pl.col("order_id") == o["order_id"])
    assert hist["status"].to_list() == ["SUBMITTED", "ACCEPTED", "CANCELED"]


def test_limit_partially_filled_then_cancelled() -> None:
    cfg = config([BTC])
    # Trades at 40000 with size 0.3: a buy limit at 40000 fills from the prints it sees.
    tr = steady_trades(DAY1, 100, 140, 0.5, 40_000.0, size=0.3)
    sig = signals(_sig("s1", 110, 500.0, algo="LIMIT", limit_price=40_000.0,
                       execution_window_s=3))  # fmt: skip
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    op = out.operations.row(0, named=True)
    assert 0 < op["filled_quantity"] < 500.0
    assert op["shortfall"] == pytest.approx(500.0 - op["filled_quantity"])
    assert op["status"] == "PARTIALLY_FILLED"
    # some filled, the rest cancelled → reported PARTIALLY_FILLED (oms.py), CANCELED in history
    assert out.orders["status"].to_list() == ["PARTIALLY_FILLED"]
    hist = out.order_status_history["status"].to_list()
    assert hist[0] == "SUBMITTED" and hist[-1] == "CANCELED" and "PARTIALLY_FILLED" in hist
    assert out.stats["orders_partially_filled"] == 1 and out.stats["orders_canceled"] == 0
    assert out.fills["quantity"].sum() == pytest.approx(op["filled_quantity"])


def test_twap_slices_evenly() -> None:
    cfg = config([BTC], twap_slice_s=10)
    tr = steady_trades(DAY1, 100, 200, 0.5, 40_000.0)
    sig = signals(_sig("s1", 110, 1.2, algo="TWAP", execution_window_s=40))
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    o = out.orders
    assert o.height == 4
    assert o["quantity"].to_list() == [0.3, 0.3, 0.3, 0.3]
    assert o["created_at"].diff().drop_nulls().to_list() == [10 * S] * 3
    assert o["created_at"][0] == t(DAY1, 110)
    assert out.fills["quantity"].sum() == pytest.approx(1.2)


def test_new_signal_supersedes_open_operation() -> None:
    cfg = config([BTC])
    tr = steady_trades(DAY1, 100, 160, 0.5, 40_000.0)
    sig = signals(
        _sig("s1", 110, 1.0, algo="LIMIT", limit_price=39_950.0, execution_window_s=30),
        _sig("s2", 115, -1.0, algo="MARKET"),
    )
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    ops = {r["operation_id"]: r for r in out.operations.iter_rows(named=True)}
    assert ops["OP-s1"]["superseded"] is True
    old = out.orders.filter(pl.col("operation_id") == "OP-s1").row(0, named=True)
    assert old["status"] == "CANCELED" and old["updated_at"] < t(DAY1, 140)
    new = out.orders.filter(pl.col("operation_id") == "OP-s2").row(0, named=True)
    assert (new["side"], new["quantity"], new["status"]) == ("SELL", 1.0, "FILLED")


@pytest.mark.parametrize(
    ("risk", "sig_kw", "reason"),
    [
        ({"max_order_quantity": 0.5}, {}, "max_order_quantity: 1 > 0.5"),
        ({"max_order_notional": 30_000}, {}, "max_order_notional: 40000.00 > 30000.00 USDT"),
        ({"max_position_notional": 20_000}, {}, "max_position_notional: 40000.00 > 20000.00"),
        ({"max_gross_leverage": 0.2}, {}, "max_gross_leverage: 0.4000x > 0.2000x"),
        ({"limit_price_band_pct": 1.0}, {"algo": "LIMIT", "limit_price": 38_000.0},
         "limit_price_band_pct: 5.00% > 1.00%"),
    ],
)  # fmt: skip
def test_risk_limits_reject_before_engine(
    risk: dict[str, float], sig_kw: dict[str, object], reason: str
) -> None:
    cfg = config([BTC], risk=risk)
    tr = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    sig = signals(_sig("s1", 110, 1.0, **sig_kw))
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    o = out.orders.row(0, named=True)
    assert o["order_id"] == "R-OP-s1-1" and o["status"] == "REJECTED"
    assert o["rejection_reason"].startswith(reason), o["rejection_reason"]
    assert out.engine_order_ids == [] and out.fills.height == 0
    assert out.stats["orders_rejected"] == 1 and out.stats["orders_submitted"] == 0


def test_unknown_instrument_signal_is_a_clear_error() -> None:
    cfg = config([BTC, BTC_BYBIT])
    tr = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    sig = signals({**_sig("s9", 110, 1.0), "instrument_key": BTC_BYBIT})
    with pytest.raises(EngineInputError, match=r"signal s9 on 2024-01-01: instrument BYBIT:"):
        run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])


def test_router_sends_to_cheaper_all_in_venue() -> None:
    cfg = config([BTC, BTC_BYBIT])
    inst = instruments_df(instrument_row(BTC, taker_fee=0.0005),
                          instrument_row(BTC_BYBIT, taker_fee=0.0001))  # fmt: skip
    a = steady_trades(DAY1, 100, 130, 0.5, 40_000.0, prefix="A")
    b = steady_trades(DAY1, 100, 130, 0.5, 40_005.0, prefix="B")  # dearer print, cheaper fee
    sig = signals(_sig("s1", 110, 1.0))
    out = run_engine(cfg, [day_input(DAY1, inst, sig, {BTC: a, BTC_BYBIT: b})])
    assert out.orders["instrument_key"].to_list() == [BTC_BYBIT]
    assert out.fills["venue"].to_list() == ["BYBIT"]
    # a sell is cheaper where the price is higher too → still BYBIT; flip the fees → BINANCE
    inst2 = instruments_df(instrument_row(BTC, taker_fee=0.0001),
                           instrument_row(BTC_BYBIT, taker_fee=0.0005))  # fmt: skip
    out2 = run_engine(cfg, [day_input(DAY1, inst2, sig, {BTC: a, BTC_BYBIT: b})])
    assert out2.orders["instrument_key"].to_list() == [BTC]


@pytest.mark.parametrize(("target", "ticks_after"), [(2.0, True), (-2.0, True), (2.0, False)])
def test_funding_paid_by_long_received_by_short(target: float, ticks_after: bool) -> None:
    """Without ticks after it, the funding alert still fires (final flush to the day's end)."""
    cfg = config([BTC], venues={"BINANCE-FUTURES": {"starting_balance": 100_000}})
    tr = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    late = steady_trades(DAY1, 28_790, 28_810, 1.0, 40_000.0, prefix="L")
    fund = {BTC: funding_df([(t(DAY1, 28_800), 0.0001, 40_100.0)])}
    sig = signals(_sig("s1", 110, target))
    out = run_engine(
        cfg,
        [
            day_input(
                DAY1,
                INST,
                sig,
                {BTC: pa.concat_tables([tr, late]) if ticks_after else tr},
                funding=fund,
            )
        ],  # fmt: skip
    )
    assert out.funding.height == 1
    f = out.funding.row(0, named=True)
    assert f["position"] == target and f["ts_event"] == t(DAY1, 28_800)
    assert f["payment"] == pytest.approx(target * 40_100.0 * 0.0001)
    fees = out.fills["fee"].sum()
    assert out.final_balances["BINANCE-FUTURES"] == pytest.approx(
        100_000 - fees - f["payment"], abs=1e-6
    )


def test_position_carried_across_days_realized_pnl_and_fees() -> None:
    cfg = config([BTC])
    d1 = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    d2 = steady_trades(DAY2, 100, 130, 0.5, 41_000.0, prefix="D")
    s1 = signals(_sig("s1", 110, 1.5))
    s2 = signals({"signal_id": "s2", "ts_event": t(DAY2, 110), "instrument_key": BTC,
                  "target_position": 0.0})  # fmt: skip
    days = iter([day_input(DAY1, INST, s1, {BTC: d1}), day_input(DAY2, INST, s2, {BTC: d2})])
    out = run_engine(cfg, days)
    assert out.fills["side"].to_list() == ["BUY", "SELL"]
    assert out.fills["price"].to_list() == [40_000.0, 41_000.0]
    fees = 1.5 * 40_000 * 0.0005 + 1.5 * 41_000 * 0.0005
    assert out.fills["fee"].sum() == pytest.approx(fees)
    assert out.final_balances["BINANCE-FUTURES"] == pytest.approx(100_000 + 1.5 * 1_000 - fees)
    assert out.operations["start_position"].to_list() == [0.0, 1.5]


def test_same_inputs_same_outputs() -> None:
    cfg = config([BTC])
    tr = steady_trades(DAY1, 100, 200, 0.25, 40_000.0, drift=0.1)
    sig = signals(_sig("s1", 110, 1.0, algo="TWAP", execution_window_s=30),
                  _sig("s2", 150, -0.5, algo="LIMIT", execution_window_s=20))  # fmt: skip

    def once() -> tuple[pl.DataFrame, pl.DataFrame]:
        out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
        return out.fills, out.orders

    f1, o1 = once()
    f2, o2 = once()
    assert f1.height > 0
    assert f1.equals(f2) and o1.equals(o2)


def test_funding_between_days_fires_at_its_time_and_flat_positions_pay_nothing() -> None:
    cfg = config([BTC])
    d1 = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    d2 = steady_trades(DAY2, 100, 130, 0.5, 40_000.0, prefix="D")
    s1 = signals(_sig("s1", 110, 1.0))
    s2 = signals({"signal_id": "s2", "ts_event": t(DAY2, 110), "instrument_key": BTC,
                  "target_position": 0.0})  # fmt: skip
    f1 = {BTC: funding_df([(t(DAY1, 57_600), 0.0002, 40_000.0)])}  # after day 1's last tick
    f2 = {BTC: funding_df([(t(DAY2, 0), 0.0001, 40_000.0), (t(DAY2, 28_800), 0.0001, 1.0)])}
    out = run_engine(cfg, [day_input(DAY1, INST, s1, {BTC: d1}, funding=f1),
                           day_input(DAY2, INST, s2, {BTC: d2}, funding=f2)])  # fmt: skip
    assert out.funding["ts_event"].to_list() == [t(DAY1, 57_600), t(DAY2, 0)]
    assert out.funding["payment"].to_list() == pytest.approx([8.0, 4.0])
    fees = out.fills["fee"].sum()
    assert out.final_balances["BINANCE-FUTURES"] == pytest.approx(100_000 - fees - 12.0)


def test_marks_and_intervals_reported() -> None:
    cfg = config([BTC])
    tr = steady_trades(DAY1, 100, 110, 0.25, 40_000.0, drift=0.1)
    bars = {BTC: pl.DataFrame({"ts_event": [t(DAY1, 60), t(DAY1, 120)], "close": [1.0, 2.0]})}
    out = run_engine(cfg, [day_input(DAY1, INST, signals(_sig("s1", 105, 0.1)), {BTC: tr},
                                     bars=bars)])  # fmt: skip
    m = out.marks
    assert m.columns == ["ts_event", "instrument_key", "price"]
    assert m.filter(pl.col("ts_event") == t(DAY1, 60))["price"].to_list() == [1.0]
    # The run keeps the marks the results read, not every second it read: per instrument the
    # last mark at or before each minute of the equity grid and each fill (and the day's last).
    every_second = marks_per_second(tr, BTC)
    assert every_second.height == 11  # seconds 100..110
    per_sec = m.filter(pl.col("price") > 100)
    assert 0 < per_sec.height < every_second.height
    full = pl.concat([every_second, bars[BTC].select(
        pl.col("ts_event").cast(pl.Int64), pl.lit(BTC).alias("instrument_key"),
        pl.col("close").cast(pl.Float64).alias("price"),
    )]).sort("ts_event")  # fmt: skip
    instants = sorted({*range(t(DAY1, 0), t(DAY1, 86_400) + 1, 60 * 10**9),
                       *out.fills["ts_event"].to_list()})  # fmt: skip
    assert out.fills.height > 0

    def read_at(marks: pl.DataFrame) -> list[tuple[int, float] | None]:
        ts, px = marks["ts_event"].to_list(), marks["price"].to_list()
        return [max(((a, b) for a, b in zip(ts, px, strict=True) if a <= i), default=None)
                for i in instants]  # fmt: skip

    assert read_at(m.sort("ts_event")) == read_at(full)
    assert out.intervals[DAY1]["start_ns"].to_list() == [t(DAY1, 100)]


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_log_dir_writes_execution_log(tmp_path, level: str) -> None:  # type: ignore[no-untyped-def]
    """In a fresh process: Nautilus initialises logging once per process.

    The default (``WARNING``) keeps the engine's problems and leaves out its per-event lines;
    ``INFO`` has every order event.
    """
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from _engine_data import *
from backtest_pipeline.engine.driver import run_engine
import pyarrow as pa
tr = steady_trades(DAY1, 100, 120, 0.5, 40_000.0)
# the second signal's sell limit triggers a Nautilus ERROR line ("Cannot fill order")
stale = trades([(t(DAY1, 200), 40_000.0, 1.0, "buy"), (t(DAY1, 200.5), 39_990.0, 1.0, "buy"),
                (t(DAY1, 204), 39_999.0, 1.0, "buy")])
sig = signals({{"signal_id": "s1", "ts_event": t(DAY1, 110), "instrument_key": BTC,
               "target_position": 1.0}},
              {{"signal_id": "s2", "ts_event": t(DAY1, 201), "instrument_key": BTC,
               "target_position": 0.5, "algo": "LIMIT", "limit_price": 39_995.0}})
cfg = config([BTC]).model_copy(update={{"engine_log_level": {level!r}}})
out = run_engine(cfg, [day_input(DAY1, instruments_df(instrument_row(BTC)), sig,
                 {{BTC: pa.concat_tables([tr, stale])}})], log_dir=Path({str(tmp_path)!r}))
print(out.fills.height)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "2"
    log = (tmp_path / "execution.log").read_text()
    assert "\x1b[" not in log
    events = "OrderFilled" in log and "[INFO] BACKTESTER-001" in log
    assert events == (level == "INFO")
    # Nautilus's ERROR lines go to the log file only, never to the terminal
    assert "[ERROR]" in log and "Cannot fill order" in log
    assert "BACKTESTER-001" not in res.stderr + res.stdout


def test_spot_cash_venue_round_trip_and_no_spot_short() -> None:
    k = "BINANCE:SPOT:BTC-USDT"
    cfg = config([k])
    inst = instruments_df(instrument_row(k))
    tr = steady_trades(DAY1, 100, 200, 0.5, 40_000.0)
    sig = signals(
        {"signal_id": "s1", "ts_event": t(DAY1, 110), "instrument_key": k, "target_position": 1.0},
        {"signal_id": "s2", "ts_event": t(DAY1, 150), "instrument_key": k, "target_position": 0.0},
        {"signal_id": "s3", "ts_event": t(DAY1, 170), "instrument_key": k, "target_position": -5.0},
    )
    out = run_engine(cfg, [day_input(DAY1, inst, sig, {k: tr})])
    assert out.fills["side"].to_list() == ["BUY", "SELL"]
    assert out.final_balances["BINANCE"] == pytest.approx(100_000 - 2 * 20.0)
    last = out.orders.row(2, named=True)
    assert last["status"] == "REJECTED" and last["order_id"] == "R-OP-s3-1"
    assert last["rejection_reason"].startswith("spot_short: position after the order -5 < 0")


FINAL = {"FILLED", "PARTIALLY_FILLED", "CANCELED", "REJECTED", "EXPIRED"}


@pytest.mark.parametrize("consumption", [False, True])
def test_repeated_same_size_prints_still_fill_market_orders(consumption: bool) -> None:
    """Default (no liquidity tracking): every market order fills at the printed price.

    With ``liquidity_consumption`` Nautilus 1.231 drops a market order that meets a level an
    earlier same-size print "consumed", without any event; the window-end cancel proves it and
    the order is closed CANCELED with the reason, counted in ``orders_dropped_by_venue``.
    """
    cfg = config([BTC], fill_model={"liquidity_consumption": consumption})
    tr = steady_trades(DAY1, 100, 400, 0.5, 40_000.0, size=5.0)  # one price, one size
    sig = signals(*[_sig(f"s{i}", 110 + 20 * i, (-1) ** i * 1.0) for i in range(10)])
    out = run_engine(cfg, [day_input(DAY1, INST, sig, {BTC: tr})])
    assert set(out.orders["status"]) <= FINAL
    assert out.stats["orders_unresolved"] == 0
    if not consumption:
        assert out.stats["orders_filled"] == 10 and out.stats["orders_dropped_by_venue"] == 0
        assert set(out.fills["price"].to_list()) == {40_000.0}
    else:
        dropped = out.orders.filter(pl.col("rejection_reason").str.starts_with("venue_dropped"))
        assert dropped.height == out.stats["orders_dropped_by_venue"] > 0
        assert set(dropped["status"]) == {"CANCELED"}
        # closed at the window end (signal + 10 s + cancel latency), not at the run's end
        ops = out.operations.filter(pl.col("operation_id").is_in(dropped["operation_id"]))
        ends = {
            r["operation_id"]: r["ts_event"] + 10 * S + 20 * MS for r in ops.iter_rows(named=True)
        }
        assert all(
            r["updated_at"] == ends[r["operation_id"]] for r in dropped.iter_rows(named=True)
        )


# -- order timing across data gaps, stale books, final statuses (tasks of the engine layer) -------


def _stale_core_trades() -> pa.Table:
    """A buyer print at 40000 then buyers lower: Nautilus's inferred bid stays at 40000."""
    from _engine_data import trades

    return trades([(t(DAY1, 100), 40_000.0, 1.0, "buy"), (t(DAY1, 100.5), 39_990.0, 1.0, "buy"),
                   (t(DAY1, 102), 39_990.0, 1.0, "buy"), (t(DAY1, 103), 39_990.0, 1.0, "sell"),
                   (t(DAY1, 104), 39_999.0, 1.0, "buy"), (t(DAY1, 120), 39_999.0, 1.0, "buy")])  # fmt: skip


def test_limit_marketable_only_to_the_inferred_bid_rests_and_fills_at_a_print() -> None:
    """The 'Cannot fill order: no fills from book' case of Nautilus 1.231 (trade-only L1).

    The matching core infers bid/ask from aggressor sides (a bid only falls on seller prints);
    the L1 book holds the last print. A sell limit between them is 'marketable' to the core but
    finds no bid in the book: Nautilus logs the error and the order rests. That outcome is the
    right one (buyers lifting at 39990 mean the ask, not the bid, was there): it must not fill
    on the buyer/seller prints below its price, only when a buyer pays at least its price.
    """
    sig = signals(_sig("s1", 101, -0.5, algo="LIMIT", limit_price=39_995.0))
    out = run_engine(config([BTC]), [day_input(DAY1, INST, sig, {BTC: _stale_core_trades()})])
    assert out.fills.select("price", "quantity", "ts_event").rows() == [
        (39_995.0, 0.5, t(DAY1, 104))
    ]
    assert out.orders["status"].to_list() == ["FILLED"]


def test_window_end_cancel_reaches_the_venue_inside_a_data_gap() -> None:
    """The cancel is processed at window end + latency, not with the next interval's first tick.

    Before, an in-flight cancel waited for the next data point, which was matched first: the
    order filled minutes after its window, at a price of another interval.
    """
    first = steady_trades(DAY1, 100, 115, 0.5, 40_000.0)
    later = steady_trades(DAY1, 400, 410, 0.5, 39_000.0, prefix="L")  # crosses the buy limit
    sig = signals(_sig("s1", 105, 1.0, algo="LIMIT", limit_price=39_900.0, execution_window_s=5))
    out = run_engine(
        config([BTC]), [day_input(DAY1, INST, sig, {BTC: pa.concat_tables([first, later])})]
    )
    o = out.orders.row(0, named=True)
    assert o["status"] == "CANCELED" and o["updated_at"] == t(DAY1, 110) + 20 * MS
    assert out.fills.height == 0


def test_market_order_fills_on_arrival_even_when_the_next_print_is_later() -> None:
    tr = pa.concat_tables([steady_trades(DAY1, 100, 104, 0.5, 40_000.0),
                           steady_trades(DAY1, 130, 135, 0.5, 40_500.0, prefix="L")])  # fmt: skip
    out = run_engine(
        config([BTC]), [day_input(DAY1, INST, signals(_sig("s1", 105, 1.0)), {BTC: tr})]
    )
    f = out.fills.row(0, named=True)
    assert (f["price"], f["ts_event"]) == (40_000.0, t(DAY1, 105) + 20 * MS)
    assert out.stats["orders_sent_on_stale_book"] == 0


def test_market_order_on_a_stale_book_waits_for_the_next_print() -> None:
    """No trade in the signal's lookback: the book is from an earlier interval, don't fill on it."""
    tr = pa.concat_tables([steady_trades(DAY1, 100, 104, 0.5, 40_000.0),
                           steady_trades(DAY1, 130, 135, 0.5, 40_500.0, prefix="L")])  # fmt: skip
    out = run_engine(
        config([BTC]), [day_input(DAY1, INST, signals(_sig("s1", 120, 1.0)), {BTC: tr})]
    )
    f = out.fills.row(0, named=True)
    assert (f["price"], f["ts_event"]) == (40_500.0, t(DAY1, 130))
    assert out.stats["orders_sent_on_stale_book"] == 1


def test_every_algo_is_cancelled_at_its_window_end_and_shortfall_recorded() -> None:
    """A LIMIT that cannot fill, and a TWAP whose last slice found no market, both close."""
    tr = steady_trades(DAY1, 100, 125, 0.5, 40_000.0)
    sig = signals(_sig("s1", 110, 1.0, algo="LIMIT", limit_price=39_000.0, execution_window_s=5),
                  {**_sig("s2", 118, 0.0, algo="TWAP", execution_window_s=30)})  # fmt: skip
    out = run_engine(config([BTC], risk={"limit_price_band_pct": 10.0}),
                     [day_input(DAY1, INST, sig, {BTC: tr})])  # fmt: skip
    assert set(out.orders["status"]) <= FINAL
    ops = {r["operation_id"]: r for r in out.operations.iter_rows(named=True)}
    assert ops["OP-s1"]["shortfall"] == pytest.approx(1.0)


def test_end_of_run_sweep_cancels_what_is_still_working() -> None:
    """A LIMIT whose window outlasts the data is cancelled by the run's end, inside the run."""
    tr = steady_trades(DAY1, 100, 130, 0.5, 40_000.0)
    sig = signals(_sig("s1", 110, 1.0, algo="LIMIT", limit_price=39_900.0,
                       execution_window_s=200_000))  # fmt: skip
    out = run_engine(config([BTC]), [day_input(DAY1, INST, sig, {BTC: tr})])
    o = out.orders.row(0, named=True)
    assert o["status"] == "CANCELED" and o["updated_at"] <= t(DAY2, 0) - 1
    assert out.stats["orders_canceled_at_run_end"] == 1
    assert out.stats["orders_unresolved"] == 0


def test_working_order_carries_over_midnight_when_the_run_goes_on() -> None:
    """The sweep of a day that is not the run's last does nothing."""
    d1 = steady_trades(DAY1, 86_390, 86_399, 0.5, 40_000.0)
    d2 = steady_trades(DAY2, 0, 10, 0.5, 39_800.0, prefix="D")
    s1 = signals(_sig("s1", 86_395, 1.0, algo="LIMIT", limit_price=39_900.0,
                      execution_window_s=60))  # fmt: skip
    out = run_engine(config([BTC]), [day_input(DAY1, INST, s1, {BTC: d1}),
                                     day_input(DAY2, INST, signals(), {BTC: d2})])  # fmt: skip
    assert out.orders["status"].to_list() == ["FILLED"]
    assert out.fills["ts_event"].min() >= t(DAY2, 0)
    assert out.stats["orders_canceled_at_run_end"] == 0


# -- configuration fields (twap_slice_s in test_twap_slices_evenly) -------------------------------


def test_router_drift_from_config_prefers_the_faster_venue() -> None:
    inst = instruments_df(instrument_row(BTC), instrument_row(BTC_BYBIT))
    a = steady_trades(DAY1, 100, 130, 0.5, 40_000.0, prefix="A")
    b = steady_trades(DAY1, 100, 130, 0.5, 40_000.0, prefix="B")
    venues = {
        "BINANCE-FUTURES": {"latency": {"base_ms": 200}},
        "BYBIT": {"latency": {"base_ms": 5}},
    }
    sig = signals(_sig("s1", 110, 1.0))
    base = {"venues": venues, "primary_venue": "BINANCE-FUTURES"}
    flat = run_engine(config([BTC, BTC_BYBIT], **base),
                      [day_input(DAY1, inst, sig, {BTC: a, BTC_BYBIT: b})])  # fmt: skip
    assert flat.orders["instrument_key"].to_list() == [BTC]  # tie → primary venue
    drift = run_engine(config([BTC, BTC_BYBIT], router_drift_bps_per_s=1.0, **base),
                       [day_input(DAY1, inst, sig, {BTC: a, BTC_BYBIT: b})])  # fmt: skip
    assert drift.orders["instrument_key"].to_list() == [BTC_BYBIT]


def test_allow_spot_short_from_config() -> None:
    k = "BINANCE:SPOT:BTC-USDT"
    inst = instruments_df(instrument_row(k))
    tr = steady_trades(DAY1, 100, 200, 0.5, 40_000.0)
    sig = signals({"signal_id": "s1", "ts_event": t(DAY1, 110), "instrument_key": k,
                   "target_position": -1.0})  # fmt: skip
    no = run_engine(config([k]), [day_input(DAY1, inst, sig, {k: tr})])
    assert no.orders["status"].to_list() == ["REJECTED"]
    yes = run_engine(config([k], allow_spot_short=True), [day_input(DAY1, inst, sig, {k: tr})])
    assert yes.orders["status"].to_list() == ["FILLED"] and yes.fills["side"].to_list() == ["SELL"]


def _windowed_vs_whole_day(monkeypatch: pytest.MonkeyPatch, chunk: int) -> tuple[object, object]:
    """The same two days through the engine in windows of ``chunk`` ticks and in whole days."""
    from backtest_pipeline.engine import driver as engine_mod

    # The windows of the intervals feed (the operations feed has its own: test_engine_feed.py).
    cfg = config([BTC, BTC_BYBIT], venues={"BINANCE-FUTURES": {"starting_balance": 100_000}},
                 engine_feed="intervals")  # fmt: skip
    inst = instruments_df(instrument_row(BTC, taker_fee=0.0005),
                          instrument_row(BTC_BYBIT, taker_fee=0.0004))  # fmt: skip

    def days() -> list[object]:
        a1 = steady_trades(DAY1, 100, 400, 0.5, 40_000.0, drift=0.1, prefix="A")
        b1 = steady_trades(DAY1, 100, 400, 0.5, 40_003.0, drift=-0.1, prefix="B")
        a2 = steady_trades(DAY2, 50, 300, 0.25, 40_050.0, drift=0.2, prefix="C")
        s1 = signals(_sig("s1", 110, 1.0, algo="TWAP", execution_window_s=120),
                     _sig("s2", 250, -0.5, algo="LIMIT", execution_window_s=60),
                     _sig("s3", 330, 0.25))  # fmt: skip
        s2 = signals({"signal_id": "s4", "ts_event": t(DAY2, 100), "instrument_key": BTC,
                      "target_position": 0.0, "algo": "TWAP", "execution_window_s": 90})  # fmt: skip
        fund = {BTC: funding_df([(t(DAY1, 200), 0.0001, 40_010.0)])}
        return [day_input(DAY1, inst, s1, {BTC: a1, BTC_BYBIT: b1}, funding=fund),
                day_input(DAY2, inst, s2, {BTC: a2})]  # fmt: skip

    counted: list[int] = []
    windows = engine_mod.PreparedDay.windows

    def counting(self: object, max_ticks: int | None) -> object:
        for w in windows(self, max_ticks):  # type: ignore[arg-type]
            counted.append(max_ticks or 0)
            yield w

    monkeypatch.setattr(engine_mod.PreparedDay, "windows", counting)
    monkeypatch.setattr(engine_mod, "CHUNK_TICKS", chunk)
    windowed = run_engine(cfg, days())
    n_windowed = len(counted)
    counted.clear()
    monkeypatch.setattr(engine_mod, "CHUNK_TICKS", None)
    whole = run_engine(cfg, days())
    # The windowed run really ran in more pieces than one per day; the other in one per day.
    assert len(counted) == 2 and n_windowed > 2
    return windowed, whole


@pytest.mark.parametrize("chunk", [7, 250])
def test_day_run_in_tick_windows_equals_whole_day(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Bounding memory by a window of ticks must not change a single order, fill or balance."""
    windowed, whole = _windowed_vs_whole_day(monkeypatch, chunk)
    assert whole.fills.height > 3 and whole.orders.height > 3  # type: ignore[attr-defined]
    for name in ("orders", "fills", "operations", "funding"):
        assert getattr(windowed, name).equals(getattr(whole, name)), name
    assert windowed.final_balances == whole.final_balances  # type: ignore[attr-defined]
    assert windowed.stats["ticks_processed"] == whole.stats["ticks_processed"]  # type: ignore[attr-defined]


def test_windows_split_between_timestamps_and_keep_every_row() -> None:
    from backtest_pipeline.config import FeeOverride
    from backtest_pipeline.engine.driver import PreparedDay
    from backtest_pipeline.engine.instruments import build_instrument

    # 5 trades share one timestamp right where a 4-tick window would cut.
    rows = [(t(DAY1, s), 40_000.0, 1.0, "buy") for s in (1, 2, 3)]
    rows += [(t(DAY1, 4), 40_000.0 + i, 1.0, "sell") for i in range(5)]
    rows += [(t(DAY1, s), 40_001.0, 1.0, "buy") for s in (5, 6, 7, 8, 9)]
    a = trades(rows, prefix="A")
    b = trades([(t(DAY1, 4), 39_999.0, 2.0, "buy"), (t(DAY1, 8.5), 39_998.0, 2.0, "sell")], "B")
    day_start = t(DAY1, 0)
    instr = {k: build_instrument(instrument_row(k), FeeOverride()) for k in (BTC, BTC_BYBIT)}
    prepared = PreparedDay({BTC: a, BTC_BYBIT: b}, instr, day_start, day_start + 86_400 * S)
    windows = list(prepared.windows(4))
    assert len(windows) > 2
    seen: dict[str, list[str]] = {BTC: [], BTC_BYBIT: []}
    for i, (lo, hi, ticks, _books) in enumerate(windows):
        assert lo < hi and (i == 0 or lo == windows[i - 1][1])
        for key, ts in ticks.items():
            assert all(lo <= x.ts_event < hi for x in ts)
            seen[key] += [x.trade_id.value for x in ts]
    assert windows[0][0] == day_start and windows[-1][1] == day_start + 86_400 * S
    assert seen[BTC] == a.column("trade_id").to_pylist()
    assert seen[BTC_BYBIT] == b.column("trade_id").to_pylist()
    # the five equal timestamps land in one window
    assert (
        sum(1 for _, _, tk, _b in windows for x in tk.get(BTC, []) if x.ts_event == t(DAY1, 4)) == 5
    )
    assert len({i for i, (_, _, tk, _b) in enumerate(windows)
                for x in tk.get(BTC, []) if x.ts_event == t(DAY1, 4)}) == 1  # fmt: skip
