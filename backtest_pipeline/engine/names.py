"""The one place where our instrument keys meet NautilusTrader names (strings only).

Nautilus splits account ids on the first hyphen, so a venue such as ``BINANCE-FUTURES`` must be
renamed (``BINANCE_FUTURES``) before it reaches the engine, and every output must be mapped back.
Keeping both directions here means no other module invents its own spelling. No NautilusTrader
import: the Dagster process names a catalog's files with these ids without loading the engine
(``engine/instruments.py`` turns them into Nautilus objects).

Mapping (injective, checked): ``VENUE:PERPETUAL:BASE-QUOTE`` → ``{BASE}{QUOTE}-PERP.{VENUE'}``,
``VENUE:SPOT:BASE-QUOTE`` → ``{BASE}{QUOTE}.{VENUE'}``, ``VENUE:FUTURE:BASE-QUOTE`` →
``{BASE}{QUOTE}-FUT.{VENUE'}`` with ``VENUE' = VENUE.replace('-', '_')``. Because the symbol drops
the base/quote separator, the inverse uses a registry filled by :func:`instrument_id_str`; a
collision (``BTC-USDT`` vs ``BTCU-SDT`` on one venue) is refused instead of silently merged.
"""

from backtest_pipeline import layout

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


def from_nautilus_venue(venue: object) -> str:
    """Inverse of :func:`to_nautilus_venue` (a ``Venue`` or its string)."""
    return str(venue).replace("_", "-")


def venue_of_key(key: str) -> str:
    return layout.parse_instrument_key(key)[0]


def instrument_id_str(key: str) -> str:
    """Our key → the Nautilus instrument id string (registered so :func:`key_for` inverts it)."""
    cached = _ID_BY_KEY.get(key)
    if cached is not None:
        return cached
    venue, itype, base, quote = layout.parse_instrument_key(key)
    value = f"{base}{quote}{_SUFFIX[itype]}.{to_nautilus_venue(venue)}"
    other = _KEY_BY_ID.get(value)
    if other is not None and other != key:
        raise InstrumentMappingError(
            f"instrument keys {other!r} and {key!r} map to the same Nautilus id {value!r}"
        )
    _KEY_BY_ID[value] = key
    _ID_BY_KEY[key] = value
    return value


def key_for(instrument_id: object) -> str:
    """Nautilus InstrumentId (or its string) → our key; only ids of :func:`instrument_id_str`."""
    value = str(instrument_id)
    try:
        return _KEY_BY_ID[value]
    except KeyError:
        raise InstrumentMappingError(
            f"Nautilus instrument id {value!r} was not produced by instrument_id_for()"
        ) from None
