"""Run a configured backtest through ONE NautilusTrader ``BacktestEngine``, streamed day by day.

Days are added, run with ``streaming=True`` and cleared in order, so positions, balances, open
orders, timers and strategy state carry across midnight while memory stays bounded by one day.
Each day runs as consecutive time windows of at most ``CHUNK_TICKS`` ticks (converted to engine
objects only when their window comes), each given explicit ``[start, end − 1]`` bounds: timers
that fall after a window's last tick then fire at their own timestamps at the start of the next
window's run (or at the final ``end()`` flush), never late and never skipped.

No storage access here: the caller hands in-memory frames/tables per day (``DayInput``).
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from nautilus_trader.accounting.margin_models import StandardMarginModel
from nautilus_trader.backtest.config import BacktestEngineConfig
from nautilus_trader.backtest.engine import BacktestEngine
from nautilus_trader.backtest.models import FillModel, LatencyModel, MakerTakerFeeModel
from nautilus_trader.config import LoggingConfig, RiskEngineConfig
from nautilus_trader.model.enums import AccountType, BookType, OmsType
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Currency, Money

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, MarketData
from backtest_pipeline.data.books import InvalidPeriod
from backtest_pipeline.engine import instruments as names
from backtest_pipeline.engine.conversion import (
    DepthColumns,
    QuoteColumns,
    depth_columns,
    marks_per_second,
    quote_columns,
    quotes_restored_after_trades,
    sorted_ts_event_ns,
    top_of_book,
)
from backtest_pipeline.engine.feed import OperationFeed, PreparedDay, run_intervals
from backtest_pipeline.engine.output import BoundaryState, EngineOutput, avg_slippage_bps
from backtest_pipeline.engine.strategy import ExecutionStrategy, FundingEvent, VenueHandle
from backtest_pipeline.results.operations import (
    MarketReferences,
    PendingOperation,
    PriceSeries,
    Tape,
    day_of_ns,
)
from backtest_pipeline.signals.intervals import signal_intervals
from backtest_pipeline.trading.orchestrator import Signal

log = logging.getLogger("backtest_pipeline.engine")

_MS = 1_000_000
_DAY_NS = 86_400_000_000_000

FUNDING_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "instrument_key": pl.Utf8(),
    "position": pl.Float64(),
    "mark_price": pl.Float64(),
    "funding_rate": pl.Float64(),
    "payment": pl.Float64(),
}
MARKS_SCHEMA: dict[str, pl.DataType] = {
    "ts_event": pl.Int64(),
    "instrument_key": pl.Utf8(),
    "price": pl.Float64(),
}


class EngineInputError(ValueError):
    """Inputs that cannot be run as given (unknown instrument, bad signal...)."""


@dataclass
class DayInput:
    day: date
    instruments: pl.DataFrame
    signals: pl.DataFrame
    trades: dict[str, pa.Table]
    funding: dict[str, pl.DataFrame]
    bars: dict[str, pl.DataFrame] | None = None
    # Per instrument key, the day's quotes / 10-level snapshots inside the signal intervals
    # (each with the row in force before every interval), for instruments run on them.
    quotes: dict[str, pa.Table] = field(default_factory=dict)
    depth: dict[str, pa.Table] = field(default_factory=dict)
    # Per instrument key run on depth, the periods of the day its stored book is unknown (a
    # sequence gap until the next snapshot): orders there are rejected (ExecutionStrategy).
    book_invalid: dict[str, list[InvalidPeriod]] = field(default_factory=dict)


def _is_derivatives_venue(config: BacktestConfig, venue: str) -> bool:
    return any(
        layout.parse_instrument_key(k)[1] != "SPOT"
        for k in config.instruments
        if layout.parse_instrument_key(k)[0] == venue
    )


def _logging(log_dir: Path | None, level: str = "WARNING") -> LoggingConfig:
    """Nothing from Nautilus on the terminal; with ``log_dir``, its lines from ``level`` to a file.

    ``log_level="OFF"`` also silences the ERROR lines Nautilus otherwise always copies to
    stderr: a CLI run's terminal belongs to the product, and problems that matter to a result
    surface through our exceptions and stats; the engine's own view stays in ``execution.log``.
    """
    if log_dir is None:
        return LoggingConfig(bypass_logging=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    return LoggingConfig(
        log_level="OFF",
        log_level_file=level,
        log_directory=str(log_dir),
        log_file_name="execution",
        log_colors=False,
    )


@contextmanager
def _engine_stderr_to(path: Path) -> Iterator[None]:
    """Send what the engine writes to file descriptor 2 into ``path``; Python keeps the terminal.

    Nautilus 1.231 copies every ERROR log line to stderr whatever ``log_level`` says (verified:
    ``"OFF"`` silences stdout only, and ``log_components_only`` silences the file too). Those
    lines are in ``execution.log`` already, so during the run fd 2 points to a side file while
    ``sys.stderr`` (the CLI's progress bar, warnings) is re-opened on the original terminal.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    py_stderr = sys.stderr
    term = open(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    try:
        os.dup2(target, 2)
        sys.stderr = term
        yield
    finally:
        term.flush()
        sys.stderr = py_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)
        term.close()


def venue_books(
    config: BacktestConfig, market_data: Mapping[str, MarketData] | None
) -> dict[str, MarketData]:
    """Per venue, the data its book is built from: Nautilus sets ``book_type`` per venue.

    ``depth`` (``L2_MBP``) when its instruments run on depth (they all do: see
    ``run/inputs.resolve_market_data``), ``quotes`` when they all run on quotes, else ``trades``
    (``L1_MBP`` either way).
    """
    md = market_data or {}
    out: dict[str, MarketData] = {}
    for venue in config.venue_names:
        kinds = {md.get(k, "trades") for k in config.instruments if names.venue_of_key(k) == venue}
        if "depth" in kinds and kinds != {"depth"}:
            raise EngineInputError(
                f"venue {venue}: instruments on depth and on {sorted(kinds - {'depth'})} cannot "
                "share one Nautilus venue (its book type is per venue)"
            )
        out[venue] = (
            "depth" if kinds == {"depth"} else "quotes" if kinds == {"quotes"} else "trades"
        )
    return out


def _build_engine(
    config: BacktestConfig,
    log_dir: Path | None,
    market_data: Mapping[str, MarketData] | None = None,
) -> tuple[BacktestEngine, dict[str, VenueHandle]]:
    engine = BacktestEngine(
        config=BacktestEngineConfig(
            trader_id=TraderId("BACKTESTER-001"),
            logging=_logging(log_dir, config.engine_log_level),
            risk_engine=RiskEngineConfig(bypass=False),
            run_analysis=False,
        )
    )
    ccy = Currency.from_str(config.account_currency)
    handles: dict[str, VenueHandle] = {}
    fm = config.fill_model
    books = venue_books(config, market_data)
    for venue in config.venue_names:
        vc = config.venue(venue)
        depth = books[venue] == "depth"
        lat = vc.latency
        derivatives = _is_derivatives_venue(config, venue)
        handle = VenueHandle()
        handles[venue] = handle
        engine.add_venue(
            venue=Venue(names.to_nautilus_venue(venue)),
            oms_type=OmsType.NETTING,
            account_type=AccountType.MARGIN if derivatives else AccountType.CASH,
            # Spot pairs need a multi-currency cash account (base_currency None).
            base_currency=ccy if derivatives else None,
            starting_balances=[Money(vc.starting_balance, ccy)],
            default_leverage=Decimal(1),
            margin_model=StandardMarginModel() if derivatives else None,
            modules=[handle],
            fill_model=FillModel(
                prob_fill_on_limit=fm.prob_fill_on_limit,
                prob_slippage=fm.prob_slippage,
                random_seed=fm.random_seed,
            ),
            fee_model=MakerTakerFeeModel(),
            latency_model=LatencyModel(
                base_latency_nanos=round(lat.base_ms * _MS),
                insert_latency_nanos=round(lat.insert_ms * _MS),
                update_latency_nanos=round(lat.update_ms * _MS),
                cancel_latency_nanos=round(lat.cancel_ms * _MS),
            ),
            book_type=BookType.L2_MBP if depth else BookType.L1_MBP,
            bar_execution=False,
            trade_execution=True,
            liquidity_consumption=(
                fm.depth_liquidity_consumption if depth else fm.liquidity_consumption
            ),
            queue_position=fm.queue_position_for(books[venue]),
            use_random_ids=False,
        )
        # The handle has its exchange now (``register_venue`` ran inside ``add_venue``); left in
        # the exchange's module list it would cost a Python call per tick (~9 % of the engine).
        handle.exchange.modules.remove(handle)
    return engine, handles


def _signals_of(df: pl.DataFrame) -> list[Signal]:
    if df.height == 0:
        return []
    d = df.with_columns(pl.col("ts_event").cast(pl.Int64)).sort("ts_event", maintain_order=True)
    lp = d["limit_price"] if "limit_price" in d.columns else pl.Series([None] * d.height)
    return [
        Signal(
            signal_id=str(sid),
            ts_event=int(ts),
            instrument_key=str(key),
            target_position=float(tp),
            execution_window_s=float(w),
            algo=str(algo).upper(),
            limit_price=None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p),
        )
        for sid, ts, key, tp, w, algo, p in zip(
            d["signal_id"], d["ts_event"], d["instrument_key"], d["target_position"],
            d["execution_window_s"], d["algo"], lp, strict=True,
        )
    ]  # fmt: skip


def _funding_of(funding: dict[str, pl.DataFrame], keys: set[str]) -> list[FundingEvent]:
    out: list[FundingEvent] = []
    for key in sorted(funding):
        if key not in keys:
            continue
        df = funding[key]
        if df.height == 0:
            continue
        d = df.select(
            pl.col("ts_event").cast(pl.Int64),
            pl.col("funding_rate").cast(pl.Float64),
            pl.col("mark_price").cast(pl.Float64),
        )
        for ts, rate, mark in d.iter_rows():
            out.append(FundingEvent(int(ts), key, float(rate), float(mark)))
    out.sort(key=lambda e: (e.ts_event, e.instrument_key))
    return out


def _validate_signals(
    day: DayInput, sigs: list[Signal], run_keys: set[str], day_keys: set[str]
) -> None:
    for s in sigs:
        if s.instrument_key not in run_keys:
            raise EngineInputError(
                f"signal {s.signal_id} on {day.day}: instrument {s.instrument_key} is not in "
                f"config.instruments {sorted(run_keys)}"
            )
        if s.instrument_key not in day_keys:
            raise EngineInputError(
                f"signal {s.signal_id} on {day.day}: instrument {s.instrument_key} is not in "
                f"that day's instruments.parquet"
            )


# Ticks handed to the engine per ``run`` call. Nautilus keeps ~185 bytes per TradeTick object, so
# converting a whole 2 M-trade day at once held ~370 MB; windows of this many ticks bound the
# working set by a window instead of by the busiest day. Measured with `backtest run --full-day
# --json` over 2 days of 2 M trades: peak RSS 1,264 → 892 MB, engine time 20.6 → 20.5 s.
CHUNK_TICKS = 100_000


class _DayFeeder:
    """Turns each ``DayInput`` into engine state (instruments, alerts) and engine ticks.

    Shared by :func:`run_engine` and :func:`bare_engine_run` so that both run exactly the same
    strategy schedule on exactly the same ticks.
    """

    def __init__(
        self,
        config: BacktestConfig,
        engine: BacktestEngine,
        strategy: ExecutionStrategy,
        market_data: Mapping[str, MarketData] | None = None,
    ) -> None:
        self.config = config
        self.market_data: dict[str, MarketData] = {
            k: (market_data or {}).get(k, "trades") for k in config.instruments
        }
        self.engine = engine
        self.strategy = strategy
        self.run_keys = set(config.instruments)
        self.marks: list[pl.DataFrame] = []
        self.intervals: dict[date, pl.DataFrame] = {}
        self.last_day: date | None = None
        self.n_days = 0
        self.last_book_ns: dict[str, int] = {}  # per book key, the time of its last row read
        # Marks not yet cut to what the results read: (index in ``marks``, day start, day end).
        self._unpruned: list[tuple[int, int, int]] = []
        self._fills_seen = 0
        self._fill_ts = np.empty(0, dtype=np.int64)
        interval_ns = int(config.equity_interval_s * 1_000_000_000)
        # The equity grid starts at a day's start; only a step that divides the day puts it at
        # the same instants of every day whatever the run's (or a shard's) first day is.
        self._grid_ns = interval_ns if interval_ns > 0 and _DAY_NS % interval_ns == 0 else None

    def prepare(self, day: DayInput, *, with_marks: bool = True) -> PreparedDay:
        config, strategy, run_keys = self.config, self.strategy, self.run_keys
        if self.last_day is not None and day.day <= self.last_day:
            raise EngineInputError(
                f"days must be strictly increasing: {day.day} after {self.last_day}"
            )
        self.last_day = day.day
        self.n_days += 1
        day_start, day_end = layout.day_bounds_ns(day.day)
        rows = {r["instrument_key"]: r for r in day.instruments.iter_rows(named=True)}
        day_keys = set(rows) & run_keys
        for key in sorted(day_keys):
            if key not in strategy.info:
                venue = names.venue_of_key(key)
                inst = names.build_instrument(rows[key], config.venue(venue).fees, day_start)
                self.engine.add_instrument(inst)
                strategy.register_instrument(key, inst)
        strategy.set_available(day_start // _DAY_NS, day_keys)
        sigs = _signals_of(day.signals)
        _validate_signals(day, sigs, run_keys, day_keys)
        if with_marks:
            self.intervals[day.day] = signal_intervals(
                day.signals, day.day, config.lookback_s, config.grace_s
            )
        trades: dict[str, pa.Table | pl.DataFrame] = {}
        for key in sorted(day.trades):
            if key not in run_keys:
                continue
            if key not in strategy.info:
                raise EngineInputError(
                    f"trades for {key} on {day.day} but it is not in that day's instruments"
                )
            table = trades[key] = day.trades[key]
            if with_marks:
                self._add_marks(marks_per_second(table, key), day_start, day_end)
        if with_marks and config.use_bars_for_marks and day.bars:
            for key in sorted(day.bars):
                b = day.bars[key]
                self._add_marks(
                    b.select(
                        pl.col("ts_event").cast(pl.Int64),
                        pl.lit(key).alias("instrument_key"),
                        pl.col("close").cast(pl.Float64).alias("price"),
                    ),
                    day_start,
                    day_end,
                )
        strategy.schedule_day(
            day.day.isoformat(), sigs, _funding_of(day.funding, day_keys), day_end_ns=day_end
        )
        for key in sorted(day.book_invalid):
            if self.market_data.get(key) == "depth" and key in trades:
                strategy.add_book_invalid(key, day.book_invalid[key])
        books = self._books(day, trades)
        instruments = {k: strategy.info[k].instrument for k in set(trades) | set(books)}
        return PreparedDay(trades, instruments, day_start, day_end, books)

    def _add_marks(self, frame: pl.DataFrame, day_start: int, day_end: int) -> None:
        self._unpruned.append((len(self.marks), day_start, day_end))
        self.marks.append(frame)

    def prune_marks(self, now_ns: int, *, every_day: bool = False) -> None:
        """Cut each finished day's marks to those the equity curve and positions can read.

        The results value a position at each equity-grid instant and each fill by an as-of
        join: the last finite mark at or before it (``results/tables.py``). Only those marks
        are kept: per instrument, the last one at or before each grid instant of its day
        (the day's end included, which also serves the next days' first instants) and each
        fill of that day. The join then finds exactly the marks it found in the whole set, so
        the results are the same while a day's ~10,000 per-second marks shrink to ~1,500 and
        the run no longer holds every second it read. A day is cut once the engine's clock has
        passed its end (all its fills are known), or at the run's end (``every_day``).
        """
        if self._grid_ns is None or not self._unpruned:
            return
        new = self.strategy.fills.column("ts_event", self._fills_seen).astype(np.int64)
        self._fills_seen += len(new)
        if len(new):
            self._fill_ts = np.concatenate([self._fill_ts, new])
        keep: list[tuple[int, int, int]] = []
        for i, start, end in self._unpruned:
            if not every_day and now_ns < end:
                keep.append((i, start, end))
                continue
            fills = self._fill_ts[(self._fill_ts >= start) & (self._fill_ts < end)]
            grid = np.arange(start, end + 1, self._grid_ns, dtype=np.int64)
            self.marks[i] = _marks_read_at(self.marks[i], np.union1d(grid, fills))
        self._unpruned = keep
        first = min((s for _, s, _ in keep), default=None)
        self._fill_ts = (
            self._fill_ts[self._fill_ts >= first] if first is not None else self._fill_ts[:0]
        )

    def _books(
        self, day: DayInput, trades: Mapping[str, pa.Table | pl.DataFrame]
    ) -> dict[str, QuoteColumns | DepthColumns]:
        """The day's book data of every instrument run on quotes or depth and read that day."""
        books: dict[str, QuoteColumns | DepthColumns] = {}
        for key in sorted(trades):
            kind = self.market_data.get(key, "trades")
            if kind == "trades":
                continue
            source = day.quotes if kind == "quotes" else day.depth
            if key not in source:
                raise EngineInputError(
                    f"{key} runs on {kind} but the inputs of {day.day} hold no {kind} for it"
                )
            if kind == "depth":
                books[key] = depth_columns(source[key])
                if len(books[key]):
                    self.last_book_ns[key] = int(books[key].ts_event[-1])
                continue
            trade_ts = sorted_ts_event_ns(trades[key])
            if trade_ts is None:
                trade_ts = np.sort(
                    pl.from_arrow(trades[key]).get_column("ts_event").cast(pl.Int64).to_numpy()  # type: ignore[union-attr]
                )
            books[key] = quotes_restored_after_trades(
                quote_columns(source[key]), trade_ts.view(np.uint64)
            )
            if len(books[key]):
                self.last_book_ns[key] = int(books[key].ts_event[-1])
        return books


def _marks_read_at(marks: pl.DataFrame, instants: np.ndarray) -> pl.DataFrame:
    """The rows of ``marks`` that a backward as-of join at sorted ``instants`` can pick.

    Per instrument: the last finite mark at or before each instant (of equal timestamps, the
    later row, as ``results/tables._marks`` keeps), and its last mark. Rows keep their order.
    """
    finite = marks.filter(pl.col("price").is_finite())
    if finite.height == 0:
        return finite
    ts = finite.get_column("ts_event").to_numpy()
    keys = finite.get_column("instrument_key")
    groups = (
        [np.arange(finite.height)]
        if keys.n_unique() == 1
        else [np.flatnonzero((keys == k).to_numpy()) for k in keys.unique(maintain_order=True)]
    )
    rows: list[np.ndarray] = []
    for idx in groups:
        order = idx[np.argsort(ts[idx], kind="stable")]
        at = np.searchsorted(ts[order], instants, side="right") - 1
        rows.append(order[np.unique(np.append(at[at >= 0], order.size - 1))])
    return finite[np.sort(np.concatenate(rows))]


def _feed_for(
    config: BacktestConfig,
    engine: BacktestEngine,
    strategy: ExecutionStrategy,
    market_data: Mapping[str, MarketData],
) -> OperationFeed | None:
    """The operations feed of ``config`` (None: every tick of the intervals, ``run_intervals``).

    Its first window after a signal spans the slowest venue's order and cancel latency twice, so
    a market operation is usually done within it; busy stretches then grow up to a minute.
    Resting limits are left alone between the prints that reach them only on trade-built books
    with certain limit fills and no liquidity or queue tracking: there nothing else moves them.
    """
    if config.engine_feed != "operations":
        return None
    fm = config.fill_model
    exact_limits = fm.prob_fill_on_limit == 1.0 and not fm.liquidity_consumption
    if exact_limits and not fm.queue_position_for("trades"):
        strategy.rest_keys = {k for k, v in market_data.items() if v == "trades"}
    first = 2 * strategy.latency_span_ns() + _MS
    return OperationFeed(engine, strategy, first, 60_000 * _MS, CHUNK_TICKS)


def _run_day(
    engine: BacktestEngine,
    prepared: PreparedDay,
    feed: OperationFeed | None,
    max_ticks: int | None,
) -> tuple[int, float]:
    if feed is None:
        return run_intervals(engine, prepared, max_ticks)
    return feed.run_day(prepared)


def _end(engine: BacktestEngine, strategy: ExecutionStrategy) -> float:
    """End the run in the engine; the seconds it took. A strategy error surfaces here.

    ``ending`` arms the last day's SWEEP alert: ``end()`` flushes the timers up to the run's end,
    so the sweep's cancels and their settle alerts are processed inside the run's range.
    """
    t0 = time.perf_counter()
    strategy.ending = True
    engine.end()
    seconds = time.perf_counter() - t0
    if strategy.errors:
        raise strategy.errors[0]
    return seconds


def _purge_closed(
    engine: BacktestEngine, strategy: ExecutionStrategy, purged_ids: set[str]
) -> None:
    """Drop what the engine's cache keeps of finished business, so memory is bounded by a day.

    Nautilus keeps every order (with all its events) and every account state for the whole
    run. Our outputs come from the strategy's own records (OMS, fills, funding), and the
    strategy only looks up orders that are still open, so closed orders (their ids kept in
    ``purged_ids`` for ``engine_order_ids``) and all but the latest account state go.
    Positions are kept (the portfolio nets the open ones), but not the pickled snapshot
    Nautilus adds each time a netting position goes flat and reopens (~4 KB, ~50 a day here):
    they only serve the portfolio's realized-PnL queries, which nothing here asks (our PnL comes
    from our fills), and would otherwise grow with the run's days.
    """
    cache = engine.cache
    closed = [o.client_order_id.value for o in cache.orders_closed()]
    purged_ids.update(closed)
    # A closed order gets no more events: the strategy's per-order lookups of it can go too.
    strategy.forget_orders(closed)
    now = engine.kernel.clock.timestamp_ns()
    cache.purge_closed_orders(now)
    cache.purge_account_events(now)
    for position_id in cache.position_snapshot_ids():
        # The cache's own list (Nautilus hands it out, not a copy): emptied in place.
        del cache.position_snapshot_bytes(position_id)[:]
    # The portfolio's analyzer appends every closed position's PnL to a pandas Series by
    # ``pd.concat`` (1.231): a record of the whole run, copied at each close. Its statistics are
    # never asked for (``run_analysis`` off; our metrics come from our fills), so its records
    # start afresh each day.
    engine.portfolio.analyzer.reset()
    # pyarrow's FileMetaData and its ParquetSchema refer to each other: a footer dropped from
    # the footer cache is freed only by a full collection, which the few Python objects of a
    # cycle never trigger, while its native row-group metadata (MBs for a 2,000-group day
    # file) waits: RSS climbed ~100 MB over a week between full collections. One full
    # collection a day frees them before the heap is trimmed; the objects alive at the run's
    # start are frozen out of it (`_run_engine`), so it scans only what the run made.
    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    """Hand free heap pages back to the OS: Arrow's pool, then glibc's (a no-op elsewhere)."""
    pa.default_memory_pool().release_unused()
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def run_engine(
    config: BacktestConfig,
    days: Iterable[DayInput],
    log_dir: Path | None = None,
    *,
    warmup_days: int | None = None,
    final: bool = True,
    market_data: Mapping[str, MarketData] | None = None,
) -> EngineOutput:
    """Stream ``days`` (chronological; may be a lazy generator) through one engine.

    Every execution knob (TWAP slice, router drift, spot shorting, models) comes from
    ``config``; ``market_data`` says per instrument key which data its venue's book is built
    from (``run/inputs.resolve_market_data``; absent keys run on trades, today's model). After
    the last day the end-of-run sweep cancels whatever is still working, so
    every order of the output has a final status.

    For a time shard (``run/shards.py``) that continues another, ``warmup_days`` (≥ 0)
    leading days only bring the engine to a state; the output covers the days after them, with
    the state at that boundary in ``start_state``. A shard that is not ``final`` stops at its last day's end without the
    end-of-run sweep, as the one-engine run would be at that instant, and reports ``end_state``.
    """
    quiet = (
        _engine_stderr_to(log_dir / "engine_stderr.log") if log_dir is not None else nullcontext()
    )
    with quiet:
        return _run_engine(config, days, log_dir, warmup_days, final, market_data)


@dataclass
class _Mark:
    """How much of each output list existed at the end of the warm-up (sliced off later)."""

    orders: int = 0
    fills: int = 0
    funding: int = 0
    marks: int = 0
    operations: int = 0
    signals: int = 0
    stale: int = 0
    book_invalid_rejected: int = 0
    book_invalid_canceled: int = 0
    lost: int = 0
    slippage: int = 0
    ticks: int = 0
    engine_time: float = 0.0
    days: int = 0


def boundary_state(
    engine: BacktestEngine,
    strategy: ExecutionStrategy,
    config: BacktestConfig,
    day: date,
    last_book_ns: Mapping[str, int] | None = None,
    market_data: Mapping[str, MarketData] | None = None,
) -> BoundaryState:
    ccy = Currency.from_str(config.account_currency)
    positions = []
    for key in sorted(strategy.info):
        for p in engine.cache.positions_open(instrument_id=strategy.info[key].instrument.id):
            positions.append((key, float(p.signed_qty), float(p.avg_px_open)))
    balances = []
    for venue in config.venue_names:
        acct = engine.cache.account_for_venue(Venue(names.to_nautilus_venue(venue)))
        bal = acct.balance_total(ccy) if acct is not None else None
        balances.append((venue, str(bal.as_decimal()) if bal is not None else "0"))
    consumed: set[str] = set()
    last_book_ns = last_book_ns or {}
    if config.fill_model.depth_liquidity_consumption:
        # A snapshot read after a key's last fill resets its consumption before our next order
        # there, whichever feed runs (every row, or the jump's primer from the book in force).
        last_fill = {
            str(k): max(int(ts), 0)
            for k, ts in strategy.fills.frame()
            .group_by("instrument_key")
            .agg(pl.col("ts_event").max())
            .iter_rows()
        }
        consumed = {
            k
            for k, ts in last_book_ns.items()
            if (market_data or {}).get(k) == "depth" and last_fill.get(k, -1) >= ts
        }
    return BoundaryState(
        day=day,
        positions=tuple(positions),
        open_orders=tuple(r.order_id for r in strategy.oms.records() if r.is_open),
        open_operations=tuple(sorted(strategy.orch.unfinished())),
        balances=tuple(balances),
        consumed_books=tuple(sorted(consumed)),
        books_in_force=tuple(sorted(last_book_ns.items())),
    )


def _run_engine(
    config: BacktestConfig,
    days: Iterable[DayInput],
    log_dir: Path | None,
    warmup_days: int | None = None,
    final: bool = True,
    market_data: Mapping[str, MarketData] | None = None,
) -> EngineOutput:
    engine, handles = _build_engine(config, log_dir, market_data)
    strategy = ExecutionStrategy(config, handles)
    strategy.book_keys = {k for k, v in (market_data or {}).items() if v != "trades"}
    engine.add_strategy(strategy)
    feeder = _DayFeeder(config, engine, strategy, market_data)
    _log_caveats(config, venue_books(config, market_data))
    ccy = Currency.from_str(config.account_currency)
    ticks_total = 0
    engine_time = 0.0
    engine_order_ids: set[str] = set()  # ids of the orders purged from the engine's cache
    mark = _Mark()
    start_state: BoundaryState | None = None
    last_day: date | None = None
    refs = MarketReferences()
    tracker = _OperationTracker(strategy, refs)
    feed = _feed_for(config, engine, strategy, feeder.market_data)
    ticks_read = 0
    gc.collect()
    gc.freeze()  # what exists now lives all run: the daily collection need not scan it
    try:
        for i, day in enumerate(days):
            if i == warmup_days:
                start_state = boundary_state(
                    engine, strategy, config, day.day, feeder.last_book_ns, feeder.market_data
                )
                mark = _mark(strategy, feeder, ticks_total, engine_time)
                strategy.risk_log = []
            prepared = feeder.prepare(day)
            add_references(refs, day, prepared, feeder.market_data)
            if i >= (warmup_days or 0):
                ticks_read += prepared.n_rows + prepared.n_book_rows
            n, seconds = _run_day(engine, prepared, feed, CHUNK_TICKS)
            ticks_total += n
            engine_time += seconds
            del prepared
            if strategy.errors:
                raise strategy.errors[0]
            strategy.fills.freeze()
            feeder.prune_marks(engine.kernel.clock.timestamp_ns())
            _purge_closed(engine, strategy, engine_order_ids)
            last_day = day.day
            tracker.resolve_finished(day.day)
            tracker.freeze_resolved(engine_order_ids)
        if warmup_days is not None and start_state is None:
            raise EngineInputError(f"a time shard needs more than its {warmup_days} warm-up days")
        end_state: BoundaryState | None = None
        unresolved: list[str] = []
        if final:
            engine_time += _end(engine, strategy)
            end_ns = engine.kernel.clock.timestamp_ns()
            # Last resort (should stay empty): orders the venue never resolved, e.g. a market
            # order that Nautilus neither filled nor rejected, or one sent after the sweep.
            unresolved = strategy.oms.close_all_open(
                end_ns, "unresolved_at_run_end: the venue neither filled nor cancelled the order"
            )
        else:
            assert last_day is not None
            end_state = boundary_state(
                engine, strategy, config, date.fromordinal(last_day.toordinal() + 1),
                feeder.last_book_ns, feeder.market_data,
            )  # fmt: skip
        balances: dict[str, float] = {}
        for venue in config.venue_names:
            acct = engine.cache.account_for_venue(Venue(names.to_nautilus_venue(venue)))
            bal = acct.balance_total(ccy) if acct is not None else None
            balances[venue] = bal.as_double() if bal is not None else float("nan")
        tracker.resolve_all()
        feeder.prune_marks(engine.kernel.clock.timestamp_ns(), every_day=True)
        out = _collect(
            strategy, feeder.marks, feeder.intervals, balances, ticks_total, engine_time,
            feeder.n_days, unresolved, mark,
        )  # fmt: skip
        out.stats["engine_feed"] = config.engine_feed
        # Rows read for the engine (the signal intervals' ticks) next to ticks_processed (what
        # it was handed): their ratio is what the operations feed saves.
        out.stats["ticks_read"] = ticks_read
        out.market_refs = refs.frame(out.operations.get_column("operation_id").to_list())
        out.market_data = {**refs.market_data(), **feeder.market_data}
        out.stats["venue_books"] = venue_book_models(config, venue_books(config, market_data))
        # What actually reached Nautilus: lets callers prove risk-rejected orders never did.
        engine_order_ids.update(o.client_order_id.value for o in engine.cache.orders())
        own = set(out.orders.get_column("order_id").to_list())
        out.engine_order_ids = sorted(engine_order_ids & own if warmup_days else engine_order_ids)
        out.start_state, out.end_state = start_state, end_state
        out.risk_log = strategy.risk_log or []
        return out
    finally:
        gc.unfreeze()
        engine.dispose()


class _OperationTracker:
    """Operations waiting for their market references, resolved as soon as they are finished.

    Finished = every order final and nothing scheduled; then its end instant is known and the
    ticks of its days are still loaded. Days no waiting operation can reach are then dropped, so
    a long run keeps only about two days of ticks for this.
    """

    def __init__(self, strategy: ExecutionStrategy, refs: MarketReferences) -> None:
        self.strategy, self.refs = strategy, refs
        self.seen = 0
        self.waiting: dict[str, None] = {}

    def _take_new(self) -> None:
        ops = self.strategy.orch.operations
        new = list(itertools.islice(reversed(ops), len(ops) - self.seen))
        for op_id in reversed(new):  # from the newest back: only the new ones are visited
            if ops[op_id].order_quantity != 0.0:
                self.waiting[op_id] = None
        self.seen = len(ops)

    def _pending(self, op_id: str) -> PendingOperation:
        op = self.strategy.orch.operations[op_id]
        records = self.strategy.oms.orders_of(op_id)
        ts_end = max((r.updated_at for r in records), default=op.signal.ts_event)
        return PendingOperation(op_id, op.signal.instrument_key, op.signal.ts_event, ts_end)

    def resolve_finished(self, today: date) -> None:
        self._take_new()
        orch, oms = self.strategy.orch, self.strategy.oms
        done = [o for o in self.waiting if orch.is_finished(o) and not oms.open_orders(o)]
        self.refs.resolve(self._pending(o) for o in done)
        for o in done:
            del self.waiting[o]
        first = min(
            [today.toordinal() - 1]
            + [day_of_ns(orch.operations[o].signal.ts_event).toordinal() - 1 for o in self.waiting]
        )
        self.refs.prune(date.fromordinal(first))

    def freeze_resolved(self, closed: set[str]) -> None:
        """Hand the OMS the orders no event and no waiting operation will read again.

        Closed in the engine (``closed``: the ids purged from its cache) or stopped by risk,
        final, and of an operation whose references are resolved: their records become rows of
        a frame instead of Python objects for the rest of the run.
        """
        oms = self.strategy.oms
        oms.freeze(
            r.order_id
            for r in oms.records()
            if r.final
            and r.operation_id not in self.waiting
            and (r.order_id in closed or r.order_id.startswith("R-"))
        )

    def resolve_all(self) -> None:
        """At the run's (or a shard's) end: whatever is still waiting, as it stands."""
        self._take_new()
        self.refs.resolve(self._pending(o) for o in self.waiting)
        self.waiting.clear()


def add_references(
    refs: MarketReferences,
    day: DayInput,
    prepared: PreparedDay,
    market_data: Mapping[str, MarketData],
) -> None:
    """The day's reference series for execution quality, from the data each instrument runs on.

    Trades only: the last trade. Quotes or depth: the mid and spread of the quote or snapshot in
    force (a quote re-stated after a trade repeats the one in force, so it changes no value),
    the trades as the tape.
    """
    refs.add_trades(day.day, prepared.trades)
    for key in sorted(prepared.books):
        kind = market_data.get(key, "trades")
        book = prepared.books[key]
        top = top_of_book(book) if isinstance(book, DepthColumns) else book
        ts = top.ts_event.view(np.int64)
        mid = (top.bid_price + top.ask_price) / 2.0
        spread = (top.ask_price - top.bid_price) / mid * 1e4
        t = prepared.trades[key]
        tdf = t if isinstance(t, pl.DataFrame) else pl.from_arrow(t)
        assert isinstance(tdf, pl.DataFrame)
        tdf = tdf.select(pl.col("ts_event").cast(pl.Int64), "price", "size").sort(
            "ts_event", maintain_order=True
        )
        tape = Tape(
            tdf["ts_event"].to_numpy(),
            tdf["price"].cast(pl.Float64).to_numpy(),
            tdf["size"].cast(pl.Float64).to_numpy(),
        )
        refs.add_day(day.day, key, PriceSeries(ts, mid, spread), tape, kind)


def venue_book_models(
    config: BacktestConfig, books: Mapping[str, MarketData]
) -> dict[str, dict[str, Any]]:
    """Per venue, the Nautilus book and the fill options it ran with (recorded in the summary)."""
    fm = config.fill_model
    return {
        venue: {
            "market_data": kind,
            "book_type": "L2_MBP" if kind == "depth" else "L1_MBP",
            "liquidity_consumption": (
                fm.depth_liquidity_consumption if kind == "depth" else fm.liquidity_consumption
            ),
            "queue_position": fm.queue_position_for(kind),
        }
        for venue, kind in sorted(books.items())
    }


def _log_caveats(config: BacktestConfig, books: Mapping[str, MarketData]) -> None:
    """Name in the run's log what NautilusTrader 1.231 does with the books this run uses."""
    fm = config.fill_model
    for venue, kind in sorted(books.items()):
        queue = fm.queue_position_for(kind)
        if kind == "depth":
            lc = fm.depth_liquidity_consumption
            msg = (
                f"venue {venue}: L2_MBP book from 10-level snapshots; market orders walk the "
                f"levels (what lies beyond the 10 levels is not filled); liquidity_consumption="
                f"{lc}; queue_position={queue}"
            )
            if queue:
                msg += (
                    " (1.231 resets every queue position at each OrderBookDepth10 snapshot: "
                    "a resting order is back at the front of its level on every snapshot)"
                )
        elif kind == "quotes":
            msg = (
                f"venue {venue}: L1_MBP book from quotes (re-stated after each trade); market "
                f"orders take the displayed size, the rest one tick worse; liquidity_consumption="
                f"{fm.liquidity_consumption}; queue_position={queue}"
            )
            if fm.liquidity_consumption:
                msg += (
                    " (1.231: a resting limit misses every print of the same size after the"
                    " first, upstream #5017)"
                )
        else:
            continue  # today's model: documented in docs/execution.md, nothing new to say
        log.info(msg)


def _mark(strategy: ExecutionStrategy, feeder: _DayFeeder, ticks: int, engine_time: float) -> _Mark:
    return _Mark(
        orders=len(strategy.oms),
        fills=len(strategy.fills),
        funding=len(strategy.funding_rows),
        marks=len(feeder.marks),
        operations=len(strategy.orch.operations),
        signals=strategy.signals_seen,
        stale=strategy.stale_book_orders,
        book_invalid_rejected=strategy.book_invalid_rejected,
        book_invalid_canceled=strategy.book_invalid_canceled,
        lost=len(strategy.lost),
        slippage=len(strategy.slippage_terms),
        ticks=ticks,
        engine_time=engine_time,
        days=feeder.n_days,
    )


def bare_engine_run(
    config: BacktestConfig,
    days: list[DayInput],
    market_data: Mapping[str, MarketData] | None = None,
) -> dict[str, Any]:
    """The floor our run is measured against: the same engine, venues and strategy, bare.

    Each day's ticks are converted to engine objects (and the strategy's alerts scheduled)
    *before* the clock starts; only ``add_data`` + ``run`` (+ the final ``end``) are timed, with
    logging bypassed. What ``run_engine`` spends beyond this is our overhead (conversion,
    marks, outputs). Days are converted one at a time, so memory stays bounded by one day.
    """
    engine, handles = _build_engine(config, None, market_data)
    strategy = ExecutionStrategy(config, handles)
    strategy.book_keys = {k for k, v in (market_data or {}).items() if v != "trades"}
    engine.add_strategy(strategy)
    feeder = _DayFeeder(config, engine, strategy, market_data)
    feed = _feed_for(config, engine, strategy, feeder.market_data)
    if feed is not None:
        feed.max_ticks = None
    ticks = 0
    seconds = 0.0
    try:
        for day in days:
            prepared = feeder.prepare(day, with_marks=False)
            # The whole day as engine objects before the clock starts: the floor is the engine
            # alone on ticks already in memory (the same ticks as the run's feed hands it).
            n, dt = _run_day(engine, prepared, feed, max_ticks=None)
            ticks += n
            seconds += dt
            del prepared
        seconds += _end(engine, strategy)
        return {"ticks": ticks, "seconds": seconds}
    finally:
        engine.dispose()


def exact_prices(fills: pl.DataFrame, price_precision: Mapping[str, int]) -> pl.DataFrame:
    """Fill prices as the nearest double of the decimal price at the instrument's precision.

    Nautilus hands prices over as ``raw / 10^16``, which is off by an ulp or so
    (``61804.19999999999`` for 61804.2). ``round`` multiplies, rounds to an integer and divides
    by the power of ten; that division is correctly rounded, so it lands on the nearest double.
    """
    if fills.height == 0:
        return fills
    price = pl.col("price")
    for precision in sorted(set(price_precision.values())):
        keys = sorted(k for k, v in price_precision.items() if v == precision)
        price = (
            pl.when(pl.col("instrument_key").is_in(keys))
            .then(pl.col("price").round(precision))
            .otherwise(price)
        )
    return fills.with_columns(price.alias("price"))


def _collect(
    strategy: ExecutionStrategy,
    marks: list[pl.DataFrame],
    intervals: dict[date, pl.DataFrame],
    balances: dict[str, float],
    ticks_total: int,
    engine_time: float,
    n_days: int,
    unresolved: list[str],
    mark: _Mark | None = None,
) -> EngineOutput:
    """The run's outputs; with ``mark``, only what came after it (a shard's own days)."""
    m = mark or _Mark()
    orders = strategy.oms.orders_frame().slice(m.orders)
    history = strategy.oms.history_frame()
    if m.orders:
        history = history.filter(pl.col("order_id").is_in(orders.get_column("order_id").implode()))
    fills = exact_prices(
        strategy.fills.frame(m.fills),
        {k: i.instrument.price_precision for k, i in strategy.info.items()},
    )
    funding = pl.DataFrame(strategy.funding_rows[m.funding :], schema=FUNDING_SCHEMA, orient="row")
    own_marks = marks[m.marks :]
    mk = (
        pl.concat(own_marks).sort(["ts_event", "instrument_key"], maintain_order=True)
        if own_marks
        else pl.DataFrame(schema=MARKS_SCHEMA)
    )
    ops = strategy.orch.operations_frame().slice(m.operations)
    slippage_terms = strategy.slippage_terms[m.slippage :]
    submitted = orders.filter(~pl.col("order_id").str.starts_with("R-"))
    status = pl.col("status")
    stats: dict[str, Any] = {
        "signals": strategy.signals_seen - m.signals,
        "operations": ops.height,
        "orders_submitted": submitted.height,
        "orders_filled": orders.filter(status == "FILLED").height,
        # Partly filled, the rest cancelled or expired (see oms.py for the status rule).
        "orders_partially_filled": orders.filter(status == "PARTIALLY_FILLED").height,
        "orders_canceled": orders.filter(status == "CANCELED").height,
        "orders_expired": orders.filter(status == "EXPIRED").height,
        "orders_rejected": orders.filter(status == "REJECTED").height,
        # Orders whose arrival fell in a period where the stored book is unknown (a depth
        # sequence gap until the next snapshot), and working orders cancelled at such a start.
        "orders_rejected_book_invalid": strategy.book_invalid_rejected - m.book_invalid_rejected,
        "orders_canceled_book_invalid": strategy.book_invalid_canceled - m.book_invalid_canceled,
        "fills": fills.height,
        # Orders the end-of-run sweep cancelled (still working when the data ended).
        "orders_canceled_at_run_end": len(strategy.swept),
        # Orders the venue dropped without an event, closed when a cancel proved it (1.231 with
        # liquidity_consumption), and orders still unresolved at the run's end (expected 0).
        "orders_dropped_by_venue": len(strategy.lost) - m.lost,
        # Orders sent with no trade of their instrument in the signal's lookback: processed
        # with the next print rather than at arrival (see ExecutionStrategy._book_is_current).
        "orders_sent_on_stale_book": strategy.stale_book_orders - m.stale,
        "orders_unresolved": len(unresolved),
        "avg_slippage_bps": avg_slippage_bps(slippage_terms),
        "ticks_processed": ticks_total - m.ticks,
        "engine_time_s": engine_time - m.engine_time,
        "days": n_days - m.days,
    }
    return EngineOutput(
        orders=orders,
        order_status_history=history,
        fills=fills,
        funding=funding,
        marks=mk,
        operations=ops,
        stats=stats,
        final_balances=balances,
        intervals=intervals,
        slippage_terms=slippage_terms,
    )
