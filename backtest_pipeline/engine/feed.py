"""How a prepared day reaches the engine: every tick read, or only while an operation works.

``engine_feed: intervals`` hands the engine every tick of the signal intervals, window by window.
``engine_feed: operations`` (the default) hands it a market only while something of ours works
there: from a signal (or a TWAP child's time) until the orders it sent are final, then it jumps
to the next time the strategy may send one. The outputs are byte-identical (``tests/test_engine_feed.py``) because everything the
engine would do between operations does not reach them:

- with no order of ours working, a tick changes only the venue's book, its matching core's
  bid/ask and the cache's last trade. A jump feeds, per instrument, the shortest run of rows
  before the signal after which that state no longer depends on anything earlier, so the engine
  holds exactly what it would after every row (:func:`primer_start`): a quote re-stated after
  each trade sets book and core alike; a 10-level snapshot replaces the book and re-syncs the
  core, which the trades after it then widen; on trades alone each trade clamps the core's bid
  and ask (a buyer's print raises both to at least its price, a seller's lowers both to at most
  its price), so the state is fixed once a run of rows holds a buyer's print at or above a
  seller's;
- marks for the equity curve and positions, funding and execution-quality references come from
  the data read (ticks and 1-minute bars), not from the replay;
- timers between operations (funding, window ends, settles) fire at their own timestamps when
  the next fed tick passes them, as they do between two intervals, and act on state that no
  skipped tick changes.

The windows of a busy stretch start short (twice an order's latency) and grow ``GROWTH``-fold up
to ``max_window_ns``: a market operation costs a few ticks, a resting limit a few engine calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from nautilus_trader.backtest.engine import BacktestEngine
from nautilus_trader.core.data import Data
from nautilus_trader.model.data import TradeTick
from nautilus_trader.model.instruments import Instrument

from backtest_pipeline.engine.conversion import (
    DepthColumns,
    QuoteColumns,
    depths_to_snapshots,
    quotes_to_ticks,
    sorted_ts_event_ns,
    trades_to_ticks,
)


@dataclass
class PreparedDay:
    """A day's trades (and books), still columnar: engine objects one time window at a time."""

    trades: dict[str, pa.Table | pl.DataFrame]  # per instrument key, each in time order
    instruments: dict[str, Instrument]
    start_ns: int
    end_ns: int
    # Quotes (re-stated after each trade) or 10-level snapshots per key, in time order.
    books: dict[str, QuoteColumns | DepthColumns] = field(default_factory=dict)

    @property
    def depth_keys(self) -> set[str]:
        return {k for k, b in self.books.items() if isinstance(b, DepthColumns)}

    @property
    def n_rows(self) -> int:
        return sum(
            t.height if isinstance(t, pl.DataFrame) else t.num_rows for t in self.trades.values()
        )

    @property
    def n_book_rows(self) -> int:
        return sum(len(b) for b in self.books.values())

    def windows(
        self, max_ticks: int | None
    ) -> Iterator[tuple[int, int, dict[str, list[TradeTick]], dict[str, list[Data]]]]:
        """``(start_ns, end_ns, trade ticks per key, book data per key)`` over the day's windows.

        Windows split at a timestamp, never between equal timestamps, and each key's rows keep
        their order, so the engine sees exactly the sequence a whole-day ``add_data`` gives.
        Without Arrow nanosecond times in order (or with ``max_ticks`` None) the day is one
        window.
        """
        times = {k: sorted_ts_event_ns(t) for k, t in self.trades.items()}
        book_ts = {k: b.ts_event.view(np.int64) for k, b in self.books.items()}
        bounds: list[int] = []
        if (
            max_ticks
            and self.n_rows + self.n_book_rows > max_ticks
            and all(v is not None for v in times.values())
        ):
            every = np.sort(
                np.concatenate(
                    [v for v in times.values() if v is not None] + list(book_ts.values())
                )
            )
            cuts = np.unique(every[max_ticks::max_ticks])
            bounds = [int(c) for c in cuts if self.start_ns < c < self.end_ns]
        edges = [self.start_ns, *bounds, self.end_ns]
        for i in range(len(edges) - 1):
            lo_ns, hi_ns = edges[i], edges[i + 1]
            ticks: dict[str, list[TradeTick]] = {}
            books: dict[str, list[Data]] = {}
            last = i == len(edges) - 2
            for key in sorted(self.books):
                bts = book_ts[key]
                blo = 0 if i == 0 else int(np.searchsorted(bts, lo_ns, "left"))
                bhi = len(bts) if last else int(np.searchsorted(bts, hi_ns, "left"))
                if bhi > blo:
                    books[key] = self.book_objects(key, blo, bhi)
            for key in sorted(self.trades):
                table, ts = self.trades[key], times[key]
                if ts is None:  # one window: the day's table as it is
                    part = table
                else:
                    # The first and last windows also take any row outside the day's bounds.
                    lo = 0 if i == 0 else int(np.searchsorted(ts, lo_ns, "left"))
                    hi = len(ts) if i == len(edges) - 2 else int(np.searchsorted(ts, hi_ns, "left"))
                    if hi <= lo:
                        continue
                    part = table.slice(lo, hi - lo)
                ticks[key] = trades_to_ticks(part, self.instruments[key])
            yield lo_ns, hi_ns, ticks, books

    def book_objects(self, key: str, lo: int, hi: int) -> list[Data]:
        """Book rows ``lo:hi`` of ``key`` as engine objects (quotes or 10-level snapshots)."""
        return book_objects(self.books[key], self.instruments[key], lo, hi)


def book_objects(
    book: QuoteColumns | DepthColumns, inst: Instrument, lo: int, hi: int
) -> list[Data]:
    rows = np.arange(lo, hi)
    if isinstance(book, QuoteColumns):
        return list(quotes_to_ticks(inst, book.take(rows)))
    return list(depths_to_snapshots(inst, book.take(rows)))


def feed_window(
    engine: BacktestEngine,
    ticks: dict[str, list[TradeTick]],
    books: dict[str, list[Data]],
    depth_keys: set[str],
    start_ns: int,
    end_ns: int,
) -> tuple[int, float]:
    """One ``run`` of the engine over one window: ``(ticks fed, seconds inside the engine)``.

    Timers after a window's last tick fire in the next window's run (or the next day's, or at
    end()). One ``add_data`` per instrument (Nautilus registers the instrument of a batch's
    first element only), then a single sort of the window. The seconds leave out the
    conversion, so they compare with the bare floor, which converts before its clock starts.
    """
    n = 0
    t0 = time.perf_counter()
    added = False
    for key in sorted(set(ticks) | set(books)):
        # Trades before books: at equal times the book (a re-stated quote) follows the trade.
        if ticks.get(key):
            # An L2 venue refuses a run whose data has trades of an instrument but no book
            # rows; a window between two snapshots has none and keeps the book in force.
            validate = key not in depth_keys or key in books
            engine.add_data(ticks[key], sort=False, validate=validate)
            n += len(ticks[key])
            added = True
        if books.get(key):
            engine.add_data(books[key], sort=False)
            n += len(books[key])
            added = True
    if added:
        engine.sort_data()
    # Timestamps, not ints: pandas parses an int bound ~50 times slower, twice per call.
    engine.run(start=_utc(start_ns), end=_utc(end_ns), streaming=True)
    engine.clear_data()
    return n, time.perf_counter() - t0


def _utc(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, tz="UTC")


def run_intervals(
    engine: BacktestEngine, prepared: PreparedDay, max_ticks: int | None
) -> tuple[int, float]:
    """``engine_feed: intervals``: every row of the day, window by window."""
    n = 0
    seconds = 0.0
    depth_keys = prepared.depth_keys
    for start_ns, end_ns, ticks, books in prepared.windows(max_ticks):
        dn, dt = feed_window(engine, ticks, books, depth_keys, start_ns, end_ns - 1)
        n += dn
        seconds += dt
        del ticks, books
    return n, seconds


class WorkState(Protocol):
    """What the feed asks the strategy: is anything of ours working, and when is the next signal."""

    def needs_market(self) -> bool:
        """An order working or in flight."""
        ...

    def next_work_ns(self) -> int | None:
        """When the strategy may next send an order (a signal or a child still to come)."""
        ...

    def resting_limits(self) -> list[tuple[str, bool, float]] | None:
        """``(key, is buy, price)`` of the working orders when all rest as limits (else None)."""
        ...

    def next_alert_ns(self) -> int | None:
        """The next alert that can act on a working order."""
        ...


def _times(table: pa.Table | pl.DataFrame) -> np.ndarray | None:
    """``ts_event`` as int64 ns when the rows are in time order (else None: fed whole)."""
    ts = sorted_ts_event_ns(table)
    if ts is not None or isinstance(table, pa.Table):
        return ts
    if "ts_event" not in table.columns or table.get_column("ts_event").null_count():
        return None
    col = table.get_column("ts_event")
    if not (col.dtype == pl.Int64 or col.dtype == pl.Datetime("ns", col.dtype.time_zone)):  # type: ignore[attr-defined]
        return None
    arr = col.cast(pl.Int64).to_numpy()
    return arr if bool(np.all(arr[1:] >= arr[:-1])) else None


#: How much longer each window of a busy stretch is than the one before.
GROWTH = 4

#: Rows converted to engine objects at a time: a window's rows are cut from the block holding
#: them, so small windows do not each pay a conversion call, and memory holds one block a stream.
BLOCK_ROWS = 65_536


@dataclass
class _Stream:
    """One instrument's rows of one kind (trades or book) for the day, and how far they are fed."""

    ts: np.ndarray  # int64 ns, in order
    convert: Callable[[int, int], list[Data]]  # rows lo:hi as engine objects
    table: pa.Table | pl.DataFrame | None = None  # trades: for the prints' sides and prices
    pos: int = 0  # rows before this one are fed or skipped for good
    _block: tuple[int, list[Data]] | None = None  # (first row, its engine objects)
    _whole_rows: bool = True  # False once a conversion dropped rows (dust sizes)
    _aggressor: tuple[np.ndarray, np.ndarray] | None = None

    def objects(self, lo: int, hi: int) -> list[Data]:
        if not self._whole_rows:
            return self.convert(lo, hi)
        out: list[Data] = []
        while lo < hi:
            first = lo - lo % BLOCK_ROWS
            if self._block is None or self._block[0] != first:
                stop = min(len(self.ts), first + BLOCK_ROWS)
                objs = self.convert(first, stop)
                if len(objs) != stop - first:  # rows dropped: no row-to-object mapping
                    self._whole_rows = False
                    self._block = None
                    return out + self.convert(lo, hi)
                self._block = (first, objs)
            first, objs = self._block
            stop = min(hi, first + len(objs))
            out.extend(objs[lo - first : stop - first])
            lo = stop
        return out

    def aggressor(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row's price and aggressor code (1 buyer, 2 seller, 0 none), once a day."""
        if self._aggressor is None:
            assert self.table is not None
            self._aggressor = aggressor_codes(self.table)
        return self._aggressor


def clamp_start(prices: np.ndarray, aggressor: np.ndarray) -> int | None:
    """The last row from which trades alone fix an L1 matching core's bid/ask (None: no row).

    NautilusTrader 1.231's trade execution on an L1 book moves both sides of the core with each
    print: a buyer's to at least its price, a seller's to at most its price, a print without
    aggressor to exactly its price. A run of rows therefore fixes the state whatever came before
    as soon as it holds a print without aggressor, or a buyer's price at or above a seller's
    (the clamps no longer intersect). Found from the end, by running max/min.
    """
    n = len(prices)
    if n == 0:
        return None
    rev_p = prices[::-1]
    rev_a = aggressor[::-1]
    buy_max = np.maximum.accumulate(np.where(rev_a == 1, rev_p, -np.inf))
    sell_min = np.minimum.accumulate(np.where(rev_a == 2, rev_p, np.inf))
    fixed = (buy_max >= sell_min) | (rev_a == 0)
    hit = np.flatnonzero(fixed)
    return n - 1 - int(hit[0]) if len(hit) else None


def aggressor_codes(table: pa.Table | pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Prices and aggressor codes (1 buyer, 2 seller, 0 none) of a trades table's rows."""
    t = table.select(["price", "side"])
    df = t if isinstance(t, pl.DataFrame) else pl.from_arrow(t)
    assert isinstance(df, pl.DataFrame)
    side = pl.col("side").cast(pl.Utf8).str.to_lowercase()
    out = df.select(
        pl.col("price").cast(pl.Float64),
        pl.when(side == "buy").then(1).when(side == "sell").then(2).otherwise(0).alias("code"),
    )
    return out.get_column("price").to_numpy(), out.get_column("code").to_numpy()


def primer_start(
    aggressor: Callable[[], tuple[np.ndarray, np.ndarray]],
    trade_ts: np.ndarray,
    lo: int,
    last: int,
    book: QuoteColumns | DepthColumns | None,
    book_ts: np.ndarray | None,
    book_lo: int,
    book_last: int,
) -> tuple[int, int]:
    """Where the trades and the book rows of a jump start (the rows ``lo..last`` and
    ``book_lo..book_last`` are the unfed ones at or before the signal; ``last`` < ``lo`` or
    ``book_last`` < ``book_lo`` when there are none).

    Quotes (re-stated after each trade): the last quote and the last trade. A 10-level book: the
    last snapshot and every trade after it (they widen the core's bid/ask), or, when that
    snapshot was fed already, every unfed trade. Trades alone: from :func:`clamp_start`.
    """
    if book is not None and book_ts is not None:
        b_start = book_last if book_last >= book_lo else book_lo
        if isinstance(book, QuoteColumns):
            return (last if last >= lo else lo), b_start
        if book_last >= book_lo:  # the snapshot in force is not fed yet: it resets the book
            after = int(np.searchsorted(trade_ts, book_ts[book_last], "right"))
            return max(lo, min(after, last)), b_start
        return lo, b_start
    if last < lo:
        return lo, book_lo
    prices, code = aggressor()
    r = clamp_start(prices[lo : last + 1], code[lo : last + 1])
    return (lo if r is None else lo + r), book_lo


@dataclass
class _Carry:
    """A key's last row of an earlier day that was never fed: the state in force at a jump."""

    trade: pa.Table | pl.DataFrame | None = None
    book: QuoteColumns | DepthColumns | None = None


class OperationFeed:
    """``engine_feed: operations`` over a run's days (one object per engine: it carries state).

    ``frontier`` is the instant up to which every row has been fed or skipped. While an order of
    ours works (or a signal or child at or before the frontier has not fired yet, waiting for a
    tick after it), windows follow each other; otherwise the feed jumps to the next such time,
    priming each instrument with the rows that fix its state there.
    """

    def __init__(
        self,
        engine: BacktestEngine,
        work: WorkState,
        first_window_ns: int,
        max_window_ns: int,
        max_ticks: int | None,
    ) -> None:
        self.engine = engine
        self.work = work
        self.first_window_ns = max(1, first_window_ns)
        self.max_window_ns = max(self.first_window_ns, max_window_ns)
        self.max_ticks = max_ticks
        self.frontier = -1
        self.carry: dict[str, _Carry] = {}
        self.started = False  # whether the engine has run at all (the kernel starts then)

    def _busy(self) -> bool:
        if self.work.needs_market():
            return True
        nxt = self.work.next_work_ns()
        return nxt is not None and nxt <= self.frontier

    def run_day(self, day: PreparedDay) -> tuple[int, float]:
        """Feed one day; ``(ticks fed, seconds inside the engine)``."""
        trade_ts = {k: _times(t) for k, t in day.trades.items()}
        if any(v is None for v in trade_ts.values()):
            return self._whole_day(day)
        trades: dict[str, _Stream] = {}
        for key, ts in trade_ts.items():
            assert ts is not None
            table, inst = day.trades[key], day.instruments[key]
            trades[key] = _Stream(
                ts, lambda lo, hi, t=table, i=inst: trades_to_ticks(t.slice(lo, hi - lo), i), table
            )
        books = {
            key: _Stream(
                b.ts_event.view(np.int64), lambda lo, hi, k=key: day.book_objects(k, lo, hi)
            )
            for key, b in day.books.items()
        }
        depth_keys = day.depth_keys
        n = 0
        seconds = 0.0
        window = self.first_window_ns
        while True:
            jump_to: int | None = None
            busy = self._busy()
            rest = self._rest_target(day, trades) if busy else None
            if rest is not None and rest > self.frontier + window:
                # Only limits rest: skip to the first print that reaches one (or the next alert).
                jump_to = rest - 1
                window = self.first_window_ns
                hi = jump_to + window
                window = min(GROWTH * window, self.max_window_ns)
            elif busy:
                hi = self.frontier + window
                window = min(GROWTH * window, self.max_window_ns)
            else:
                jump_to = self.work.next_work_ns()
                if jump_to is None or jump_to >= day.end_ns:
                    break
                window = self.first_window_ns
                hi = jump_to + window
                window = min(GROWTH * window, self.max_window_ns)
            hi = min(hi, day.end_ns - 1)
            picked = self._pick(day, trades, books, jump_to, hi)
            if picked is None:  # nothing left in the day: the rest waits for the next one
                self.frontier = max(self.frontier, hi)
                break
            ticks, objs, start_ns, hi = picked
            dn, dt = feed_window(self.engine, ticks, objs, depth_keys, start_ns, hi)
            n += dn
            seconds += dt
            self.frontier = hi
            if hi >= day.end_ns - 1:
                break
        self._keep_carry(day, trades, books)
        # The run's end bound, as the intervals feed leaves it: engine.end() flushes the timers
        # up to it (the end-of-run sweep is timed just before the day's end).
        last_ns = day.end_ns - 1
        if not self.started:  # the kernel and the strategy's alerts start at the day's start
            self.engine.run(start=_utc(day.start_ns), end=_utc(last_ns), streaming=True)
            self.started = True
        now = self.engine.kernel.clock.timestamp_ns()
        # With nothing of ours working, the day's remaining timers (funding, window ends,
        # settles) act on no order: they fire now, at their own timestamps, so a time shard's
        # boundary state sees every operation of the day finished.
        start = now if self._busy() else max(now, last_ns)
        if start <= last_ns:
            self.engine.run(start=_utc(start), end=_utc(last_ns), streaming=True)
        return n, seconds

    def _rest_target(self, day: PreparedDay, trades: dict[str, _Stream]) -> int | None:
        """Where a busy stretch of resting limits next needs the engine, or None: feed on.

        On a trade-built book a resting buy fills only at a print at or below its price that a
        seller made (a buyer's print never lowers the core's ask), a sell at a buyer's print at
        or above it; a print without aggressor reaches both. Until the first such print, or the
        next alert that acts on orders, each print changes only the state a jump re-creates.
        """
        nxt = self.work.next_work_ns()
        if nxt is not None and nxt <= self.frontier:
            return None
        rest = self.work.resting_limits()
        if not rest:
            return None
        alert = self.work.next_alert_ns()
        target = day.end_ns - 1 if alert is None else min(int(alert), day.end_ns - 1)
        for key, is_buy, price in rest:
            s = trades.get(key)
            if s is None:
                continue
            hi = int(np.searchsorted(s.ts, target, "right"))
            if hi <= s.pos:
                continue
            prices, code = s.aggressor()
            p, c = prices[s.pos : hi], code[s.pos : hi]
            reach = (c != 1) & (p <= price) if is_buy else (c != 2) & (p >= price)
            hit = np.flatnonzero(reach)
            if len(hit):
                target = min(target, int(s.ts[s.pos + int(hit[0])]))
        return target

    def _pick(
        self,
        day: PreparedDay,
        trades: dict[str, _Stream],
        books: dict[str, _Stream],
        jump_to: int | None,
        hi: int,
    ) -> tuple[dict[str, list[TradeTick]], dict[str, list[Data]], int, int] | None:
        """The next window's engine objects (rows up to ``hi``), or None when the day is out.

        On a jump, each stream first skips to the rows at or before ``jump_to`` that fix its
        state (:func:`primer_start`; the tail carried from an earlier day when those rows start
        at the day's first one). A window without a single row is stretched to the next row, so
        every engine call has something to do.
        """
        # Plain ints: a numpy scalar of another integer type (signal times may be uint64) makes
        # each binary search cast the whole day's array first.
        hi = int(hi)
        jump_to = None if jump_to is None else int(jump_to)
        starts: dict[tuple[str, str], int] = {}
        primers: dict[tuple[str, str], _Carry] = {}
        for kind, streams in (("t", trades), ("b", books)):
            for key, s in streams.items():
                starts[(kind, key)] = s.pos
        if jump_to is not None:
            for key, t in trades.items():
                b = books.get(key)
                last = int(np.searchsorted(t.ts, jump_to, "right")) - 1
                b_last = int(np.searchsorted(b.ts, jump_to, "right")) - 1 if b else -1
                t_lo, b_lo = primer_start(
                    t.aggressor, t.ts, t.pos, last, day.books.get(key),
                    b.ts if b else None, b.pos if b else 0, b_last,
                )  # fmt: skip
                starts[("t", key)] = t_lo
                if b is not None:
                    starts[("b", key)] = b_lo
                carried = self.carry.get(key)
                if carried is not None:
                    # The jump needs the day's rows from its first one: the state before them
                    # is the unfed tail carried from an earlier day.
                    if t_lo == 0 and t.pos == 0 and carried.trade is not None:
                        primers[("t", key)] = carried
                    if b is not None and b_lo == 0 and b.pos == 0 and carried.book is not None:
                        primers[("b", key)] = carried

        # Stretch an empty window to the next row (and beyond: never cut equal timestamps).
        streams = [(kind, key, s) for kind, group in (("t", trades), ("b", books))
                   for key, s in group.items()]  # fmt: skip
        rows = sum(int(s.ts.searchsorted(hi, "right")) - starts[(kind, key)]
                   for kind, key, s in streams)  # fmt: skip
        if rows + len(primers) == 0:
            nxt = [int(s.ts[starts[(kind, key)]]) for kind, key, s in streams
                   if starts[(kind, key)] < len(s.ts)]  # fmt: skip
            if not nxt:
                return None
            hi = max(hi, min(nxt))
        hi = self._bounded(trades, books, starts, hi)
        ticks: dict[str, list[TradeTick]] = {}
        objs: dict[str, list[Data]] = {}
        first: list[int] = []
        for key, s in trades.items():
            lo, end = starts[("t", key)], int(np.searchsorted(s.ts, hi, "right"))
            carried = primers.get(("t", key))
            parts: list[TradeTick] = []
            if carried is not None and carried.trade is not None:
                parts = trades_to_ticks(carried.trade, day.instruments[key])
                carried.trade = None
                first.append(int(parts[0].ts_init))
            if end > lo:
                parts += s.objects(lo, end)  # type: ignore[arg-type]
                first.append(int(s.ts[lo]))
            if parts:
                ticks[key] = parts
            s.pos = max(s.pos, end)
        for key, s in books.items():
            lo, end = starts[("b", key)], int(np.searchsorted(s.ts, hi, "right"))
            carried = primers.get(("b", key))
            bparts: list[Data] = []
            if carried is not None and carried.book is not None:
                bparts = book_objects(carried.book, day.instruments[key], 0, len(carried.book))
                first.append(int(carried.book.ts_event.view(np.int64)[0]))
                carried.book = None
            if end > lo:
                bparts += s.objects(lo, end)
                first.append(int(s.ts[lo]))
            if bparts:
                objs[key] = bparts
            s.pos = max(s.pos, end)
        if not first:
            return None
        # The first run starts at the day's start, as the intervals feed's does (the kernel and
        # the strategy's alerts start then); later ones at their first row.
        start = min(first) if self.started else min(day.start_ns, min(first))
        self.started = True
        return ticks, objs, start, hi

    def _bounded(
        self,
        trades: dict[str, _Stream],
        books: dict[str, _Stream],
        starts: dict[tuple[str, str], int],
        hi: int,
    ) -> int:
        """``hi`` pulled back so a window holds at most ``max_ticks`` rows (cut at a timestamp)."""
        if not self.max_ticks:
            return hi
        parts = [
            s.ts[starts[(kind, key)] : int(np.searchsorted(s.ts, hi, "right"))]
            for kind, streams in (("t", trades), ("b", books))
            for key, s in streams.items()
        ]
        total = sum(len(p) for p in parts)
        if total <= self.max_ticks:
            return hi
        every = np.sort(np.concatenate(parts))
        cut = int(every[self.max_ticks - 1])
        # Rows at ``cut`` all go in (equal timestamps are never split); at least one row goes.
        return max(cut, int(every[0]))

    def _keep_carry(
        self, day: PreparedDay, trades: dict[str, _Stream], books: dict[str, _Stream]
    ) -> None:
        """The day's unfed tail that the next jump would prime with, kept for the next day.

        A carried tail still unfed from an earlier day is dropped only when the day itself
        has rows of that kind (they supersede it, as a jump into the day would).
        """
        for key, t in trades.items():
            b = books.get(key)
            n_t, n_b = len(t.ts), (len(b.ts) if b else 0)
            if n_t == 0 and n_b == 0:
                continue
            t_lo, b_lo = primer_start(
                t.aggressor, t.ts, t.pos, n_t - 1, day.books.get(key),
                b.ts if b else None, b.pos if b else 0, n_b - 1,
            )  # fmt: skip
            c = self.carry.setdefault(key, _Carry())
            if n_t:
                c.trade = day.trades[key].slice(t_lo, n_t - t_lo) if t_lo < n_t else None
            if b is not None and n_b:
                c.book = day.books[key].take(np.arange(b_lo, n_b)) if b_lo < n_b else None

    def _whole_day(self, day: PreparedDay) -> tuple[int, float]:
        """Rows without ordered nanosecond times: the day as one window, as the intervals feed.

        The rows carried from earlier days go first, so the day starts from the state the
        intervals feed would have.
        """
        n = 0
        seconds = 0.0
        ticks: dict[str, list[TradeTick]] = {}
        objs: dict[str, list[Data]] = {}
        for key, c in sorted(self.carry.items()):
            if c.trade is not None and key in day.instruments:
                ticks[key] = trades_to_ticks(c.trade, day.instruments[key])
            if c.book is not None and key in day.instruments:
                objs[key] = book_objects(c.book, day.instruments[key], 0, len(c.book))
        times = [t[0].ts_init for t in ticks.values()] + [b[0].ts_init for b in objs.values()]
        if times and self.started:
            last = max(
                [t[-1].ts_init for t in ticks.values()] + [b[-1].ts_init for b in objs.values()]
            )
            n, seconds = feed_window(self.engine, ticks, objs, day.depth_keys, min(times), last)
        dn, dt = run_intervals(self.engine, day, None)
        self.carry.clear()
        self.started = True
        self.frontier = day.end_ns - 1
        return n + dn, seconds + dt
