"""The Nautilus ``Strategy`` that hosts the orchestrator, risk, OMS and router inside the engine.

It is the :class:`ExecutionContext` of the orchestrator: positions and last prices come from the
engine's portfolio and cache, timers from its clock, and order events flow back into the OMS.
Signals and funding events are scheduled as clock time alerts, so they interleave with the ticks
exactly at their timestamps, including across the streamed day boundaries.

Timing of orders across gaps in the data. Nautilus processes commands in flight (submit/cancel
after the venue's latency) only when the engine settles its venues, which it does at data points
and timer events. Signal-driven runs stream only the ticks of signal intervals, so without care
an order or a cancel due at ``t + latency`` waits for the next interval's first tick (minutes
later) and is processed *after* that tick was matched: market orders then fill at a later price
and time, and a window-end cancel arrives after the order already filled in the next interval.
Every command we send therefore sets a no-op alert at its exact due time
(:meth:`ExecutionStrategy._settle_at`), so it reaches the venue when it would have live.

Final statuses: every operation's window end cancels what is still working (any algo), and the
last day's end-of-run sweep cancels whatever is left (``SWEEP`` alert, active only once
``run_engine`` announces the end of the run), so no order ends SUBMITTED/ACCEPTED.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from nautilus_trader.backtest.config import SimulationModuleConfig
from nautilus_trader.backtest.modules import SimulationModule
from nautilus_trader.common.component import Logger
from nautilus_trader.config import StrategyConfig
from nautilus_trader.model.enums import OrderSide, OrderStatus, OrderType, TimeInForce
from nautilus_trader.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDenied,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderRejected,
)
from nautilus_trader.model.identifiers import ClientOrderId, InstrumentId, Venue
from nautilus_trader.model.instruments import Instrument
from nautilus_trader.model.objects import Currency, Money, Price, Quantity
from nautilus_trader.trading.strategy import Strategy

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.books import InvalidPeriod
from backtest_pipeline.engine import instruments as names
from backtest_pipeline.engine.output import avg_slippage_bps
from backtest_pipeline.engine.records import FILLS_SCHEMA, DailyRows
from backtest_pipeline.trading.oms import OMS
from backtest_pipeline.trading.orchestrator import Operation, Orchestrator, Signal
from backtest_pipeline.trading.risk import OrderIntent, PreTradeRisk, RiskSnapshot
from backtest_pipeline.trading.router import SmartRouter, VenueQuote, group_of, groups

log = logging.getLogger("backtest_pipeline.engine")


class VenueHandle(SimulationModule):
    """Gives the strategy the venue's ``SimulatedExchange`` (for ``adjust_account``).

    ``BacktestEngine`` keeps its exchanges private; a simulation module is the supported way to
    be handed one. It does nothing per tick, and ``engine._build_engine`` takes it out of the
    exchange's module list once registered so the engine does not call it per tick.
    """

    def __init__(self) -> None:
        super().__init__(SimulationModuleConfig())

    def process(self, ts_now: int) -> None:  # noqa: D401 - Nautilus hook
        return None

    def log_diagnostics(self, logger: Logger) -> None:
        return None

    def reset(self) -> None:
        return None


@dataclass(frozen=True)
class InstrumentInfo:
    key: str
    venue: str
    instrument: Instrument
    lot: float
    min_qty: float
    maker_fee: float
    taker_fee: float
    latency_s: float
    tick: Decimal
    insert_ns: int  # venue latency of a submit (base + insert), as Nautilus applies it
    cancel_ns: int  # venue latency of a cancel (base + cancel)


@dataclass(frozen=True)
class FundingEvent:
    ts_event: int
    instrument_key: str
    funding_rate: float
    mark_price: float


def latency_ns(ms: float) -> int:
    """Milliseconds → the integer nanoseconds the engine's ``LatencyModel`` is built with."""
    return round(ms * 1_000_000)


class ExecutionStrategy(Strategy):
    """Hosts orchestrator, risk, OMS and router; every knob comes from the run configuration.

    It does not subscribe to market data: last prices are read from the engine cache on demand
    (the data engine caches every trade tick), so there is no Python callback per tick.
    """

    # The clock's handlers (see `set_alert`), made on first use; class-level so they need no
    # line in `__init__`.
    _dispatch: Callable[[Any], None] | None = None
    _due_handler: Callable[[Any], None] | None = None
    _alert_callbacks: dict[str, Callable[[], None]]

    def __init__(self, config: BacktestConfig, venue_handles: dict[str, VenueHandle]) -> None:
        super().__init__(StrategyConfig(strategy_id="EXEC-001", order_id_tag="001"))
        self.run_config = config
        self.currency = Currency.from_str(config.account_currency)
        self.venue_handles = venue_handles
        self.info: dict[str, InstrumentInfo] = {}
        self.iids: dict[str, InstrumentId] = {}
        self.group_members = groups(config.instruments)
        self.available: dict[int, set[str]] = {}  # day index (ns // 86400e9) → keys
        self.oms = OMS()
        self.risk = PreTradeRisk(config.risk, config.account_currency)
        self.router = SmartRouter(config.primary_venue, config.router_drift_bps_per_s)
        self.orch = Orchestrator(
            self,
            group_of,
            config.twap_slice_s,
            twap_slices=config.algo.twap_slices,
            limit_price_source=config.algo.limit_price_source,
            limit_offset_bps=config.algo.limit_offset_bps,
        )
        self.fills = DailyRows(FILLS_SCHEMA)  # frozen to a frame at each day's end
        self.funding_rows: list[tuple[Any, ...]] = []
        self.signals_seen = 0
        # Per fill with a reference price: (quantity × signed slippage in bps, quantity).
        self.slippage_terms: list[tuple[float, float]] = []
        self._pending: list[tuple[str, int, Callable[[], None]]] = []
        self._signal_times: list[int] = []  # heap: times of the signal alerts not fired yet
        self._sweep_times: list[int] = []  # heap: times of the day-end sweep alerts not fired yet
        # Whether a venue may be left alone while only limit orders rest there (engine/feed.py):
        # its fills then depend on nothing but the prints that reach the limit.
        self.rest_keys: set[str] = set()
        self._started = False
        self._due: set[int] = set()
        self._arrives: dict[str, int] = {}  # order id → when its submit reaches the venue
        self._fill_seq: dict[str, int] = {}  # order id → fills so far (fill ids: <order>-F<n>)
        self.risk_log: list[tuple[OrderIntent, RiskSnapshot, str | None]] | None = None
        self.lost: list[str] = []  # orders the venue dropped without an event (see on_order_event)
        self.stale_book_orders = 0  # orders sent while the venue's book predated the interval
        # Per depth instrument, the periods its stored book is unknown (sequence gaps), in
        # time order; orders arriving there are rejected, working ones cancelled at the start.
        self.book_invalid: dict[str, list[InvalidPeriod]] = {}
        self.book_invalid_rejected = 0
        self.book_invalid_canceled = 0
        self._cancel_reasons: dict[str, str] = {}  # order id → why we cancelled it
        # Instruments whose venue book comes from quotes or snapshots: each interval starts from
        # the one in force before it, so that book is always the market's, never stale.
        self.book_keys: set[str] = set()
        self._lookback_ns = round(config.lookback_s * 1e9)
        self.ending = False  # set by run_engine just before engine.end(): arms the SWEEP alerts
        self.swept: list[str] = []  # orders cancelled by the end-of-run sweep
        self.errors: list[BaseException] = []
        self._sweep_offset_ns = 1 + max(
            (
                latency_ns(config.venue(v).latency.base_ms)
                + latency_ns(config.venue(v).latency.cancel_ms)
                for v in config.venue_names
            ),
            default=0,
        )

    # -- setup -----------------------------------------------------------------------------

    def register_instrument(self, key: str, instrument: Instrument) -> None:
        venue = names.venue_of_key(key)
        lat = self.run_config.venue(venue).latency
        self.info[key] = InstrumentInfo(
            key=key,
            venue=venue,
            instrument=instrument,
            lot=float(instrument.size_increment),
            min_qty=float(instrument.min_quantity) if instrument.min_quantity else 0.0,
            maker_fee=float(instrument.maker_fee),
            taker_fee=float(instrument.taker_fee),
            latency_s=(lat.base_ms + lat.insert_ms) / 1000.0,
            tick=instrument.price_increment.as_decimal(),
            insert_ns=latency_ns(lat.base_ms) + latency_ns(lat.insert_ms),
            cancel_ns=latency_ns(lat.base_ms) + latency_ns(lat.cancel_ms),
        )
        self.iids[key] = instrument.id

    def set_available(self, day_index: int, keys: set[str]) -> None:
        self.available[day_index] = keys

    def schedule_day(
        self,
        day_label: str,
        signals: list[Signal],
        funding: list[FundingEvent],
        day_end_ns: int | None = None,
    ) -> None:
        """Time alerts for the day's signals and funding events (one per distinct timestamp).

        Grouping by timestamp keeps the processing order the file order, whatever order the
        clock would give equal-time alerts. ``day_end_ns`` (exclusive) adds the day's end-of-run
        sweep, timed so its cancels reach the venues by the run's last nanosecond; it acts only
        if the day turns out to be the last one (``self.ending``).
        """
        if day_end_ns is not None:
            heapq.heappush(self._sweep_times, day_end_ns - 1 - self._sweep_offset_ns)
            self._schedule(
                f"SWEEP:{day_label}", day_end_ns - 1 - self._sweep_offset_ns, self._on_sweep
            )
        by_ts: dict[int, list[Signal]] = {}
        for s in signals:
            by_ts.setdefault(s.ts_event, []).append(s)
        for ts, sigs in by_ts.items():
            heapq.heappush(self._signal_times, ts)
            self._schedule(f"SIG:{ts}", ts, lambda sigs=sigs: self._on_signals(sigs))
        f_by_ts: dict[int, list[FundingEvent]] = {}
        for f in funding:
            f_by_ts.setdefault(f.ts_event, []).append(f)
        for ts, evs in f_by_ts.items():
            self._schedule(f"FUND:{ts}", ts, lambda evs=evs: self._on_funding(evs))

    def add_book_invalid(self, key: str, periods: list[InvalidPeriod]) -> None:
        """A day's invalid periods of ``key``'s book (days come in order).

        Each start gets an alert timed so the cancels of the orders still working reach the
        venue by the start (one cancel latency before it): no order rests on the stale book.
        """
        self.book_invalid.setdefault(key, []).extend(periods)
        lead = self.info[key].cancel_ns
        for p in periods:
            ts = p.start_ns - lead
            if self._started:
                ts = max(ts, self.clock.timestamp_ns() + 1)
            self._schedule(
                f"BOOK-INVALID:{key}:{p.start_ns}",
                ts,
                lambda key=key, p=p: self._cancel_for_invalid_book(key, p),
            )

    def invalid_period(self, key: str, ts_ns: int) -> InvalidPeriod | None:
        """The invalid period of ``key``'s book containing ``ts_ns``, if any."""
        periods = self.book_invalid.get(key)
        if not periods:
            return None
        i = bisect.bisect_right([p.start_ns for p in periods], ts_ns) - 1
        return periods[i] if i >= 0 and periods[i].contains(ts_ns) else None

    def _cancel_for_invalid_book(self, key: str, period: InvalidPeriod) -> None:
        reason = period.describe()
        n = 0
        for rec in self.oms.records():
            if (
                rec.is_open
                and rec.instrument_key == key
                and not rec.order_id.startswith("R-")
                and rec.order_id not in self._cancel_reasons  # already being cancelled
            ):
                self._cancel_reasons[rec.order_id] = reason
                self.cancel(rec.order_id)
                n += 1
        self.book_invalid_canceled += n
        if n:
            log.warning("%s: %d working order(s) cancelled: %s", key, n, reason)

    def _on_sweep(self) -> None:
        now = self.clock.timestamp_ns()
        while self._sweep_times and self._sweep_times[0] <= now:
            heapq.heappop(self._sweep_times)
        self.sweep_open()

    def sweep_open(self) -> None:
        """End of run: cancel every order still working (no-op before the run's last day)."""
        if not self.ending:
            return
        for rec in self.oms.records():
            if rec.is_open and not rec.order_id.startswith("R-"):
                self.swept.append(rec.order_id)
                self.cancel(rec.order_id)

    def _settle_at(self, ts: int) -> None:
        """A no-op alert at ``ts`` so the engine settles the venues exactly then (module doc)."""
        if ts <= self.clock.timestamp_ns() or ts in self._due:
            return
        self._due.add(ts)
        if self._due_handler is None:
            # One bound method for every settle alert: the clock keeps what it is handed.
            self._due_handler = self._on_due
        self.clock.set_time_alert_ns(f"DUE:{ts}", ts, self._due_handler)

    def _on_due(self, event: Any) -> None:
        self._due.discard(event.ts_event)

    def _schedule(self, name: str, ts: int, cb: Callable[[], None]) -> None:
        if self._started:
            self.set_alert(name, ts, cb)
        else:
            self._pending.append((name, ts, cb))

    def on_start(self) -> None:
        self._started = True
        for name, ts, cb in self._pending:
            self.set_alert(name, ts, cb)
        self._pending.clear()

    def on_stop(self) -> None:
        """Nothing to undo: the driver sweeps open orders and closes the books itself.

        Defined so that NautilusTrader does not warn, at the end of every run, that it is not.
        """

    # -- what the operations feed asks (engine/feed.py) -----------------------------------

    def needs_market(self) -> bool:
        """An order of ours working or in flight."""
        return self.oms.open_count > 0

    def latency_span_ns(self) -> int:
        """The slowest venue's submit or cancel latency: how long a market order takes at least."""
        spans = [
            latency_ns(lat.base_ms) + latency_ns(max(lat.insert_ms, lat.cancel_ms))
            for lat in (self.run_config.venue(v).latency for v in self.run_config.venue_names)
        ]
        return max(spans, default=0)

    def next_work_ns(self) -> int | None:
        """When something of ours may next send an order: a signal, or a TWAP child."""
        due = [t for t in (self.orch.next_child_ns(), self._next_signal_ns()) if t is not None]
        return min(due, default=None)

    def resting_limits(self) -> list[tuple[str, bool, float]] | None:
        """``(key, is buy, limit price)`` of every working order, when all of them are limit
        orders resting at a venue that may be left alone (None otherwise: feed every tick).

        Resting = accepted at the venue and not filled at all, nothing in flight, no cancel
        pending: until a print reaches one of these limits or an alert acts, nothing changes.
        A partly filled order is not resting: the print that filled it left the venue's core
        crossed through its price, so the next print may fill it whatever its side.
        """
        out: list[tuple[str, bool, float]] = []
        for oid in self.oms.open_ids():
            order = self.cache.order(ClientOrderId(oid))
            if (
                order is None
                or order.order_type != OrderType.LIMIT
                or order.status != OrderStatus.ACCEPTED
            ):
                return None
            key = names.key_for(order.instrument_id)
            if key not in self.rest_keys:
                return None
            out.append((key, order.side == OrderSide.BUY, order.price.as_double()))
        return out

    def next_alert_ns(self) -> int | None:
        """The next alert that can act on a working order: an operation's child or window end,
        a signal, or a day-end sweep (funding and settle alerts never do)."""
        due = [
            t
            for t in (self.orch.next_alert_ns(), self._next_signal_ns(),
                      self._sweep_times[0] if self._sweep_times else None)
            if t is not None
        ]  # fmt: skip
        return min(due, default=None)

    def _next_signal_ns(self) -> int | None:
        return self._signal_times[0] if self._signal_times else None

    # -- ExecutionContext ------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock.timestamp_ns()

    def position(self, key: str) -> float:
        iid = self.iids.get(key)
        if iid is None:
            return 0.0
        return float(self.portfolio.net_position(iid))

    def group_position(self, group: str) -> float:
        return sum(self.position(k) for k in self.group_members.get(group, []))

    def lot_rules(self, instrument_key: str) -> tuple[float, float]:
        i = self.info[instrument_key]
        return i.lot, i.min_qty

    def last_price(self, key: str) -> float | None:
        iid = self.iids.get(key)
        if iid is None:
            return None
        tick = self.cache.trade_tick(iid)
        return tick.price.as_double() if tick is not None else None

    def last_prices(self, group: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in self.group_members.get(group, []):
            p = self.last_price(k)
            if p is not None:
                out[k] = p
        return out

    def _is_available(self, key: str) -> bool:
        # Alerts after a day's last tick may fire at the next day's start or at the final
        # flush: use the latest loaded day not after now.
        day = self.now_ns() // 86_400_000_000_000
        known = [d for d in self.available if d <= day]
        return bool(known) and key in self.available[max(known)] and key in self.info

    def _equity_and_gross(self, exclude: str) -> tuple[float, float]:
        equity = 0.0
        for v in {i.venue for i in self.info.values()}:
            acct = self.cache.account_for_venue(Venue(names.to_nautilus_venue(v)))
            if acct is not None:
                bal = acct.balance_total(self.currency)
                equity += bal.as_double() if bal is not None else 0.0
        gross = 0.0
        for key, info in self.info.items():
            pos = self.position(key)
            if pos == 0:
                continue
            last = self.last_price(key)
            if last is None:
                continue
            for p in self.cache.positions_open(instrument_id=info.instrument.id):
                equity += p.signed_qty * (last - p.avg_px_open)
            if key != exclude:
                gross += abs(pos) * last
        return equity, gross

    def send(self, op: Operation, qty: float, order_type: str, limit: float | None) -> str | None:
        side, quantity, limit_price = op.side, qty, limit
        candidates = [
            VenueQuote(k, self.last_price(k), i.maker_fee, i.taker_fee, i.latency_s)
            for k in self.group_members.get(op.group, [])
            if (i := self.info.get(k)) is not None and self._is_available(k)
        ]
        key = self.router.choose(side, order_type, candidates, op.signal.instrument_key)
        now = self.now_ns()
        info = self.info.get(key)
        last = self.last_price(key)
        price = limit_price if order_type == "LIMIT" and limit_price is not None else None
        if order_type == "LIMIT" and price is None:
            price = last
        if info is not None:
            units = math.floor(quantity / info.lot + 1e-9)
            quantity = units * info.lot
            if price is not None and order_type == "LIMIT":
                # Round the limit price passively: a buy never pays above what was asked.
                d = Decimal(repr(price)) / info.tick
                mode = ROUND_FLOOR if side == "BUY" else ROUND_CEILING
                price = float(d.to_integral_value(rounding=mode) * info.tick)
        reason: str | None = None
        gap = self.invalid_period(key, now + info.insert_ns) if info is not None else None
        if gap is not None:
            # The book the order would meet on arrival is unknown: rejecting it is the only
            # answer that is not a silently wrong fill (docs/execution.md, invalid books).
            reason = gap.describe()
            self.book_invalid_rejected += 1
            log.warning("%s: order of operation %s rejected: %s", key, op.operation_id, reason)
        elif order_type == "LIMIT" and price is None:
            reason = f"no_reference_price: LIMIT without limit_price and no trade seen for {key}"
        elif info is not None and (quantity <= 0 or quantity < info.min_qty - 1e-12):
            reason = (
                f"min_quantity: {quantity:.8g} < {info.min_qty:.8g} on {key} after lot rounding"
            )
        else:
            equity, gross = self._equity_and_gross(key)
            snap = RiskSnapshot(
                last_price=last,
                position=self.position(key),
                gross_notional_others=gross,
                equity=equity,
                available=self._is_available(key),
                day=_day_label(now),
                allow_short=(
                    layout.parse_instrument_key(key)[1] != "SPOT"
                    or self.run_config.allow_spot_short
                ),
            )
            intent = OrderIntent(key, side, quantity, order_type, price)
            reason = self.risk.check(intent, snap)
            if self.risk_log is not None and self.run_config.risk.max_gross_leverage is not None:
                # A time shard's account balance is offset from the one-engine run's; these
                # checks are replayed with the true equity before the shard is accepted.
                self.risk_log.append((intent, snap, reason))
        if reason is not None or info is None:
            self.oms.record_risk_rejected(
                op.operation_id,
                OrderIntent(key, side, quantity, order_type, price),
                now,
                reason or f"instrument_unavailable: {key}",
            )
            return None
        inst = info.instrument
        qty = Quantity(quantity, inst.size_precision)
        o_side = OrderSide.BUY if side == "BUY" else OrderSide.SELL
        # Ids are a function of the signal, not of the run's history (Nautilus's own counters
        # are): the same order has the same id in a one-engine run and in a time shard.
        cid = ClientOrderId(f"{op.operation_id}-{op.children_sent}")
        if order_type == "MARKET":
            # Known trap (Nautilus 1.231, liquidity_consumption=True on trade-tick L1 books): a
            # market order that finds its level "consumed" (an earlier print of the SAME size at
            # that price) gets no fill and no event. IOC does not help (it then cancels partial
            # fills early). Such an order is closed by the window-end cancel or, failing that,
            # by OMS.close_all_open (stats["orders_unresolved"]).
            tif = TimeInForce.GTC
            order = self.order_factory.market(
                inst.id, o_side, qty, time_in_force=tif, client_order_id=cid
            )
        else:
            assert price is not None
            order = self.order_factory.limit(
                inst.id,
                o_side,
                qty,
                Price(price, inst.price_precision),
                TimeInForce.GTC,
                client_order_id=cid,
            )
        oid = order.client_order_id.value
        self.oms.record_submitted(
            oid, op.operation_id, OrderIntent(key, side, quantity, order_type, price), now
        )
        self.submit_order(order)
        self._arrives[oid] = now + info.insert_ns
        upcoming = self._next_invalid(key, now + info.insert_ns)
        if upcoming is not None and now >= upcoming.start_ns - info.cancel_ns:
            # Sent after that period's cancels went out: it would rest into the period.
            self._cancel_reasons[oid] = upcoming.describe()
            self.book_invalid_canceled += 1
            self.cancel(oid)
        if self._book_is_current(key, op.signal.ts_event):
            self._settle_at(now + info.insert_ns)
        else:
            self.stale_book_orders += 1
        return oid

    def _next_invalid(self, key: str, ts_ns: int) -> InvalidPeriod | None:
        """The first invalid period of ``key`` starting after ``ts_ns``."""
        periods = self.book_invalid.get(key) or []
        i = bisect.bisect_right([p.start_ns for p in periods], ts_ns)
        return periods[i] if i < len(periods) else None

    def _book_is_current(self, key: str, signal_ts: int) -> bool:
        """Whether the venue's trade-built book reflects the market around this signal.

        The streamed ticks are contiguous from ``signal − lookback_s`` on, so a last tick at or
        after that instant is the true last trade. An older one comes from an earlier interval:
        the market moved in between unseen, and an order matched at arrival would fill at that
        stale price. Such an order gets no settle alert and is processed with the venue's next
        print instead (filled at a price that traded, a little late). Full-day runs always see
        the true last trade.
        """
        if self.run_config.full_day or key in self.book_keys:
            return True
        iid = self.iids.get(key)
        tick = self.cache.trade_tick(iid) if iid is not None else None
        return tick is not None and tick.ts_event >= signal_ts - self._lookback_ns

    def cancel(self, order_id: str) -> None:
        """Cancel a working or in-flight order (the venue acks after its cancel latency)."""
        order = self.cache.order(ClientOrderId(order_id))
        if order is None or order.is_closed or order.is_pending_cancel:
            return
        self.cancel_order(order)
        key = names.key_for(order.instrument_id)
        self._settle_at(self.clock.timestamp_ns() + self.info[key].cancel_ns)

    def open_order_ids(self, operation_id: str) -> list[str]:
        return [r.order_id for r in self.oms.open_orders(operation_id)]

    def set_alert(self, name: str, ts_ns: int, callback: Callable[[], None]) -> None:
        """An alert at ``ts_ns`` whose callback is held here, not by the engine's clock.

        NautilusTrader's TestClock keeps the callback of every alert it ever fired for the
        engine's lifetime, so a closure per alert (a signal batch, a TWAP slice) would make a
        long run's memory grow with its days. The clock is handed one long-lived dispatcher
        instead, and the callback is dropped once it fired or was cancelled. Names and times
        are unchanged, so the clock orders simultaneous alerts exactly as before.
        """
        if self._dispatch is None:
            self._alert_callbacks = {}
            self._dispatch = self._fire_alert
        self.clock.set_time_alert_ns(name, ts_ns, self._dispatch)
        self._alert_callbacks[name] = callback

    def cancel_alert(self, name: str) -> None:
        if name in self.clock.timer_names:
            self.clock.cancel_timer(name)
        if self._dispatch is not None:
            self._alert_callbacks.pop(name, None)

    def _fire_alert(self, event: Any) -> None:
        cb = self._alert_callbacks.pop(event.name, None)
        if cb is not None:
            self._guard(cb)

    def _guard(self, cb: Callable[[], None]) -> None:
        # An exception inside a clock callback would be logged and swallowed by the engine;
        # keep it so run_engine can raise it after the day.
        try:
            cb()
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)

    # -- signals and funding ---------------------------------------------------------------

    def _on_signals(self, sigs: list[Signal]) -> None:
        while self._signal_times and self._signal_times[0] <= sigs[0].ts_event:
            heapq.heappop(self._signal_times)
        for s in sigs:
            self.signals_seen += 1
            self.orch.on_signal(s)

    def _on_funding(self, events: list[FundingEvent]) -> None:
        for ev in events:
            pos = self.position(ev.instrument_key)
            if pos == 0:
                continue
            payment = pos * ev.mark_price * ev.funding_rate
            self.funding_rows.append(
                (ev.ts_event, ev.instrument_key, pos, ev.mark_price, ev.funding_rate, payment)
            )
            handle = self.venue_handles[names.venue_of_key(ev.instrument_key)]
            handle.exchange.adjust_account(Money(-payment, self.currency))

    def forget_orders(self, order_ids: list[str]) -> None:
        """Drop the per-order lookups of orders the engine has closed (called once a day).

        They serve events still to come (a fill's sequence number, a cancel's reason, a cancel
        rejected before the submit arrived); a closed order gets none, and kept they grow
        with every order of the run.
        """
        for oid in order_ids:
            self._arrives.pop(oid, None)
            self._fill_seq.pop(oid, None)
            self._cancel_reasons.pop(oid, None)

    # -- order events ----------------------------------------------------------------------

    def on_order_event(self, event: OrderEvent) -> None:
        oid = event.client_order_id.value
        ts = event.ts_event
        if isinstance(event, OrderFilled):
            self._on_fill(event)
        elif isinstance(event, OrderAccepted):
            self.oms.on_status(oid, "ACCEPTED", ts)
        elif isinstance(event, OrderCanceled):
            self.oms.on_status(oid, "CANCELED", ts, reason=self._cancel_reasons.get(oid))
        elif isinstance(event, OrderExpired):
            self.oms.on_status(oid, "EXPIRED", ts)
        elif isinstance(event, OrderRejected):
            self.oms.on_status(oid, "REJECTED", ts, reason=f"venue: {event.reason}")
        elif isinstance(event, OrderDenied):
            self.oms.on_status(oid, "REJECTED", ts, reason=f"nautilus_risk: {event.reason}")
        elif isinstance(event, OrderCancelRejected):
            self._on_cancel_rejected(event)

    def _on_cancel_rejected(self, event: OrderCancelRejected) -> None:
        """Close an order the venue silently dropped, as soon as a cancel proves it.

        Nautilus 1.231 can drop an order without any event (a market order meeting a consumed
        L1 level with ``liquidity_consumption``). When our cancel is rejected because the venue
        does not know the order although its submit reached the venue already, the order can
        never fill: it is CANCELED (PARTIALLY_FILLED if part traded) with the reason, instead of
        staying SUBMITTED. A cancel that merely overtook its own submit (cancel latency shorter
        than insert latency) is left alone.
        """
        oid = event.client_order_id.value
        if oid not in self.oms or not self.oms.get(oid).is_open:
            return
        if self.clock.timestamp_ns() < self._arrives.get(oid, 0):
            return
        key = names.key_for(event.instrument_id)
        handle = self.venue_handles[names.venue_of_key(key)]
        engine = handle.exchange.get_matching_engine(event.instrument_id)
        if engine is not None and engine.order_exists(event.client_order_id):
            return
        self.lost.append(oid)
        self.oms.on_status(
            oid, "CANCELED", event.ts_event,
            reason=f"venue_dropped_order: unknown to the venue at cancel ({event.reason})",
        )  # fmt: skip

    def _on_fill(self, ev: OrderFilled) -> None:
        oid = ev.client_order_id.value
        qty = float(ev.last_qty)
        px = float(ev.last_px)
        rec = self.oms.on_status(oid, "FILLED_PART", ev.ts_event, fill_qty=qty)
        key = names.key_for(ev.instrument_id)
        side = "BUY" if ev.order_side == OrderSide.BUY else "SELL"
        fee = self._fee_in_account_ccy(ev.commission, key, px)
        n = self._fill_seq.get(oid, 0) + 1
        self._fill_seq[oid] = n
        self.fills.append(
            (
                f"{oid}-F{n}", oid, key, side, qty, px, fee,
                # The instrument's own venue string, shared by its fills rather than one each.
                self.run_config.account_currency, ev.ts_event, self.info[key].venue,
            )
        )  # fmt: skip
        if rec is None:
            return
        signed = qty if side == "BUY" else -qty
        self.orch.on_fill(rec.operation_id, signed)
        op = self.orch.operations.get(rec.operation_id)
        ref = op.ref_prices.get(key) if op is not None else None
        if ref:
            sign = 1.0 if side == "BUY" else -1.0
            self.slippage_terms.append((qty * sign * (px - ref) / ref * 1e4, qty))

    def _fee_in_account_ccy(self, commission: Money, key: str, px: float) -> float:
        code = commission.currency.code
        if code == self.run_config.account_currency:
            return commission.as_double()
        inst = self.info[key].instrument
        if code == inst.base_currency.code:
            return commission.as_double() * px
        raise ValueError(f"{key}: commission in {code} cannot be converted to the account currency")

    @property
    def avg_slippage_bps(self) -> float | None:
        return avg_slippage_bps(self.slippage_terms)


def _day_label(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).date().isoformat()
