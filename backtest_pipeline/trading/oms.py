"""Unified OMS: the book of record of every order across venues, including the ones risk stopped.

Nautilus's cache knows only orders that reached it; research needs to see the rejected ones next
to the rest, each tied to the operation (signal) that created it, with its status history.
``orders.parquet`` is written from here.

Final statuses (the only ones ``orders.parquet`` may hold): ``FILLED``, ``PARTIALLY_FILLED``,
``CANCELED``, ``REJECTED``, ``EXPIRED``. Nautilus reports a partially filled order that is then
cancelled (or expires) as ``CANCELED``/``EXPIRED``; research needs to see that some of it traded,
so the OMS reports it as ``PARTIALLY_FILLED`` (the cancel stays visible in the status history).
An order closed with nothing filled is ``CANCELED``/``EXPIRED``. While an order is working its
status is ``SUBMITTED``/``ACCEPTED``/``PARTIALLY_FILLED`` with ``final`` False; the engine layer
closes every order by the end of the run (window-end and end-of-run cancels), and
:meth:`OMS.close_all_open` is the last resort for an order the venue never resolved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from backtest_pipeline.trading.risk import OrderIntent

FINAL_STATUSES = ("FILLED", "PARTIALLY_FILLED", "CANCELED", "REJECTED", "EXPIRED")
_CLOSING = {"FILLED", "CANCELED", "REJECTED", "EXPIRED"}  # engine events that end an order

ORDERS_SCHEMA: dict[str, pl.DataType] = {
    "order_id": pl.Utf8(),
    "operation_id": pl.Utf8(),
    "instrument_key": pl.Utf8(),
    "side": pl.Utf8(),
    "order_type": pl.Utf8(),
    "quantity": pl.Float64(),
    "price": pl.Float64(),
    "status": pl.Utf8(),
    "created_at": pl.Int64(),
    "updated_at": pl.Int64(),
    "rejection_reason": pl.Utf8(),
}
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "order_id": pl.Utf8(),
    "status": pl.Utf8(),
    "ts_event": pl.Int64(),
    "filled_quantity": pl.Float64(),
    "reason": pl.Utf8(),
}


@dataclass
class OrderRecord:
    order_id: str
    operation_id: str
    instrument_key: str
    side: str
    order_type: str
    quantity: float
    price: float | None
    status: str
    created_at: int
    updated_at: int
    rejection_reason: str | None = None
    filled_quantity: float = 0.0
    final: bool = False
    history: list[tuple[str, int, float, str | None]] = field(default_factory=list)
    seq: int = -1  # position in the order of recording: the output's row order

    @property
    def is_open(self) -> bool:
        return not self.final


class OMS:
    def __init__(self) -> None:
        self._orders: dict[str, OrderRecord] = {}
        self._by_operation: dict[str, list[str]] = {}
        self._rejects: dict[str, int] = {}
        self._open: set[str] = set()  # ids of the orders not final yet
        self._seq = 0  # orders recorded so far, frozen ones included
        # Records no event can change any more, as frames (see `freeze`), with their `seq`.
        self._frozen_orders: list[pl.DataFrame] = []
        self._frozen_history: list[pl.DataFrame] = []

    def __len__(self) -> int:
        """Orders recorded so far, frozen ones included."""
        return self._seq

    def __contains__(self, order_id: str) -> bool:
        return order_id in self._orders

    def get(self, order_id: str) -> OrderRecord:
        return self._orders[order_id]

    def _add(self, rec: OrderRecord) -> OrderRecord:
        if rec.order_id in self._orders:
            raise ValueError(f"order id {rec.order_id} recorded twice")
        self._orders[rec.order_id] = rec
        rec.seq = self._seq
        self._seq += 1
        self._by_operation.setdefault(rec.operation_id, []).append(rec.order_id)
        if not rec.final:
            self._open.add(rec.order_id)
        rec.history.append((rec.status, rec.created_at, 0.0, rec.rejection_reason))
        return rec

    def record_submitted(
        self, order_id: str, operation_id: str, order: OrderIntent, ts_ns: int
    ) -> OrderRecord:
        """An order handed to Nautilus (status SUBMITTED until the engine says otherwise)."""
        return self._add(
            OrderRecord(
                order_id, operation_id, order.instrument_key, order.side, order.order_type,
                order.quantity, order.limit_price, "SUBMITTED", ts_ns, ts_ns,
            )
        )  # fmt: skip

    def record_risk_rejected(
        self, operation_id: str, order: OrderIntent, ts_ns: int, reason: str
    ) -> OrderRecord:
        """An order stopped by pre-trade risk; id ``R-<operation>-<n>`` (deterministic)."""
        n = self._rejects.get(operation_id, 0) + 1
        self._rejects[operation_id] = n
        return self._add(
            OrderRecord(
                f"R-{operation_id}-{n}", operation_id, order.instrument_key, order.side,
                order.order_type, order.quantity, order.limit_price, "REJECTED", ts_ns, ts_ns,
                reason, final=True,
            )
        )  # fmt: skip

    def on_status(
        self,
        order_id: str,
        status: str,
        ts_ns: int,
        *,
        reason: str | None = None,
        fill_qty: float = 0.0,
    ) -> OrderRecord | None:
        """Apply an engine event; unknown ids (not ours) are ignored and return None.

        ``FILLED_PART`` is a fill of ``fill_qty``; the record becomes FILLED once the whole
        quantity traded. Events after an order is final (a late cancel ack) only add history.
        """
        rec = self._orders.get(order_id)
        if rec is None:
            return None
        rec.filled_quantity += fill_qty
        if status == "FILLED_PART":
            status = "FILLED" if rec.filled_quantity >= rec.quantity - 1e-12 else "PARTIALLY_FILLED"
        rec.history.append((status, ts_ns, rec.filled_quantity, reason))
        if rec.final and fill_qty == 0.0:
            return rec
        closing = status in _CLOSING
        if status == "ACCEPTED" and rec.status == "PARTIALLY_FILLED":
            status = rec.status
        if status in ("CANCELED", "EXPIRED") and rec.filled_quantity > 1e-12:
            status = "PARTIALLY_FILLED"  # see the module docstring
        rec.status = status
        rec.final = rec.final or closing
        if rec.final:
            self._open.discard(order_id)
        rec.updated_at = ts_ns
        if reason is not None:
            rec.rejection_reason = reason
        return rec

    def close_all_open(self, ts_ns: int, reason: str) -> list[str]:
        """Give every still-working order its final status; the ids closed this way.

        Only for orders the venue never resolved (e.g. a market order Nautilus neither filled
        nor rejected): CANCELED if nothing filled, PARTIALLY_FILLED otherwise, with ``reason``.
        """
        closed = []
        for rec in self._orders.values():
            if rec.final:
                continue
            rec.status = "PARTIALLY_FILLED" if rec.filled_quantity > 1e-12 else "CANCELED"
            rec.final = True
            rec.updated_at = max(rec.updated_at, ts_ns)
            rec.rejection_reason = reason
            rec.history.append((rec.status, rec.updated_at, rec.filled_quantity, reason))
            closed.append(rec.order_id)
        self._open.clear()
        return closed

    def open_ids(self) -> list[str]:
        return sorted(self._open)

    @property
    def open_count(self) -> int:
        """Orders still working or in flight (kept as a set: asked once per engine window)."""
        return len(self._open)

    def open_orders(self, operation_id: str) -> list[OrderRecord]:
        return [
            self._orders[o]
            for o in self._by_operation.get(operation_id, [])
            if self._orders[o].is_open
        ]

    def orders_of(self, operation_id: str) -> list[OrderRecord]:
        return [self._orders[o] for o in self._by_operation.get(operation_id, [])]

    def records(self) -> list[OrderRecord]:
        return list(self._orders.values())

    def freeze(self, order_ids: Iterable[str]) -> None:
        """Move final records that nothing will read or change again into frames.

        A record with its status history is ~1 KB of Python objects, kept for the whole run;
        as a row of a day's frame it takes a fraction of that. The caller names orders that get
        no more events (the engine closed them, or risk stopped them) and whose operation needs
        them no more. Frozen orders are no longer known to `get` or `orders_of`; the frames
        keep their place in the order of recording.
        """
        recs = [r for o in order_ids if (r := self._orders.get(o)) is not None and r.final]
        if not recs:
            return
        for r in recs:
            del self._orders[r.order_id]
            same_op = self._by_operation[r.operation_id]
            same_op.remove(r.order_id)
            if not same_op:
                del self._by_operation[r.operation_id]
        self._frozen_orders.append(_orders_rows(recs))
        self._frozen_history.append(_history_rows(recs))

    def orders_frame(self) -> pl.DataFrame:
        return _in_order([*self._frozen_orders, _orders_rows(self._orders.values())])

    def history_frame(self) -> pl.DataFrame:
        return _in_order([*self._frozen_history, _history_rows(self._orders.values())])


def _orders_rows(recs: Iterable[OrderRecord]) -> pl.DataFrame:
    rows = [
        (
            r.order_id, r.operation_id, r.instrument_key, r.side, r.order_type, r.quantity,
            r.price, r.status, r.created_at, r.updated_at, r.rejection_reason, r.seq,
        )
        for r in recs
    ]  # fmt: skip
    return pl.DataFrame(rows, schema={**ORDERS_SCHEMA, "seq": pl.Int64()}, orient="row")


def _history_rows(recs: Iterable[OrderRecord]) -> pl.DataFrame:
    rows = [
        (r.order_id, status, ts, filled, reason, r.seq)
        for r in recs
        for status, ts, filled, reason in r.history
    ]
    return pl.DataFrame(rows, schema={**HISTORY_SCHEMA, "seq": pl.Int64()}, orient="row")


def _in_order(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The rows of frozen and live records in the order they were recorded (stable in one)."""
    whole = parts[0] if len(parts) == 1 else pl.concat(parts, rechunk=True)
    return whole.sort("seq", maintain_order=True).drop("seq")
