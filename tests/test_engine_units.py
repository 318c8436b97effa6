"""Unit tests of the engine's layers that need no BacktestEngine."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import pytest
from _engine_data import BTC, BTC_BYBIT, DAY1, S, instrument_row, signals, t, trades
from nautilus_trader.model.identifiers import InstrumentId

from backtest_pipeline.config import FeeOverride, RiskLimits
from backtest_pipeline.engine import instruments as names
from backtest_pipeline.engine.conversion import marks_per_second, trades_to_ticks
from backtest_pipeline.signals.intervals import filter_to_intervals, signal_intervals
from backtest_pipeline.trading.oms import OMS
from backtest_pipeline.trading.orchestrator import Operation, Orchestrator, Signal
from backtest_pipeline.trading.risk import OrderIntent, PreTradeRisk, RiskSnapshot
from backtest_pipeline.trading.router import SmartRouter, VenueQuote, group_of


def test_names_round_trip() -> None:
    assert names.to_nautilus_venue("BINANCE-FUTURES") == "BINANCE_FUTURES"
    iid = names.instrument_id_for(BTC)
    assert iid == InstrumentId.from_str("BTCUSDT-PERP.BINANCE_FUTURES")
    assert names.key_for(iid) == BTC
    assert names.key_for(str(iid)) == BTC
    spot = "BINANCE:SPOT:ETH-USDT"
    assert str(names.instrument_id_for(spot)) == "ETHUSDT.BINANCE"
    with pytest.raises(ValueError, match="_"):
        names.to_nautilus_venue("OKX_SWAP")
    with pytest.raises(ValueError, match="same Nautilus id"):
        names.instrument_id_for("BINANCE-FUTURES:PERPETUAL:BTCU-SDT")


def test_build_instrument_fields_and_overrides() -> None:
    row = instrument_row(BTC, max_quantity=100.0, min_notional=5.0)
    inst = names.build_instrument(row, FeeOverride(taker_fee=0.0004))
    assert inst.price_precision == 1 and inst.size_precision == 3
    assert float(inst.price_increment) == 0.1 and float(inst.size_increment) == 0.001
    assert float(inst.taker_fee) == 0.0004 and float(inst.maker_fee) == 0.0002
    assert float(inst.margin_init) == 0.1 and float(inst.max_quantity) == 100.0
    assert float(inst.min_notional) == 5.0
    spot = names.build_instrument(instrument_row("BINANCE:SPOT:ETH-USDT"), FeeOverride())
    assert type(spot).__name__ == "CurrencyPair"
    with pytest.raises(NotImplementedError, match=f"{BTC}: inverse contracts not supported"):
        names.build_instrument(instrument_row(BTC, is_inverse=True), FeeOverride())


def test_trades_to_ticks_vectorised() -> None:
    inst = names.build_instrument(instrument_row(BTC), FeeOverride())
    tbl = trades([(t(DAY1, 1), 100.04, 0.5, "buy"), (t(DAY1, 2), 100.1, 0.0001, "sell"),
                  (t(DAY1, 3), 100.2, 1.0, "SELL")])  # fmt: skip
    ticks = trades_to_ticks(tbl, inst)
    assert len(ticks) == 2  # the dust trade (0.0001 at 3 decimals) is dropped
    assert ticks[0].price.as_double() == 100.0 and ticks[0].size.as_double() == 0.5
    assert ticks[0].aggressor_side.name == "BUYER" and ticks[1].aggressor_side.name == "SELLER"
    assert ticks[0].ts_init == t(DAY1, 1) and ticks[1].trade_id.value == "T2"
    # timestamp[ns] input works the same
    df = pl.from_arrow(tbl).with_columns(pl.col("ts_event").cast(pl.Datetime("ns", "UTC")))
    assert [x.ts_event for x in trades_to_ticks(df, inst)] == [x.ts_event for x in ticks]


def test_marks_last_per_second() -> None:
    tbl = trades([(t(DAY1, 1.1), 10.0, 1, "buy"), (t(DAY1, 1.9), 11.0, 1, "buy"),
                  (t(DAY1, 2.5), 12.0, 1, "sell")])  # fmt: skip
    m = marks_per_second(tbl, BTC)
    assert m["price"].to_list() == [11.0, 12.0]
    assert m["ts_event"].to_list() == [t(DAY1, 1.9), t(DAY1, 2.5)]


def test_signal_intervals_merge_and_clip() -> None:
    sig = signals(
        {"signal_id": "a", "ts_event": t(DAY1, 100), "instrument_key": BTC, "target_position": 1},
        {"signal_id": "b", "ts_event": t(DAY1, 112), "instrument_key": BTC, "target_position": 0},
        {"signal_id": "c", "ts_event": t(DAY1, 500), "instrument_key": BTC, "target_position": 1},
        {"signal_id": "d", "ts_event": t(DAY1, 1), "instrument_key": BTC_BYBIT,
         "target_position": 1},
        {"signal_id": "e", "ts_event": t(DAY1, 86_398), "instrument_key": BTC_BYBIT,
         "target_position": 1},
    )  # fmt: skip
    iv = signal_intervals(sig, DAY1, lookback_s=5, grace_s=5)
    got = [(r["instrument_key"], r["start_ns"], r["end_ns"]) for r in iv.iter_rows(named=True)]
    assert got == [
        (BTC, t(DAY1, 95), t(DAY1, 127)),
        (BTC, t(DAY1, 495), t(DAY1, 515)),
        (BTC_BYBIT, t(DAY1, 0), t(DAY1, 16)),
        (BTC_BYBIT, t(DAY1, 86_393), t(DAY1, 86_400) - 1),
    ]
    tr = pl.from_arrow(trades([(t(DAY1, s), 1.0, 1.0, "buy") for s in (90, 95, 127, 128, 500)]))
    kept = filter_to_intervals(tr, iv.filter(pl.col("instrument_key") == BTC))
    assert kept["ts_event"].to_list() == [t(DAY1, s) for s in (95, 127, 500)]


def _snap(**kw: object) -> RiskSnapshot:
    base = dict(last_price=100.0, position=0.0, gross_notional_others=0.0, equity=10_000.0,
                available=True, day="2024-01-01")  # fmt: skip
    base.update(kw)
    return RiskSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "intent", "snap", "expected"),
    [
        (RiskLimits(max_order_quantity=5), OrderIntent(BTC, "BUY", 6, "MARKET"), {},
         "max_order_quantity: 6 > 5"),
        (RiskLimits(max_order_notional=500), OrderIntent(BTC, "BUY", 6, "MARKET"), {},
         "max_order_notional: 600.00 > 500.00 USDT"),
        (RiskLimits(max_position_notional=1000), OrderIntent(BTC, "BUY", 6, "MARKET"),
         {"position": 5.0}, "max_position_notional: 1100.00 > 1000.00 USDT"),
        (RiskLimits(max_gross_leverage=1.0), OrderIntent(BTC, "SELL", 60, "MARKET"),
         {"gross_notional_others": 5000.0}, "max_gross_leverage: 1.1000x > 1.0000x"),
        (RiskLimits(limit_price_band_pct=5), OrderIntent(BTC, "BUY", 1, "LIMIT", 94.0), {},
         "limit_price_band_pct: 6.00% > 5.00%"),
        (RiskLimits(), OrderIntent(BTC, "BUY", 1, "MARKET"), {"available": False},
         "instrument_unavailable"),
    ],
)  # fmt: skip
def test_risk_reasons(
    limits: RiskLimits, intent: OrderIntent, snap: dict[str, object], expected: str
) -> None:
    reason = PreTradeRisk(limits).check(intent, _snap(**snap))
    assert reason is not None and reason.startswith(expected), reason
    ok = PreTradeRisk(limits).check(OrderIntent(BTC, "BUY", 1, "LIMIT", 100.0), _snap())
    assert ok is None


def test_router_all_in_cost_and_ties() -> None:
    r = SmartRouter(primary_venue=None)
    a = VenueQuote(BTC, 100.0, 0.0002, 0.0005, 0.02)
    b = VenueQuote(BTC_BYBIT, 100.02, 0.0002, 0.0001, 0.02)
    # BUY: 100*(1.0005)=100.05 vs 100.02*1.0001=100.030 → BYBIT
    assert r.choose("BUY", "MARKET", [a, b], BTC) == BTC_BYBIT
    # SELL: proceeds 100*0.9995=99.95 vs 100.02*0.9999=100.01 → BYBIT
    assert r.choose("SELL", "MARKET", [a, b], BTC) == BTC_BYBIT
    same = VenueQuote(BTC_BYBIT, 100.0, 0.0002, 0.0005, 0.02)
    assert r.choose("BUY", "MARKET", [a, same], BTC_BYBIT) == BTC_BYBIT  # signal's own
    assert SmartRouter("BINANCE-FUTURES").choose("BUY", "MARKET", [a, same], BTC_BYBIT) == BTC
    assert r.choose("BUY", "MARKET", [a], BTC) == BTC
    assert group_of(BTC) == group_of(BTC_BYBIT) == "PERPETUAL:BTC-USDT"


class FakeCtx:
    """Records what the orchestrator asks for; positions and alerts are driven by the test."""

    def __init__(self) -> None:
        self.now = 0
        self.pos = 0.0
        self.sent: list[tuple[int, str, str, float, str, float | None]] = []
        self.alerts: dict[str, tuple[int, Callable[[], None]]] = {}
        self.canceled: list[str] = []
        self.oms = OMS()

    def now_ns(self) -> int:
        return self.now

    def group_position(self, group: str) -> float:
        return self.pos

    def lot_rules(self, key: str) -> tuple[float, float]:
        return 0.001, 0.001

    def last_prices(self, group: str) -> dict[str, float]:
        return {BTC: 100.0}

    def send(self, op: Operation, qty: float, ot: str, lp: float | None) -> str:
        oid, side = f"O{len(self.sent)}", op.side
        self.sent.append((self.now, op.operation_id, side, qty, ot, lp))
        self.oms.record_submitted(
            oid, op.operation_id, OrderIntent(BTC, side, qty, ot, lp), self.now
        )
        return oid

    def cancel(self, oid: str) -> None:
        self.canceled.append(oid)
        self.oms.on_status(oid, "CANCELED", self.now)

    def open_order_ids(self, op_id: str) -> list[str]:
        return [r.order_id for r in self.oms.open_orders(op_id)]

    def set_alert(self, name: str, ts: int, cb: Callable[[], None]) -> None:
        self.alerts[name] = (ts, cb)

    def cancel_alert(self, name: str) -> None:
        self.alerts.pop(name, None)

    def run_until(self, ts: int) -> None:
        while True:
            due = sorted((v[0], k) for k, v in self.alerts.items() if v[0] <= ts)
            if not due:
                break
            at, name = due[0]
            self.now = at
            self.alerts.pop(name)[1]()
        self.now = ts


def test_orchestrator_twap_rounding_and_supersede() -> None:
    ctx = FakeCtx()
    orch = Orchestrator(ctx, group_of, twap_slice_s=10.0)
    orch.on_signal(Signal("s1", 0, BTC, 1.0005, 40.0, "TWAP"))  # 1.000 after lot rounding
    ctx.run_until(25 * S)
    assert [x[0] for x in ctx.sent] == [0, 10 * S, 20 * S]
    assert [x[3] for x in ctx.sent] == [0.25, 0.25, 0.25]
    ctx.oms.on_status("O2", "ACCEPTED", 25 * S)  # still working at the new signal
    ctx.pos = 0.75
    orch.on_signal(Signal("s2", 25 * S, BTC, 0.0, 10.0, "MARKET"))
    ctx.run_until(60 * S)
    assert len(ctx.sent) == 4  # the 4th slice of s1 never went out; s2's market order did
    assert ctx.sent[-1][1:4] == ("OP-s2", "SELL", 0.75) and "O2" in ctx.canceled
    ops = orch.operations_frame()
    assert ops.filter(pl.col("operation_id") == "OP-s1")["superseded"].item() is True
    # below min quantity after rounding → nothing
    ctx.pos = 0.0
    op = orch.on_signal(Signal("s3", 61 * S, BTC, 0.0004, 10.0, "MARKET"))
    assert op.order_quantity == 0 and op.status == "NO_ACTION"


def test_oms_rejected_ids_are_deterministic() -> None:
    oms = OMS()
    a = oms.record_risk_rejected(
        "OP-x", OrderIntent(BTC, "BUY", 1, "MARKET"), 5, "max_order_quantity"
    )
    b = oms.record_risk_rejected(
        "OP-x", OrderIntent(BTC, "BUY", 1, "MARKET"), 6, "max_order_quantity"
    )
    assert (a.order_id, b.order_id) == ("R-OP-x-1", "R-OP-x-2")
    assert oms.orders_frame()["status"].to_list() == ["REJECTED", "REJECTED"]


def test_oms_final_status_rule() -> None:
    """Partly filled then cancelled → PARTIALLY_FILLED; nothing filled → CANCELED (oms.py)."""
    oms = OMS()
    oms.record_submitted("A", "OP-1", OrderIntent(BTC, "BUY", 1.0, "LIMIT", 100.0), 1)
    oms.record_submitted("B", "OP-1", OrderIntent(BTC, "BUY", 1.0, "LIMIT", 100.0), 1)
    oms.record_submitted("C", "OP-1", OrderIntent(BTC, "BUY", 1.0, "MARKET", None), 1)
    for oid in "ABC":
        oms.on_status(oid, "ACCEPTED", 2)
    oms.on_status("A", "FILLED_PART", 3, fill_qty=0.4)
    assert oms.get("A").status == "PARTIALLY_FILLED" and oms.get("A").is_open
    oms.on_status("A", "CANCELED", 4)
    oms.on_status("B", "CANCELED", 4)
    assert (oms.get("A").status, oms.get("A").is_open) == ("PARTIALLY_FILLED", False)
    assert oms.get("B").status == "CANCELED"
    assert [h[0] for h in oms.get("A").history] == [
        "SUBMITTED", "ACCEPTED", "PARTIALLY_FILLED", "CANCELED"
    ]  # fmt: skip
    oms.on_status("B", "CANCELED", 9)  # a late duplicate only adds history
    assert oms.get("B").updated_at == 4
    assert oms.close_all_open(10, "unresolved_at_run_end") == ["C"]
    c = oms.get("C")
    assert (c.status, c.rejection_reason, c.is_open) == ("CANCELED", "unresolved_at_run_end", False)
    assert set(oms.orders_frame()["status"]) <= {"FILLED", "PARTIALLY_FILLED", "CANCELED",
                                                 "REJECTED", "EXPIRED"}  # fmt: skip


def test_router_drift_is_in_bps_per_second() -> None:
    # Same price and fee; 200 ms vs 5 ms latency; 1 bp/s → 0.2 bp vs 0.005 bp of drift.
    slow = VenueQuote(BTC, 100.0, 0.0002, 0.0005, 0.2)
    fast = VenueQuote(BTC_BYBIT, 100.0, 0.0002, 0.0005, 0.005)
    r = SmartRouter("BINANCE-FUTURES", drift_bps_per_s=1.0)
    assert r.cost(slow, "BUY", "MARKET") == pytest.approx(100.0 * (1 + 0.0005 + 0.2e-4))
    assert r.choose("BUY", "MARKET", [slow, fast], BTC) == BTC_BYBIT
    assert SmartRouter("BINANCE-FUTURES").choose("BUY", "MARKET", [slow, fast], BTC) == BTC
    with pytest.raises(ValueError, match="drift_bps_per_s"):
        SmartRouter(None, -1.0)


def test_orchestrator_market_window_end_cancels_what_is_still_open() -> None:
    ctx = FakeCtx()
    orch = Orchestrator(ctx, group_of)
    orch.on_signal(Signal("s1", 0, BTC, 1.0, 5.0, "MARKET"))
    ctx.run_until(5 * S)
    assert ctx.canceled == ["O0"]  # never filled (the fake has no venue) → cancelled at the end
    ops = orch.operations_frame().row(0, named=True)
    assert ops["shortfall"] == 1.0 and ops["superseded"] is False
