"""Pre-trade risk: the live stack's limits, applied before an order can reach a venue.

Nautilus's own RiskEngine stays on behind this layer (precision, instrument limits, balances);
this layer adds the firm's limits, and its reasons name the limit and the excess so a rejected
order in ``orders.parquet`` explains itself. It is pure: the caller passes a snapshot of the
state it needs, which keeps it unit-testable without an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtest_pipeline.config import RiskLimits


@dataclass(frozen=True)
class OrderIntent:
    """An order about to be sent. ``quantity`` is positive; ``side`` is BUY or SELL."""

    instrument_key: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None = None


@dataclass(frozen=True)
class RiskSnapshot:
    """The state the limits are checked against, at the order's creation time.

    ``gross_notional_others`` is Σ |position| × last price over every *other* instrument;
    ``equity`` is the sum of the account balances plus unrealized PnL, in the account currency.
    """

    last_price: float | None
    position: float
    gross_notional_others: float
    equity: float
    available: bool
    day: str = ""
    allow_short: bool = True


class PreTradeRisk:
    def __init__(self, limits: RiskLimits, currency: str = "USDT") -> None:
        self.limits = limits
        self.currency = currency

    def check(self, order: OrderIntent, snap: RiskSnapshot) -> str | None:
        """None if the order may go, else the reason (first failing limit, in a fixed order)."""
        lim = self.limits
        cur = self.currency
        if not snap.available:
            return f"instrument_unavailable: {order.instrument_key} is not in the instruments of {snap.day or 'the day'}"
        if order.quantity <= 0:
            return f"invalid_quantity: {order.quantity} <= 0"
        signed = order.quantity if order.side == "BUY" else -order.quantity
        if not snap.allow_short and snap.position + signed < -1e-12:
            # Nautilus's multi-currency cash account would let a spot sell run the base
            # balance negative; a spot venue cannot be shorted.
            return (
                f"spot_short: position after the order {snap.position + signed:.8g} < 0 "
                f"on {order.instrument_key}"
            )
        if lim.max_order_quantity is not None and order.quantity > lim.max_order_quantity:
            return f"max_order_quantity: {order.quantity:.8g} > {lim.max_order_quantity:.8g}"
        if (
            order.order_type == "LIMIT"
            and lim.limit_price_band_pct is not None
            and order.limit_price is not None
            and snap.last_price
        ):
            dev = abs(order.limit_price - snap.last_price) / snap.last_price * 100.0
            if dev > lim.limit_price_band_pct + 1e-12:
                return (
                    f"limit_price_band_pct: {dev:.2f}% > {lim.limit_price_band_pct:.2f}% "
                    f"(limit {order.limit_price:.8g} vs last {snap.last_price:.8g})"
                )
        price = order.limit_price if order.order_type == "LIMIT" and order.limit_price else None
        price = price or snap.last_price
        needs_price = any(
            x is not None
            for x in (lim.max_order_notional, lim.max_position_notional, lim.max_gross_leverage)
        )
        if price is None or price <= 0:
            if needs_price:
                return f"no_reference_price: no trade seen yet for {order.instrument_key}"
            return None
        notional = order.quantity * price
        if lim.max_order_notional is not None and notional > lim.max_order_notional:
            return f"max_order_notional: {notional:.2f} > {lim.max_order_notional:.2f} {cur}"
        pos_after = abs(snap.position + signed) * price
        if lim.max_position_notional is not None and pos_after > lim.max_position_notional:
            return (
                f"max_position_notional: {pos_after:.2f} > {lim.max_position_notional:.2f} {cur} "
                f"({order.instrument_key} after the order)"
            )
        if lim.max_gross_leverage is not None:
            if snap.equity <= 0:
                return f"max_gross_leverage: account equity {snap.equity:.2f} {cur} <= 0"
            lev = (snap.gross_notional_others + pos_after) / snap.equity
            if lev > lim.max_gross_leverage + 1e-12:
                return f"max_gross_leverage: {lev:.4f}x > {lim.max_gross_leverage:.4f}x"
        return None
