"""Smart order routing across venues that list the same asset.

Instruments with the same type and base/quote (``BINANCE-FUTURES:PERPETUAL:BTC-USDT`` and
``BYBIT:PERPETUAL:BTC-USDT``) form a group. Each child order goes to the group member with the
lowest expected all-in cost per unit, measured in the quote currency:

    BUY:  last × (1 + fee + drift × latency)      SELL: −last × (1 − fee − drift × latency)

where ``fee`` is the taker fee (maker for limit orders), ``latency`` the venue's insert latency
in seconds and ``drift`` the configured adverse drift ``router_drift_bps_per_s`` (basis points per
second of latency, /1e4 here; default 0: latency then plays no part). Members without a trade yet are skipped. Ties (within 1e-12 relative)
go to the primary venue, then to the signal's own instrument, then to the lexicographically first
key, so the choice never depends on dict order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backtest_pipeline import layout


def group_of(key: str) -> str:
    """``PERPETUAL:BTC-USDT``: the asset, independent of the venue."""
    _, itype, base, quote = layout.parse_instrument_key(key)
    return f"{itype}:{base}-{quote}"


def groups(keys: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k in sorted(set(keys)):
        out.setdefault(group_of(k), []).append(k)
    return out


@dataclass(frozen=True)
class VenueQuote:
    instrument_key: str
    last_price: float | None
    maker_fee: float
    taker_fee: float
    latency_s: float


class SmartRouter:
    def __init__(self, primary_venue: str | None = None, drift_bps_per_s: float = 0.0) -> None:
        if drift_bps_per_s < 0:
            raise ValueError(f"drift_bps_per_s must be >= 0, got {drift_bps_per_s}")
        self.primary_venue = primary_venue
        self.drift_per_s = drift_bps_per_s / 1e4  # fraction of the price per second of latency

    def cost(self, q: VenueQuote, side: str, order_type: str) -> float:
        """Expected cost per unit (lower is better) — see the module docstring."""
        assert q.last_price is not None
        fee = q.maker_fee if order_type == "LIMIT" else q.taker_fee
        pen = fee + self.drift_per_s * q.latency_s
        if side == "BUY":
            return q.last_price * (1.0 + pen)
        return -q.last_price * (1.0 - pen)

    def choose(
        self, side: str, order_type: str, candidates: list[VenueQuote], signal_key: str
    ) -> str:
        priced = [q for q in candidates if q.last_price is not None and q.last_price > 0]
        if len(candidates) <= 1 or not priced:
            return signal_key
        costs = {q.instrument_key: self.cost(q, side, order_type) for q in priced}
        best = min(costs.values())
        tol = 1e-12 * max(1.0, abs(best))
        tied = sorted(k for k, c in costs.items() if c <= best + tol)
        if len(tied) == 1:
            return tied[0]
        if self.primary_venue is not None:
            for k in tied:
                if layout.parse_instrument_key(k)[0] == self.primary_venue:
                    return k
        if signal_key in tied:
            return signal_key
        return tied[0]
