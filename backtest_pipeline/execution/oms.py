"""Unified OMS: the book of record of every order across venues, including the ones risk stopped.

Nautilus's cache knows only orders that reached it; research needs to see the rejected ones next
to the rest, each tied to the operation (signal) that created it, with its status history.
``orders.parquet`` is written from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

FINAL = {"FILLED", "CANCELED", "REJECTED", "EXPIRED"}

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
    history: list[tuple[str, int, float, str | None]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status not in FINAL


class OMS:
    def __init__(self) -> None:
        self._orders: dict[str, OrderRecord] = {}
        self._by_operation: dict[str, list[str]] = {}
        self._rejects: dict[str, int] = {}

    def __contains__(self, order_id: str) -> bool:
        return order_id in self._orders

    def get(self, order_id: str) -> OrderRecord:
        return self._orders[order_id]

    def _add(self, rec: OrderRecord) -> OrderRecord:
        if rec.order_id in self._orders:
            raise ValueError(f"order id {rec.order_id} recorded twice")
        self._orders[rec.order_id] = rec
        self._by_operation.setdefault(rec.operation_id, []).append(rec.order_id)
        rec.history.append((rec.status, rec.created_at, 0.0, rec.rejection_reason))
        return rec

    def record_submitted(
        self,
        order_id: str,
        operation_id: str,
        instrument_key: str,
        side: str,
        order_type: str,
        quantity: float,
        price: float | None,
        ts_ns: int,
    ) -> OrderRecord:
        """An order handed to Nautilus (status SUBMITTED until the engine says otherwise)."""
        return self._add(
            OrderRecord(
                order_id, operation_id, instrument_key, side, order_type, quantity, price,
                "SUBMITTED", ts_ns, ts_ns,
            )
        )  # fmt: skip

    def record_risk_rejected(
        self,
        operation_id: str,
        instrument_key: str,
        side: str,
        order_type: str,
        quantity: float,
        price: float | None,
        ts_ns: int,
        reason: str,
    ) -> OrderRecord:
        """An order stopped by pre-trade risk; id ``R-<operation>-<n>`` (deterministic)."""
        n = self._rejects.get(operation_id, 0) + 1
        self._rejects[operation_id] = n
        return self._add(
            OrderRecord(
                f"R-{operation_id}-{n}", operation_id, instrument_key, side, order_type, quantity,
                price, "REJECTED", ts_ns, ts_ns, reason,
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
        """Apply an engine event; unknown ids (not ours) are ignored and return None."""
        rec = self._orders.get(order_id)
        if rec is None:
            return None
        rec.filled_quantity += fill_qty
        if status == "FILLED_PART":
            status = "FILLED" if rec.filled_quantity >= rec.quantity - 1e-12 else "PARTIALLY_FILLED"
        if status == "ACCEPTED" and rec.status == "PARTIALLY_FILLED":
            status = rec.status
        rec.status = status
        rec.updated_at = ts_ns
        if reason is not None:
            rec.rejection_reason = reason
        rec.history.append((status, ts_ns, rec.filled_quantity, reason))
        return rec

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

    def orders_frame(self) -> pl.DataFrame:
        rows = [
            (
                r.order_id, r.operation_id, r.instrument_key, r.side, r.order_type, r.quantity,
                r.price, r.status, r.created_at, r.updated_at, r.rejection_reason,
            )
            for r in self._orders.values()
        ]  # fmt: skip
        return pl.DataFrame(rows, schema=ORDERS_SCHEMA, orient="row")

    def history_frame(self) -> pl.DataFrame:
        rows = [
            (r.order_id, status, ts, filled, reason)
            for r in self._orders.values()
            for status, ts, filled, reason in r.history
        ]
        return pl.DataFrame(rows, schema=HISTORY_SCHEMA, orient="row")
