"""Our instruments as NautilusTrader instruments, and their ids as Nautilus ``InstrumentId``.

The names themselves (keys ↔ Nautilus id strings, venues) are ``engine/names.py``: re-exported
here, so engine code keeps one import for both.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nautilus_trader.model.identifiers import InstrumentId, Symbol
from nautilus_trader.model.instruments import (
    CryptoFuture,
    CryptoPerpetual,
    CurrencyPair,
    Instrument,
)
from nautilus_trader.model.objects import Currency, Money, Price, Quantity

from backtest_pipeline import layout
from backtest_pipeline.config import FeeOverride
from backtest_pipeline.engine.names import (
    InstrumentMappingError,
    from_nautilus_venue,
    instrument_id_str,
    key_for,
    to_nautilus_venue,
    venue_of_key,
)

__all__ = [
    "InstrumentMappingError",
    "build_instrument",
    "from_nautilus_venue",
    "instrument_id_for",
    "key_for",
    "to_nautilus_venue",
    "venue_of_key",
]


def instrument_id_for(key: str) -> InstrumentId:
    """Our key → Nautilus InstrumentId (registered so :func:`key_for` can invert it)."""
    return InstrumentId.from_str(instrument_id_str(key))


def _currency(code: str) -> Currency:
    # Unknown codes (small alt-coins) are created as crypto currencies instead of failing.
    return Currency.from_str(code, strict=False)


def _dec(x: float) -> Decimal:
    # repr() of a float is its shortest round-tripping decimal: 0.0002 stays 0.0002.
    return Decimal(repr(float(x)))


def _opt(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except TypeError:
        pass
    return value


def build_instrument(row: dict[str, Any], fees: FeeOverride, ts_ns: int = 0) -> Instrument:
    """A Nautilus instrument from one ``instruments.parquet`` row, with run fee overrides.

    ``ts_ns`` is the instrument's ts_event/ts_init (use the start of the day it was first seen).
    """
    key = str(row["instrument_key"])
    venue, itype, base, quote = layout.parse_instrument_key(key)
    if bool(row.get("is_inverse") or False):
        raise NotImplementedError(f"{key}: inverse contracts not supported")
    if str(row.get("instrument_type", itype)) != itype:
        raise InstrumentMappingError(
            f"{key}: instrument_type {row.get('instrument_type')!r} disagrees with the key's {itype!r}"
        )
    iid = instrument_id_for(key)
    pp = int(row["price_precision"])
    sp = int(row["size_precision"])
    base_ccy = _currency(str(row.get("base_asset") or base))
    quote_ccy = _currency(str(row.get("quote_asset") or quote))
    settle_ccy = _currency(str(row.get("settle_asset") or quote))
    maker = fees.maker_fee if fees.maker_fee is not None else float(row["maker_fee"])
    taker = fees.taker_fee if fees.taker_fee is not None else float(row["taker_fee"])
    max_q = _opt(row, "max_quantity")
    min_notional = _opt(row, "min_notional")
    mult = _opt(row, "contract_multiplier") or 1.0
    common: dict[str, Any] = dict(
        instrument_id=iid,
        raw_symbol=Symbol(str(row.get("venue_symbol") or f"{base}{quote}")),
        quote_currency=quote_ccy,
        price_precision=pp,
        size_precision=sp,
        price_increment=Price(float(row["tick_size"]), pp),
        size_increment=Quantity(float(row["lot_size"]), sp),
        ts_event=ts_ns,
        ts_init=ts_ns,
        max_quantity=Quantity(float(max_q), sp) if max_q is not None else None,
        min_quantity=Quantity(float(row["min_quantity"]), sp)
        if _opt(row, "min_quantity")
        else None,
        min_notional=Money(float(min_notional), quote_ccy) if min_notional else None,
        margin_init=_dec(row.get("margin_init") or 0.0),
        margin_maint=_dec(row.get("margin_maint") or 0.0),
        maker_fee=_dec(maker),
        taker_fee=_dec(taker),
    )
    if itype == "PERPETUAL":
        return CryptoPerpetual(
            base_currency=base_ccy,
            settlement_currency=settle_ccy,
            is_inverse=False,
            multiplier=Quantity.from_str(repr(float(mult))),
            **common,
        )
    if itype == "SPOT":
        return CurrencyPair(base_currency=base_ccy, **common)
    expiry = _opt(row, "expiry_ts")
    if expiry is None:
        raise InstrumentMappingError(f"{key}: FUTURE without expiry_ts")
    return CryptoFuture(
        underlying=base_ccy,
        settlement_currency=settle_ccy,
        is_inverse=False,
        activation_ns=0,
        expiration_ns=int(expiry),
        multiplier=Quantity.from_str(repr(float(mult))),
        **common,
    )
