"""Execution orchestrator: turns each signal into an *operation* worked by its algo.

It owns the scheduling logic only (how much, when, which algo); where an order goes, whether it
may go and how it is recorded belong to the router, the risk layer and the OMS behind the
:class:`ExecutionContext`. That split lets these rules be tested with a fake context, without an
engine.

Rules:
- quantity = target − current position of the asset (net over the venues of its router group),
  rounded toward zero to the signal instrument's lot size; nothing below ``min_quantity``. The
  position is the *filled* position at signal time (orders still in flight are not netted).
- MARKET: one market order now.
- LIMIT: one limit order now (``limit_price`` or, when null, the last trade price of the venue it
  is routed to). With ``limit_price_source="last"`` the signal's price is ignored; with
  ``limit_offset_bps`` the price moves that far from its reference (the signal's price, else the
  signal instrument's last trade at signal time), away from the market for a positive offset.
- TWAP: ``n = max(2, floor(window / twap_slice_s))`` (or ``twap_slices`` when set) market children of equal lot-multiples at
  ``ts + i·window/n`` (i = 0..n−1); the last absorbs the rounding. ``n`` shrinks when the quantity
  has fewer lots than slices.
- Whatever the algo, at ``ts + execution_window_s`` every order of the operation still working is
  cancelled (a market order too: one the venue could not fill must not stay open), and the
  operation's unfilled quantity is its ``shortfall``.
- A new signal on an asset supersedes its unfinished operation: open orders are cancelled first,
  pending timers are stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

OPERATIONS_SCHEMA: dict[str, pl.DataType] = {
    "operation_id": pl.Utf8(),
    "signal_id": pl.Utf8(),
    "instrument_key": pl.Utf8(),
    "ts_event": pl.Int64(),
    "algo": pl.Utf8(),
    "target_position": pl.Float64(),
    "start_position": pl.Float64(),
    "order_quantity": pl.Float64(),
    "filled_quantity": pl.Float64(),
    "shortfall": pl.Float64(),
    "status": pl.Utf8(),
    "superseded": pl.Boolean(),
}

ALGOS = ("MARKET", "LIMIT", "TWAP")
_END = "end"  # tag of the window-end alert


@dataclass(frozen=True)
class Signal:
    signal_id: str
    ts_event: int
    instrument_key: str
    target_position: float
    execution_window_s: float
    algo: str
    limit_price: float | None = None


@dataclass
class Operation:
    operation_id: str
    signal: Signal
    group: str
    start_position: float
    order_quantity: float  # signed: + buy, − sell
    ref_prices: dict[str, float] = field(default_factory=dict)
    filled_quantity: float = 0.0  # signed
    superseded: bool = False
    stopped: bool = False
    alerts: list[str] = field(default_factory=list)
    children_sent: int = 0
    children_rejected: int = 0

    @property
    def side(self) -> str:
        return "BUY" if self.order_quantity > 0 else "SELL"

    @property
    def shortfall(self) -> float:
        """Unfilled quantity (≥ 0, base units) of what the operation set out to trade."""
        return max(0.0, abs(self.order_quantity) - abs(self.filled_quantity))

    @property
    def status(self) -> str:
        if self.order_quantity == 0:
            return "NO_ACTION"
        if self.shortfall <= 1e-12:
            return "FILLED"
        if abs(self.filled_quantity) > 0:
            return "PARTIALLY_FILLED"
        if self.children_sent and self.children_rejected == self.children_sent:
            return "REJECTED"
        return "UNFILLED"


class ExecutionContext(Protocol):
    """What the orchestrator needs from the host (a Nautilus strategy, or a test fake)."""

    def now_ns(self) -> int: ...

    def group_position(self, group: str) -> float: ...

    def lot_rules(self, instrument_key: str) -> tuple[float, float]:
        """(lot_size, min_quantity) of an instrument."""
        ...

    def last_prices(self, group: str) -> dict[str, float]: ...

    def send(self, op: Operation, qty: float, order_type: str, limit: float | None) -> str | None:
        """Route, risk-check, record and submit a child of ``op`` (its side); the order id or None."""
        ...

    def cancel(self, order_id: str) -> None: ...

    def open_order_ids(self, operation_id: str) -> list[str]: ...

    def set_alert(self, name: str, ts_ns: int, callback: Callable[[], None]) -> None: ...

    def cancel_alert(self, name: str) -> None: ...


def lots_toward_zero(quantity: float, lot: float) -> int:
    """Whole lots in |quantity|, rounded toward zero (tolerant to float noise like 0.3/0.1)."""
    return int(math.floor(abs(quantity) / lot + 1e-9))


class Orchestrator:
    def __init__(
        self,
        ctx: ExecutionContext,
        group_of: Callable[[str], str],
        twap_slice_s: float = 10.0,
        twap_slices: int | None = None,
        limit_price_source: str = "signal",
        limit_offset_bps: float = 0.0,
    ) -> None:
        if twap_slice_s <= 0:
            raise ValueError(f"twap_slice_s must be > 0, got {twap_slice_s}")
        if twap_slices is not None and twap_slices < 1:
            raise ValueError(f"twap_slices must be >= 1, got {twap_slices}")
        if limit_price_source not in ("signal", "last"):
            raise ValueError(f"limit_price_source {limit_price_source!r} not 'signal' or 'last'")
        self.ctx = ctx
        self.group_of = group_of
        self.twap_slice_s = twap_slice_s
        self.twap_slices = twap_slices
        self.limit_price_source = limit_price_source
        self.limit_offset_bps = limit_offset_bps
        self.operations: dict[str, Operation] = {}
        self._active: dict[str, Operation] = {}
        self._order_op: dict[str, str] = {}
        self._alert_ts: dict[str, int] = {}  # alert name → its time (while it is pending)

    # -- signals ---------------------------------------------------------------------------

    def on_signal(self, sig: Signal) -> Operation:
        if sig.algo not in ALGOS:
            raise ValueError(f"signal {sig.signal_id}: algo {sig.algo!r} not one of {ALGOS}")
        group = self.group_of(sig.instrument_key)
        old = self._active.pop(group, None)
        if old is not None:
            self._supersede(old)
        op_id = f"OP-{sig.signal_id}"
        if op_id in self.operations:
            raise ValueError(f"signal_id {sig.signal_id!r} seen twice")
        start = self.ctx.group_position(group)
        lot, min_qty = self.ctx.lot_rules(sig.instrument_key)
        units = lots_toward_zero(sig.target_position - start, lot)
        qty = units * lot
        if qty < min_qty - 1e-12:
            units, qty = 0, 0.0
        signed = math.copysign(qty, sig.target_position - start) if units else 0.0
        op = Operation(op_id, sig, group, start, signed, ref_prices=self.ctx.last_prices(group))
        self.operations[op_id] = op
        if units == 0:
            return op
        self._active[group] = op
        if sig.algo == "MARKET":
            self._child(op, qty, "MARKET", None)
        elif sig.algo == "LIMIT":
            self._child(op, qty, "LIMIT", self._limit_price(op))
        else:
            self._twap(op, units, lot, min_qty)
        end = sig.ts_event + _ns(sig.execution_window_s)
        self._alert(op, _END, end, lambda op=op: self._end_window(op))
        return op

    def _limit_price(self, op: Operation) -> float | None:
        """The LIMIT price asked for; None lets the host join the routed venue's last trade."""
        sig = op.signal
        ref = sig.limit_price if self.limit_price_source == "signal" else None
        if self.limit_offset_bps == 0.0:
            return ref
        if ref is None:
            ref = op.ref_prices.get(sig.instrument_key)
        if ref is None:
            ref = next(iter(op.ref_prices.values()), None)
        if ref is None:
            return None
        away = -1.0 if op.order_quantity > 0 else 1.0
        return ref * (1.0 + away * self.limit_offset_bps / 10_000.0)

    def _twap(self, op: Operation, units: int, lot: float, min_qty: float) -> None:
        window_ns = _ns(op.signal.execution_window_s)
        n = self.twap_slices or max(2, int(op.signal.execution_window_s // self.twap_slice_s))
        min_units = max(1, math.ceil(min_qty / lot - 1e-9))
        n = max(1, min(n, units // min_units))
        each = units // n
        sizes = [each] * (n - 1) + [units - each * (n - 1)]
        self._child(op, sizes[0] * lot, "MARKET", None)
        for i in range(1, n):
            ts = op.signal.ts_event + i * window_ns // n
            size = sizes[i] * lot
            self._alert(op, f"slice{i}", ts, lambda op=op, size=size: self._child_if_live(op, size))

    def _child_if_live(self, op: Operation, qty: float) -> None:
        if not op.stopped:
            self._child(op, qty, "MARKET", None)

    def _child(self, op: Operation, qty: float, order_type: str, limit: float | None) -> None:
        op.children_sent += 1
        oid = self.ctx.send(op, qty, order_type, limit)
        if oid is None:
            op.children_rejected += 1
        else:
            self._order_op[oid] = op.operation_id

    def _alert(self, op: Operation, tag: str, ts: int, cb: Callable[[], None]) -> None:
        name = f"{op.operation_id}:{tag}"
        op.alerts.append(name)
        self._alert_ts[name] = ts

        def fire() -> None:
            if name in op.alerts:
                op.alerts.remove(name)
            self._alert_ts.pop(name, None)
            cb()

        self.ctx.set_alert(name, ts, fire)

    def _end_window(self, op: Operation) -> None:
        for oid in self.ctx.open_order_ids(op.operation_id):
            self.ctx.cancel(oid)
        if self._active.get(op.group) is op:
            del self._active[op.group]

    def _supersede(self, op: Operation) -> None:
        """Stop an operation; it counts as superseded only if it still had work outstanding."""
        open_ids = self.ctx.open_order_ids(op.operation_id)
        pending_slices = [a for a in op.alerts if not a.endswith(f":{_END}")]
        op.superseded = bool(open_ids or pending_slices)
        op.stopped = True
        for name in op.alerts:
            self.ctx.cancel_alert(name)
            self._alert_ts.pop(name, None)
        op.alerts.clear()
        for oid in open_ids:
            self.ctx.cancel(oid)

    def is_finished(self, operation_id: str) -> bool:
        """No pending slice or window end and no longer the asset's active operation.

        With its orders final too, nothing about the operation can change any more (what
        execution quality needs before it prices the operation's end).
        """
        op = self.operations[operation_id]
        return not op.alerts and self._active.get(op.group) is not op

    def next_child_ns(self) -> int | None:
        """When the next child order of an active operation is due (a TWAP slice), if any.

        Only the window-end alerts are left otherwise, and they act on working orders alone.
        """
        end = f":{_END}"
        due = [
            self._alert_ts[name]
            for op in self._active.values()
            for name in op.alerts
            if not name.endswith(end)
        ]
        return min(due, default=None)

    def next_alert_ns(self) -> int | None:
        """The next alert of any active operation (a child or its window end), if any."""
        return min(self._alert_ts.values(), default=None)

    def unfinished(self) -> list[str]:
        """Operations that may still act: inside their window or with an alert pending."""
        live = {op.operation_id for op in self._active.values()}
        live.update(op.operation_id for op in self.operations.values() if op.alerts)
        return sorted(live)

    # -- fills -----------------------------------------------------------------------------

    def on_fill(self, operation_id: str, signed_qty: float) -> None:
        op = self.operations.get(operation_id)
        if op is not None:
            op.filled_quantity += signed_qty

    def operations_frame(self) -> pl.DataFrame:
        rows = [
            (
                op.operation_id, op.signal.signal_id, op.signal.instrument_key, op.signal.ts_event,
                op.signal.algo, op.signal.target_position, op.start_position, op.order_quantity,
                op.filled_quantity, op.shortfall, op.status, op.superseded,
            )
            for op in self.operations.values()
        ]  # fmt: skip
        return pl.DataFrame(rows, schema=OPERATIONS_SCHEMA, orient="row")


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)
