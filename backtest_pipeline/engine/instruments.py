"""The one place where our instrument keys meet NautilusTrader names.

Nautilus splits account ids on the first hyphen, so a venue such as ``BINANCE-FUTURES`` must be
renamed (``BINANCE_FUTURES``) before it reaches the engine, and every output must be mapped back.
Keeping both directions here means no other module invents its own spelling.

Mapping (injective, checked): ``VENUE:PERPETUAL:BASE-QUOTE`` → ``{BASE}{QUOTE}-PERP.{VENUE'}``,
``VENUE:SPOT:BASE-QUOTE`` → ``{BASE}{QUOTE}.{VENUE'}``, ``VENUE:FUTURE:BASE-QUOTE`` →
``{BASE}{QUOTE}-FUT.{VENUE'}`` with ``VENUE' = VENUE.replace('-', '_')``. Because the symbol drops
the base/quote separator, the inverse uses a registry filled by :func:`instrument_id_for`; a
collision (``BTC-USDT`` vs ``BTCU-SDT`` on one venue) is refused instead of silently merged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
from nautilus_trader.model.instruments import (
    CryptoFuture,
    CryptoPerpetual,
    CurrencyPair,
    Instrument,
)
from nautilus_trader.model.objects import Currency, Money, Price, Quantity

from backtest_pipeline import layout
from backtest_pipeline.config import FeeOverride

_SUFFIX = {"PERPETUAL": "-PERP", "SPOT": "", "FUTURE": "-FUT"}
_KEY_BY_ID: dict[str, str] = {}
_ID_BY_KEY: dict[str, str] = {}


class InstrumentMappingError(ValueError):
    """A key or venue that cannot be represented (or mapped back) unambiguously."""


def to_nautilus_venue(venue: str) -> str:
    """``BINANCE-FUTURES`` → ``BINANCE_FUTURES``.

    Venues that already contain ``_`` or ``.`` are refused: ``_`` would make the inverse ambiguous
    and ``.`` is the InstrumentId separator.
    """
    if not venue or "_" in venue or "." in venue:
        raise InstrumentMappingError(
            f"venue {venue!r} cannot be mapped to a Nautilus venue (empty, or contains '_' or '.')"
        )
    return venue.replace("-", "_")


def from_nautilus_venue(venue: str | Venue) -> str:
    """Inverse of :func:`to_nautilus_venue`."""
    return str(venue).replace("_", "-")


def venue_of_key(key: str) -> str:
    return layout.parse_instrument_key(key)[0]


def instrument_id_for(key: str) -> InstrumentId:
    """Our key → Nautilus InstrumentId (registered so :func:`key_for` can invert it)."""
    cached = _ID_BY_KEY.get(key)
    if cached is not None:
        return InstrumentId.from_str(cached)
    venue, itype, base, quote = layout.parse_instrument_key(key)
    value = f"{base}{quote}{_SUFFIX[itype]}.{to_nautilus_venue(venue)}"
    other = _KEY_BY_ID.get(value)
    if other is not None and other != key:
        raise InstrumentMappingError(
            f"instrument keys {other!r} and {key!r} map to the same Nautilus id {value!r}"
        )
    _KEY_BY_ID[value] = key
    _ID_BY_KEY[key] = value
    return InstrumentId.from_str(value)


def key_for(instrument_id: InstrumentId | str) -> str:
    """Nautilus InstrumentId → our key; only ids produced by :func:`instrument_id_for` map back."""
    value = str(instrument_id)
    try:
        return _KEY_BY_ID[value]
    except KeyError:
        raise InstrumentMappingError(
            f"Nautilus instrument id {value!r} was not produced by instrument_id_for()"
        ) from None


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
