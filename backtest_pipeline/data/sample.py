"""Deterministic, realistic sample data: instruments, trades, funding, signals and 1-minute bars.

Why not uniform random trades: the backtest's cost drivers (ranged reads of short windows, fill
simulation against the tape, liquidity consumption) behave very differently on a flat Poisson tape
than on a real one. The generator therefore reproduces the stylised facts that matter:

* price path with volatility clustering — taken from one month of real Binance BTCUSDT-PERP
  one-minute bars when the shared data folder is present (a contiguous 1,440-minute segment chosen
  by day and seed, rescaled), else a GARCH(1,1) path; interpolated within minutes as a Brownian
  bridge whose amplitude follows the real minute's high-low range;
* bursty arrivals — a Cox process whose per-second intensity is the real minute volume times a
  self-exciting shot-noise factor (Pareto-sized bursts with exponential decay, Hawkes-like);
* aggressive orders that sweep several price levels (several trades, one timestamp);
* aggressor side correlated with the next seconds' move; heavy-tailed (lognormal + Pareto) sizes
  rounded to the lot size; prices on the tick grid;
* funding every 8 h for perpetuals; signals covering a chosen share of each day.

Everything is vectorised with NumPy (2 M trades in about a second) and seeded per
(seed, day, instrument), so a day's files are byte-identical whatever the date range requested.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.data import books, parquet_io, schemas

log = logging.getLogger(__name__)

DEFAULT_TRADE_INSTRUMENTS: Final[tuple[str, ...]] = ("BINANCE-FUTURES:PERPETUAL:BTC-USDT",)
BARS_CSV_NAME: Final = "binance-futures_BTCUSDT-PERP_1m_bars_2021-12-31_2022-02-01.csv"
BARS_CSV_ENV: Final = "BACKTEST_SAMPLE_BARS_CSV"

# Price level per base asset, and how strongly its log-returns follow the BTC template (beta).
BASE_LEVEL: Final[dict[str, tuple[float, float]]] = {"BTC": (42_000.0, 1.0), "ETH": (3_000.0, 1.25)}
# Basis vs the reference path (perpetual premium), in bps.
VENUE_BASIS_BPS: Final[dict[str, float]] = {"BINANCE-FUTURES": 2.0, "BYBIT": 3.0}
SIGNAL_MAX_NOTIONAL: Final = 20_000.0
SIGNAL_SKILL: Final = 0.4
SIGNAL_HORIZON_S: Final = 1800  # |target| × price: small vs the default 100k USDT balance
MEDIAN_TRADE_NOTIONAL: Final = 400.0
MAX_TRADE_NOTIONAL: Final = 2_500_000.0

_SIGNALS_PL: Final[dict[str, Any]] = {
    "signal_id": pl.String,
    "ts_event": pl.Int64,
    "instrument_key": pl.String,
    "target_position": pl.Float64,
    "execution_window_s": pl.Float64,
    "algo": pl.String,
    "limit_price": pl.Float64,
}
_SEC_PER_DAY: Final = 86_400
_NS: Final = 1_000_000_000


def _crc(text: str) -> int:
    """A process-independent hash (Python's str hash is salted per process)."""
    return zlib.crc32(text.encode())


def _day_number(day: date) -> int:
    return (day - date(1970, 1, 1)).days


def _rng(seed: int, day: date, *parts: str | int) -> np.random.Generator:
    words = [seed & 0xFFFFFFFF, _day_number(day)] + [
        p if isinstance(p, int) else _crc(p) for p in parts
    ]
    return np.random.default_rng(words)


def bars_csv_path() -> Path | None:
    """The real 1-minute bars: `$BACKTEST_SAMPLE_BARS_CSV`, else `<workspace>/shared/data/...`."""
    env = os.environ.get(BARS_CSV_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" / BARS_CSV_NAME for p in here.parents[2:5]]
    return next((c for c in candidates if c.is_file()), None)


@lru_cache(maxsize=2)
def _template_bars(path: str | None) -> np.ndarray | None:
    """(N, 5) array of open, high, low, close, volume from the real bars, or None."""
    if path is None:
        return None
    df = pl.read_csv(path, columns=["open", "high", "low", "close", "volume"])
    arr = df.to_numpy().astype(np.float64)
    if arr.shape[0] < 2 * 1440 or not np.isfinite(arr).all() or (arr[:, :4] <= 0).any():
        log.warning("sample bars %s unusable (%d rows); using the GARCH path", path, arr.shape[0])
        return None
    return arr


def _garch_minutes(rng: np.random.Generator, n: int = 1440) -> np.ndarray:
    """GARCH(1,1) minute bars (relative level, starting at 1): the fallback template."""
    omega, alpha, beta = 2e-8, 0.08, 0.9
    var = omega / (1 - alpha - beta)
    z = rng.standard_normal(n)
    r = np.empty(n)
    for i in range(n):  # 1,440 steps per day: the recursion is inherently sequential
        r[i] = np.sqrt(var) * z[i]
        var = omega + alpha * r[i] ** 2 + beta * var
    close = np.exp(np.cumsum(r))
    open_ = np.concatenate([[1.0], close[:-1]])
    wiggle = np.abs(rng.standard_normal((n, 2))) * np.sqrt(omega / (1 - alpha - beta)) * 0.7
    high = np.maximum(open_, close) * np.exp(wiggle[:, 0])
    low = np.minimum(open_, close) * np.exp(-wiggle[:, 1])
    volume = (np.abs(r) / np.sqrt(var) + 0.5) * rng.lognormal(0, 0.4, n)
    return np.column_stack([open_, high, low, close, volume])


def minute_path(base: str, day: date, seed: int) -> np.ndarray:
    """(1440, 5) OHLCV of the reference price of `base` for `day` (same for every venue).

    Consecutive days use consecutive segments of the template, so prices are continuous across
    midnight (except when the one-month template wraps around).
    """
    level, beta = BASE_LEVEL.get(base, (100.0 + _crc(base) % 900, 1.1))
    tmpl = _template_bars(str(p) if (p := bars_csv_path()) else None)
    if tmpl is None:
        bars = _garch_minutes(_rng(seed, day, "garch", base))
        scale = level * np.exp(_rng(seed, date(1970, 1, 1), "level", base).normal(0, 0.05))
        ohlc = bars[:, :4] ** beta * scale
        return np.column_stack([ohlc, bars[:, 4]])
    n = tmpl.shape[0]
    shift = (seed * 7_919 + _crc(base) % 10_000 * 37) % n
    start = (shift + _day_number(day) * 1440) % (n - 1440)
    seg = tmpl[start : start + 1440]
    ref = float(np.exp(np.log(tmpl[:, 3]).mean()))
    scale = level * np.exp(_rng(seed, date(1970, 1, 1), "level", base).normal(0, 0.05))
    ohlc = (seg[:, :4] / ref) ** beta * scale
    return np.column_stack([ohlc, seg[:, 4]])


def _second_path(bars: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log mid price at the end of every second of the day: a Brownian bridge within each minute."""
    lo, lh, ll, lc = (np.log(bars[:, i]) for i in range(4))
    rng_width = np.maximum(lh - ll - np.abs(lc - lo), 0.0)
    sigma = rng_width / (1.25 * np.sqrt(60.0)) + 2e-6  # per-second std; floor ~0.02 bps
    w = np.cumsum(rng.standard_normal((1440, 60)) * sigma[:, None], axis=1)
    frac = np.arange(1, 61) / 60.0
    bridge = w - frac[None, :] * w[:, -1:]
    path = lo[:, None] + (lc - lo)[:, None] * frac[None, :] + bridge
    return path.reshape(-1)


def _intensity(bars: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-second arrival intensity: minute volume × self-exciting bursts (shot noise)."""
    vol = np.repeat(np.maximum(bars[:, 4], 1e-9), 60)
    vol = vol / vol.mean()
    shocks = np.zeros(_SEC_PER_DAY)
    n_bursts = rng.poisson(_SEC_PER_DAY / 90)
    at = rng.integers(0, _SEC_PER_DAY, n_bursts)
    np.add.at(shocks, at, np.minimum(rng.pareto(1.5, n_bursts) + 1.0, 40.0) * 1.5)
    kernel = np.exp(-np.arange(60) / 6.0)
    bursts = np.convolve(shocks, kernel)[:_SEC_PER_DAY]
    noise = rng.gamma(2.0, 0.5, _SEC_PER_DAY)  # second-to-second variation
    lam = vol * (0.3 + bursts) * noise
    return np.minimum(lam, 150.0 * lam.mean())  # cap: a few thousand trades/s at 2 M/day


def generate_trades(
    instrument_key: str, day: date | str, n_trades: int, seed: int = 0
) -> tuple[pa.Table, np.ndarray]:
    """One instrument-day of trades (canonical schema) and the per-second mid path (for signals).

    Deterministic for (seed, day, instrument_key). `n_trades` is exact.
    """
    day = layout.parse_day(day)
    venue, itype, base, _quote = layout.parse_instrument_key(instrument_key)
    spec = schemas.default_instrument_row(instrument_key)
    tick, lot = float(spec["tick_size"]), float(spec["lot_size"])
    pp, sp = int(spec["price_precision"]), int(spec["size_precision"])
    rng = _rng(seed, day, "trades", instrument_key)

    bars = minute_path(base, day, seed)
    basis = VENUE_BASIS_BPS.get(venue, 0.0) * 1e-4 if itype != "SPOT" else 0.0
    log_mid = _second_path(bars, _rng(seed, day, "path", base)) + basis
    log_mid = log_mid + np.cumsum(rng.standard_normal(_SEC_PER_DAY)) * 1e-6  # venue-specific noise
    if n_trades <= 0:
        return schemas.TRADES_SCHEMA.empty_table(), log_mid

    # Aggressive orders ("parents"), each filled as k >= 1 trades at one timestamp.
    k = rng.geometric(0.65, n_trades)
    csum = np.cumsum(k)
    m = int(np.searchsorted(csum, n_trades)) + 1
    k = k[:m]
    k[-1] -= int(csum[m - 1] - n_trades)

    lam = _intensity(bars, rng)
    per_sec = rng.multinomial(m, lam / lam.sum())
    sec = np.repeat(np.arange(_SEC_PER_DAY, dtype=np.int64), per_sec)
    ms = np.sort(sec * 1000 + rng.integers(0, 1000, m))  # Binance stamps trades in ms
    sec = ms // 1000

    # Aggressor side follows the next seconds' move (trades move prices).
    ahead = log_mid[np.minimum(sec + 3, _SEC_PER_DAY - 1)] - log_mid[np.maximum(sec - 3, 0)]
    scale = np.std(np.diff(log_mid)) * np.sqrt(6.0) + 1e-12
    p_buy = 1.0 / (1.0 + np.exp(-0.9 * ahead / scale))
    buy = rng.random(m) < p_buy

    mid_ticks = np.exp(log_mid[sec]) / tick
    bid = np.floor(mid_ticks).astype(np.int64)
    top = np.where(buy, bid + 1, bid)
    direction = np.where(buy, 1, -1)

    # Children: repeat parent attributes; later children walk 0 or 1 level deeper each.
    starts = np.cumsum(k) - k
    child = np.arange(n_trades) - np.repeat(starts, k)
    step = np.where(child == 0, 0, rng.integers(0, 2, n_trades))
    depth = np.cumsum(step)
    depth -= np.repeat(depth[starts], k)
    price_ticks = np.repeat(top, k) + np.repeat(direction, k) * depth
    price = np.round(price_ticks * tick, pp)

    mid_price = np.exp(log_mid[np.repeat(sec, k)])
    notional = rng.lognormal(np.log(MEDIAN_TRADE_NOTIONAL), 1.3, n_trades)
    tail = rng.random(n_trades) < 0.02
    notional[tail] *= rng.pareto(1.2, int(tail.sum())) * 10 + 5
    notional = np.minimum(notional, MAX_TRADE_NOTIONAL)
    lots = np.maximum(np.round(notional / mid_price / lot), 1)
    max_lots = float(spec["max_quantity"] or 1e9) / lot
    size = np.round(np.minimum(lots, max_lots) * lot, sp)

    ts_event = (np.repeat(ms, k) + _day_number(day) * _SEC_PER_DAY * 1000) * 1_000_000
    latency = (rng.lognormal(np.log(2e6), 0.6, n_trades)).astype(np.int64)
    first_id = _day_number(day) * 100_000_000 + _crc(instrument_key) % 1_000_000 * 10
    ids = pa.array(np.arange(first_id, first_id + n_trades, dtype=np.int64)).cast(pa.string())
    side = pa.DictionaryArray.from_arrays(
        pa.array(np.where(np.repeat(buy, k), 0, 1).astype(np.int8)), pa.array(["buy", "sell"])
    ).cast(pa.string())
    table = pa.table(
        {
            "ts_event": pa.array(ts_event, pa.int64()),
            "ts_init": pa.array(ts_event + latency, pa.int64()),
            "trade_id": ids,
            "price": pa.array(price, pa.float64()),
            "size": pa.array(size, pa.float64()),
            "side": side,
        }
    ).cast(schemas.TRADES_SCHEMA)
    return table, log_mid


BOOK_BUCKET_MS: Final = 100  # one book state per 100 ms with trades (the importers' default)
LEVEL_NOTIONAL: Final = 30_000.0  # median resting notional at the touch; deeper levels hold more


def generate_book(
    instrument_key: str, day: date | str, trades: pa.Table, log_mid: np.ndarray, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A 10-level book and its top of book (quotes) consistent with the day's sample trades.

    Built *from* the trades, so the trades stay exactly what :func:`generate_trades` makes:

    * every trade is at the touch of the book in force: a buy aggressor's first fill is the best
      ask, a sell's the best bid, and a sweep's deeper fills are at the ask/bid levels it walked;
    * every level the trades of a 100 ms interval take holds at least what they took (so the
      tape never trades more than the book showed), and a level's size grows with its depth;
    * the spread varies: 1 tick where both sides trade within the interval (as on a liquid
      perpetual), wider (Poisson, scaled by the second's volatility) where only one side trades
      or nothing does.

    One book row per 100 ms interval holding trades (stamped at the interval's start, so it is in
    force before its trades), plus one per quiet second; levels are on consecutive ticks.
    """
    day = layout.parse_day(day)
    spec = schemas.default_instrument_row(instrument_key)
    tick, lot = float(spec["tick_size"]), float(spec["lot_size"])
    pp, sp = int(spec["price_precision"]), int(spec["size_precision"])
    rng = _rng(seed, day, "book", instrument_key)
    day_ns = _day_number(day) * _SEC_PER_DAY * _NS
    bucket_ns = BOOK_BUCKET_MS * 1_000_000

    ts = trades.column("ts_event").to_numpy()
    t_bucket = (ts - day_ns) // bucket_ns
    per_sec = 1000 // BOOK_BUCKET_MS
    quiet = np.setdiff1d(
        np.arange(_SEC_PER_DAY, dtype=np.int64) * per_sec, t_bucket // per_sec * per_sec
    )
    quiet = quiet[~np.isin(quiet // per_sec, t_bucket // per_sec)]
    buckets = np.union1d(np.unique(t_bucket), quiet)
    n = buckets.size
    row = np.searchsorted(buckets, t_bucket)
    sec = buckets // per_sec

    # The trade generator's own reference: bid = floor(mid / tick) in each second.
    ref = np.floor(np.exp(log_mid) / tick).astype(np.int64)
    buy = is_buy_side(trades)
    price_ticks = np.round(trades.column("price").to_numpy() / tick).astype(np.int64)
    t_ref = ref[(ts - day_ns) // _NS]
    depth = np.where(buy, price_ticks - (t_ref + 1), t_ref - price_ticks)
    has_buy = np.bincount(row, weights=buy, minlength=n) > 0
    has_sell = np.bincount(row, weights=~buy, minlength=n) > 0

    vol = np.abs(np.diff(log_mid, prepend=log_mid[0]))
    vol_factor = vol[sec] / (np.median(vol) + 1e-12)
    spread = 1 + rng.poisson(np.clip(0.5 * vol_factor, 0.1, 4.0), n)
    b = ref[sec]
    bid0 = np.where(has_sell, b, np.where(has_buy, b + 1 - spread, b - (spread - 1) // 2))
    ask0 = np.where(has_buy, b + 1, np.where(has_sell, b + spread, bid0 + spread))

    levels = np.arange(schemas.BOOK_LEVELS)
    mid_price = np.exp(log_mid[sec])
    base_notional = rng.lognormal(np.log(LEVEL_NOTIONAL), 0.8, (2, n, schemas.BOOK_LEVELS))
    base_notional *= 1.0 + 0.25 * levels
    lots = np.maximum(np.round(base_notional / mid_price[None, :, None] / lot), 1)
    # Resting size persists: a level is refreshed in ~30 % of the rows, else keeps its size.
    refresh = rng.random(lots.shape) < 0.3
    refresh[:, 0, :] = True
    last = np.maximum.accumulate(np.where(refresh, np.arange(n)[None, :, None], 0), axis=1)
    lots = np.take_along_axis(lots, last, axis=1)
    # What the interval's trades took at each (side, level): the book must have shown it.
    deep = (depth >= 0) & (depth < schemas.BOOK_LEVELS)
    took = np.zeros((2, n, schemas.BOOK_LEVELS))
    size_lots = np.round(trades.column("size").to_numpy() / lot)
    np.add.at(took, (buy[deep].astype(np.int64), row[deep], depth[deep]), size_lots[deep])
    # took[1] = buys (they take asks), took[0] = sells (they take bids).
    bid_lots = np.maximum(lots[0], np.ceil(took[0] * 1.1))
    ask_lots = np.maximum(lots[1], np.ceil(took[1] * 1.1))

    bid_px = np.round((bid0[:, None] - levels) * tick, pp)
    ask_px = np.round((ask0[:, None] + levels) * tick, pp)
    ts_event = day_ns + buckets * bucket_ns
    latency = rng.lognormal(np.log(2e6), 0.6, n).astype(np.int64)
    book = books.snapshot_frame(
        ts_event,
        ts_event + latency,
        bid_px,
        np.round(bid_lots * lot, sp),
        ask_px,
        np.round(ask_lots * lot, sp),
    )
    quotes = book.select(
        "ts_event",
        "ts_init",
        pl.col("bid_price_0").alias("bid_price"),
        pl.col("bid_size_0").alias("bid_size"),
        pl.col("ask_price_0").alias("ask_price"),
        pl.col("ask_size_0").alias("ask_size"),
    )
    changed = pl.any_horizontal(
        pl.col(c).ne_missing(pl.col(c).shift(1)).fill_null(True)
        for c in ("bid_price", "bid_size", "ask_price", "ask_size")
    )
    return book, quotes.filter(changed)


def is_buy_side(trades: pa.Table) -> np.ndarray:
    """Aggressor side of each trade as a boolean array (True = buy)."""
    return np.asarray(trades.column("side").to_numpy(zero_copy_only=False) == "buy")


def generate_funding(
    instrument_key: str, day: date | str, log_mid: np.ndarray, seed: int = 0
) -> pl.DataFrame:
    """Funding at 00:00, 08:00 and 16:00 UTC; rate around the 0.01 % baseline, mark from the path."""
    day = layout.parse_day(day)
    spec = schemas.default_instrument_row(instrument_key)
    rng = _rng(seed, day, "funding", instrument_key)
    secs = np.array([0, 8 * 3600, 16 * 3600])
    rate = np.clip(0.0001 + rng.normal(0, 0.00008, 3), -0.0075, 0.0075).round(8)
    mark = np.round(np.exp(log_mid[secs]), int(spec["price_precision"]))
    start_ns, _ = layout.day_bounds_ns(day)
    return pl.DataFrame(
        {"ts_event": start_ns + secs * _NS, "funding_rate": rate, "mark_price": mark},
        schema={"ts_event": pl.Int64, "funding_rate": pl.Float64, "mark_price": pl.Float64},
    )


def generate_signals(
    instrument_key: str,
    day: date | str,
    log_mid: np.ndarray,
    *,
    coverage: float = 0.10,
    seed: int = 0,
) -> pl.DataFrame:
    """Non-overlapping 30–120 s execution windows whose total is ≈ `coverage` of the day.

    Targets are a random walk of positions within ±SIGNAL_MAX_NOTIONAL (≈ ±0.5 BTC), with some
    returns to flat; LIMIT signals carry a passive limit price or null (join the last trade).
    `signal_id` is left empty: ids are assigned once all instruments of the day are merged.
    """
    day = layout.parse_day(day)
    spec = schemas.default_instrument_row(instrument_key)
    tick, lot = float(spec["tick_size"]), float(spec["lot_size"])
    pp, sp = int(spec["price_precision"]), int(spec["size_precision"])
    rng = _rng(seed, day, "signals", instrument_key)
    target_s = max(0.0, min(coverage, 0.9)) * _SEC_PER_DAY
    if target_s < 30:
        return pl.DataFrame(schema=_SIGNALS_PL)
    draws = rng.integers(30, 121, int(target_s // 30) + 2)
    n = int(np.searchsorted(np.cumsum(draws), target_s)) + 1
    windows = draws[:n].astype(np.float64)
    free = _SEC_PER_DAY - windows.sum() - 1.0
    gaps = rng.dirichlet(np.ones(n + 1)) * free
    starts = np.cumsum(gaps[:n]) + np.concatenate([[0.0], np.cumsum(windows)[:-1]])
    start_ms = np.floor(starts * 1000).astype(np.int64)
    sec = np.minimum(start_ms // 1000, _SEC_PER_DAY - 1)
    mid = np.exp(log_mid[sec])

    max_pos = SIGNAL_MAX_NOTIONAL / mid
    # A strategy with a small edge, as research signals have: the target leans on the next
    # half hour's return (correlation ≈ SIGNAL_SKILL), so the demo's PnL and equity curve show
    # something a researcher recognises instead of pure fee drag.
    horizon = np.minimum(sec + SIGNAL_HORIZON_S, _SEC_PER_DAY - 1)
    fwd = log_mid[horizon] - log_mid[sec]
    z = fwd / (np.std(fwd) or 1.0)
    score = SIGNAL_SKILL * z + np.sqrt(1 - SIGNAL_SKILL**2) * rng.standard_normal(n)
    target = np.clip(score / 1.5, -1.0, 1.0) * max_pos
    target[rng.random(n) < 0.15] = 0.0
    target = np.round(np.round(target / lot) * lot, sp)
    prev = np.concatenate([[0.0], target[:-1]])
    algo = rng.choice(np.array(["MARKET", "LIMIT", "TWAP"]), n, p=[0.4, 0.35, 0.25])
    buying = target >= prev
    offset_bps = rng.uniform(0.0, 5.0, n) * 1e-4
    limit_ticks = np.where(
        buying, np.floor(mid * (1 - offset_bps) / tick), np.ceil(mid * (1 + offset_bps) / tick)
    )
    limit = np.round(limit_ticks * tick, pp)
    has_limit = (algo == "LIMIT") & (rng.random(n) >= 0.4)
    start_ns, _ = layout.day_bounds_ns(day)
    return pl.DataFrame(
        {
            "signal_id": [""] * n,
            "ts_event": start_ns + start_ms * 1_000_000,
            "instrument_key": [instrument_key] * n,
            "target_position": target,
            "execution_window_s": windows,
            "algo": algo,
            "limit_price": pl.Series(np.where(has_limit, limit, np.nan)).fill_nan(None),
        },
        schema=_SIGNALS_PL,
    )


def bars_from_trades(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """1-minute OHLCV bars (ts_event = minute start, ns) of a time-ordered trades table; minutes
    with no trade are absent. Used for marks/equity curves without reading the tape.

    Sequential reductions over each minute's run of rows (numpy ``reduceat``) rather than a
    parallel group-by: a float sum whose order depends on thread scheduling gives a different
    last bit from run to run, and an input object must have the same bytes every time.
    """
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    cols = ("open", "high", "low", "close", "volume")
    schema = {"ts_event": pl.Int64, **dict.fromkeys(cols, pl.Float64)}
    ts = df["ts_event"].to_numpy()
    if ts.size == 0:
        return pl.DataFrame(schema=schema)
    if np.any(np.diff(ts) < 0):
        raise ValueError("bars_from_trades needs trades sorted by ts_event")
    minute = 60 * _NS
    start = ts // minute * minute
    first = np.flatnonzero(np.r_[True, start[1:] != start[:-1]])
    last = np.r_[first[1:] - 1, ts.size - 1]
    price = df["price"].to_numpy().astype(np.float64, copy=False)
    size = df["size"].to_numpy().astype(np.float64, copy=False)
    values = (
        price[first],
        np.maximum.reduceat(price, first),
        np.minimum.reduceat(price, first),
        price[last],
        np.add.reduceat(size, first),
    )
    return pl.DataFrame(
        {"ts_event": start[first], **dict(zip(cols, values, strict=True))}, schema=schema
    )


def instruments_for_day(extra: list[str] | None = None) -> pl.DataFrame:
    """The reference instruments plus any extra keys (defaults), validated."""
    keys = list(schemas.REFERENCE_INSTRUMENTS)
    keys += [k for k in (extra or []) if k not in schemas.REFERENCE_INSTRUMENTS]
    df = schemas.instruments_frame([schemas.default_instrument_row(k) for k in keys])
    return schemas.validate_instruments(df, "<generated instruments>")


def _coverage(signals: pl.DataFrame, key: str) -> float:
    s = signals.filter(pl.col("instrument_key") == key)
    return float(s["execution_window_s"].sum()) / _SEC_PER_DAY if s.height else 0.0


def generate_sample_data(
    ucs: Any,
    start: date | str,
    days: int,
    instruments: list[str] | None = None,
    trades_per_day: int = 2_000_000,
    signal_coverage: float = 0.10,
    seed: int = 0,
    strategy_id: str = "demo-strategy",
    book: bool = False,
) -> dict[str, Any]:
    """Write `days` days of sample data through `ucs`; return a summary (counts, paths, timings).

    With ``book`` each instrument-day also gets quotes and a 10-level book built from its trades
    (:func:`generate_book`); everything else is byte-identical to a run without it.

    Per day: instruments.parquet (reference set + requested keys), and for each requested
    instrument (default: Binance BTCUSDT perpetual) trades, funding (perpetuals), derived 1-minute
    bars (when the layout defines `bars_path`), plus one signals file for `strategy_id`.
    Existing objects are overwritten: the output depends only on the arguments.
    """
    start_day = layout.parse_day(start)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if trades_per_day < 0:
        raise ValueError(f"trades_per_day must be >= 0, got {trades_per_day}")
    if not 0.0 <= signal_coverage <= 0.9:
        raise ValueError(f"signal_coverage must be within [0, 0.9], got {signal_coverage}")
    layout.validate_strategy_id(strategy_id)
    keys = list(instruments) if instruments else list(DEFAULT_TRADE_INSTRUMENTS)
    for key in keys:
        layout.validate_instrument_key(key)
    if len(set(keys)) != len(keys):
        raise ValueError(f"instruments contain duplicates: {keys}")

    t_ins, t_ticks, t_sig = (
        layout.target("instruments"),
        layout.target("ticks"),
        layout.target("signals"),
    )
    write_bars = hasattr(layout, "bars_path")
    summary: dict[str, Any] = {
        "start": start_day.isoformat(),
        "days": days,
        "seed": seed,
        "strategy_id": strategy_id,
        "instruments": keys,
        "trades_per_day": trades_per_day,
        "template": str(bars_csv_path() or "GARCH(1,1) fallback"),
        "per_day": [],
        "generate_seconds": 0.0,
        "write_seconds": 0.0,
        "bytes_written": 0,
    }
    instruments_bytes = parquet_io.table_to_parquet_bytes(
        instruments_for_day(keys), schemas.INSTRUMENTS_SCHEMA
    )

    def put(target: Any, path: str, data: bytes) -> None:
        t0 = time.perf_counter()
        ucs.upload_to_gcs_sync(target, path, data, format="parquet")
        summary["write_seconds"] += time.perf_counter() - t0
        summary["bytes_written"] += len(data)

    for i in range(days):
        day = start_day + timedelta(days=i)
        entry: dict[str, Any] = {
            "day": day.isoformat(),
            "trades": {},
            "paths": [],
            "signal_coverage": {},
        }
        put(t_ins, layout.instruments_path(day), instruments_bytes)
        entry["paths"].append(ucs.uri(t_ins, layout.instruments_path(day)))
        signal_parts = []
        for key in keys:
            t0 = time.perf_counter()
            trades, log_mid = generate_trades(key, day, trades_per_day, seed)
            summary["generate_seconds"] += time.perf_counter() - t0
            path = layout.trades_path(day, key)
            trades = schemas.validate_trades(trades, ucs.uri(t_ticks, path), day=day)
            t0 = time.perf_counter()
            payload = parquet_io.trades_to_parquet_bytes(trades)
            summary["write_seconds"] += time.perf_counter() - t0
            put(t_ticks, path, payload)
            entry["trades"][key] = trades.num_rows
            entry["paths"].append(ucs.uri(t_ticks, path))
            if layout.parse_instrument_key(key)[1] == "PERPETUAL":
                fpath = layout.funding_path(day, key)
                funding = schemas.validate_funding(
                    generate_funding(key, day, log_mid, seed), fpath, day=day
                )
                put(
                    t_ticks,
                    fpath,
                    parquet_io.table_to_parquet_bytes(funding, schemas.FUNDING_SCHEMA),
                )
                entry["paths"].append(ucs.uri(t_ticks, fpath))
            if write_bars and trades.num_rows:
                bpath = layout.bars_path(day, key)  # type: ignore[attr-defined]
                bars = bars_from_trades(trades)
                put(t_ticks, bpath, parquet_io.table_to_parquet_bytes(bars, schemas.BARS_SCHEMA))
                entry["paths"].append(ucs.uri(t_ticks, bpath))
            if book and trades.num_rows:
                t0 = time.perf_counter()
                depth10, quotes = generate_book(key, day, trades, log_mid, seed)
                qpath, dpath = layout.quotes_path(day, key), layout.book_depth10_path(day, key)
                quotes = schemas.validate_quotes(quotes, ucs.uri(t_ticks, qpath), day=day)
                depth10 = schemas.validate_book_depth10(depth10, ucs.uri(t_ticks, dpath), day=day)
                q_bytes = parquet_io.quotes_to_parquet_bytes(quotes)
                d_bytes = parquet_io.book_depth10_to_parquet_bytes(depth10)
                summary["book_seconds"] = summary.get("book_seconds", 0.0) + (
                    time.perf_counter() - t0
                )
                put(t_ticks, qpath, q_bytes)
                put(t_ticks, dpath, d_bytes)
                entry["paths"] += [ucs.uri(t_ticks, qpath), ucs.uri(t_ticks, dpath)]
                entry.setdefault("quotes", {})[key] = quotes.height
                entry.setdefault("book_depth10", {})[key] = depth10.height
            signal_parts.append(
                generate_signals(key, day, log_mid, coverage=signal_coverage, seed=seed)
            )
        signals = pl.concat(signal_parts).sort("ts_event", maintain_order=True)
        signals = signals.with_columns(
            signal_id=pl.format(
                "{}-{}-{}",
                pl.lit(strategy_id),
                pl.lit(day.strftime("%Y%m%d")),
                pl.int_range(pl.len()).cast(pl.String).str.zfill(5),
            )
        )
        spath = layout.signals_path(day, strategy_id)
        if signals.height:
            signals = schemas.validate_signals(signals, ucs.uri(t_sig, spath), day=day)
            put(t_sig, spath, parquet_io.table_to_parquet_bytes(signals, schemas.SIGNALS_SCHEMA))
            entry["paths"].append(ucs.uri(t_sig, spath))
        entry["signals"] = signals.height
        entry["signal_coverage"] = {k: round(_coverage(signals, k), 4) for k in keys}
        summary["per_day"].append(entry)
    summary["generate_seconds"] = round(summary["generate_seconds"], 3)
    summary["write_seconds"] = round(summary["write_seconds"], 3)
    return summary
