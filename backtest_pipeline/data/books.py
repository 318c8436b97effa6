"""Rebuilding a 10-level book from level updates, and writing it as ``book_depth10`` snapshots.

Venues publish books as a snapshot followed by level updates (Tardis ``incremental_book_L2``,
Binance depth diffs on a REST snapshot). A backtest window can start anywhere, so the product
stores whole top-10 snapshots instead (docs/storage.md); this module turns updates into them.

The bookkeeping is deliberately plain: every price the input ever mentions gets a slot in a dense
array (``np.unique`` of all prices, so no tick size has to be guessed and prices stay exact),
one quantity array per side holds the book, and a batch of updates is one fancy-index
assignment. The only Python loop is over *emitted snapshots* (at most one per throttle interval),
never over updates or levels; per snapshot the top 10 are found by scanning a small window next to
the best price, widened only when the window holds fewer than 10 levels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl

from backtest_pipeline.data import schemas

LEVELS: Final = schemas.BOOK_LEVELS
_WINDOW: Final = 64  # first scan width next to the touch; books are dense there


@dataclass
class LevelUpdates:
    """Level updates in application order, one row per (message, side, price).

    ``msg`` numbers the messages (non-decreasing); the updates of one message apply together and
    a snapshot is only ever emitted after a whole message. ``reset`` is per message: True where
    that message is a full snapshot (the book is cleared before its levels apply).
    """

    msg: np.ndarray  # int64, per update
    is_ask: np.ndarray  # bool, per update
    price: np.ndarray  # float64, per update
    size: np.ndarray  # float64, per update; 0 deletes the level
    msg_ts_event: np.ndarray  # int64, per message
    msg_ts_init: np.ndarray  # int64, per message
    msg_reset: np.ndarray  # bool, per message


@dataclass
class RebuildResult:
    """The emitted snapshots and what was left out, for the import report."""

    frame: pl.DataFrame  # book_depth10 columns (+ ``msg``: the last message each row includes)
    dropped: dict[str, int] = field(default_factory=dict)


def _top_below(qty: np.ndarray, hi: int, k: int) -> np.ndarray:
    """Indices of the k highest non-empty slots at or below ``hi``, best first."""
    if hi < 0:
        return np.empty(0, np.int64)
    width = _WINDOW
    while True:
        lo = max(0, hi + 1 - width)
        nz = np.flatnonzero(qty[lo : hi + 1])
        if nz.size >= k or lo == 0:
            return (nz[::-1][:k] + lo).astype(np.int64)
        width *= 8


def _top_above(qty: np.ndarray, lo: int, k: int) -> np.ndarray:
    """Indices of the k lowest non-empty slots at or above ``lo``, best first."""
    n = qty.size
    if lo >= n:
        return np.empty(0, np.int64)
    width = _WINDOW
    while True:
        hi = min(n, lo + width)
        nz = np.flatnonzero(qty[lo:hi])
        if nz.size >= k or hi == n:
            return (nz[:k] + lo).astype(np.int64)
        width *= 8


def emission_messages(msg_ts: np.ndarray, interval_ns: int) -> np.ndarray:
    """Messages after which a snapshot is written: the last of each throttle interval.

    ``interval_ns`` 0 writes after every message. A snapshot is stamped with the time of the last
    message it includes, so a row never shows a state before it existed.
    """
    n = msg_ts.size
    if n == 0:
        return np.empty(0, np.int64)
    if interval_ns <= 0:
        return np.arange(n, dtype=np.int64)
    bucket = msg_ts // interval_ns
    last = np.ones(n, dtype=bool)
    last[:-1] = bucket[1:] != bucket[:-1]
    return np.flatnonzero(last).astype(np.int64)


@dataclass
class _Plan:
    """The updates regrouped per written snapshot (batch) and side, computed once, vectorised.

    Within a batch only the last update of each level matters, and nothing before the batch's
    last snapshot message; both are resolved here with one lexsort, so the loop over batches
    only slices: ``slot[start[2 b]:start[2 b + 1]]`` are batch b's bid updates, the next range
    its asks. ``cand`` is the best price a batch's additions could make (highest bid slot,
    lowest ask slot), ``reset`` whether the batch starts from an empty book.
    """

    slot: np.ndarray
    size: np.ndarray
    start: list[int]
    cand: list[int]
    reset: list[bool]


def _plan(updates: LevelUpdates, slot: np.ndarray, emit: np.ndarray, n_slots: int) -> _Plan:
    n_msg, n_emit = updates.msg_ts_event.size, emit.size
    msg_batch = np.searchsorted(emit, np.arange(n_msg), side="left")
    last_reset = np.full(n_emit, -1, dtype=np.int64)
    resets = np.flatnonzero(updates.msg_reset)
    np.maximum.at(last_reset, msg_batch[resets], resets)
    u_batch = msg_batch[updates.msg]
    idx = np.flatnonzero(updates.msg >= last_reset[u_batch])
    ask = updates.is_ask.astype(np.int64)
    order = np.lexsort((idx, slot[idx], ask[idx], u_batch[idx]))
    s = idx[order]
    b, a, sl = u_batch[s], ask[s], slot[s]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = (b[1:] != b[:-1]) | (a[1:] != a[:-1]) | (sl[1:] != sl[:-1])
    s = s[last]
    group = u_batch[s] * 2 + ask[s]
    sizes = updates.size[s]
    start = np.searchsorted(group, np.arange(2 * n_emit + 1), side="left")
    cand = np.empty(2 * n_emit, dtype=np.int64)
    cand[0::2], cand[1::2] = -1, n_slots
    pos = sizes > 0
    bid_pos, ask_pos = pos & (ask[s] == 0), pos & (ask[s] == 1)
    np.maximum.at(cand, group[bid_pos], slot[s][bid_pos])
    np.minimum.at(cand, group[ask_pos], slot[s][ask_pos])
    return _Plan(
        slot=slot[s],
        size=sizes,
        start=start.tolist(),
        cand=cand.tolist(),
        reset=(last_reset >= 0).tolist(),
    )


def rebuild(updates: LevelUpdates, interval_ns: int) -> RebuildResult:
    """Apply the updates and emit top-10 snapshots at the throttle's emission points.

    A snapshot whose best bid is not below its best ask (a crossed or locked book, which a
    correct sequence never produces but some feeds briefly do) is not written; such rows are
    counted under ``crossed_book``.
    """
    n_msg = updates.msg_ts_event.size
    uniq = np.unique(updates.price)
    slot = np.searchsorted(uniq, updates.price)
    n_slots = uniq.size
    bid_qty, ask_qty = np.zeros(n_slots), np.zeros(n_slots)
    best_bid, best_ask = -1, n_slots  # best bid slot (highest), best ask slot (lowest)
    emit = emission_messages(updates.msg_ts_event, interval_ns)
    plan = _plan(updates, slot, emit, n_slots)
    p_slot, p_size, start, cand = plan.slot, plan.size, plan.start, plan.cand

    out_bp = np.full((emit.size, LEVELS), np.nan)
    out_bs = np.full((emit.size, LEVELS), np.nan)
    out_ap = np.full((emit.size, LEVELS), np.nan)
    out_as = np.full((emit.size, LEVELS), np.nan)
    keep = np.ones(emit.size, dtype=bool)
    for row in range(emit.size):
        if plan.reset[row]:
            bid_qty[:] = 0.0
            ask_qty[:] = 0.0
            best_bid, best_ask = -1, n_slots
        lo, mid, hi = start[2 * row], start[2 * row + 1], start[2 * row + 2]
        if mid > lo:
            bid_qty[p_slot[lo:mid]] = p_size[lo:mid]
            best_bid = max(best_bid, cand[2 * row])
        if hi > mid:
            ask_qty[p_slot[mid:hi]] = p_size[mid:hi]
            best_ask = min(best_ask, cand[2 * row + 1])
        bids = _top_below(bid_qty, best_bid, LEVELS)
        asks = _top_above(ask_qty, best_ask, LEVELS)
        if bids.size:
            best_bid = int(bids[0])
        if asks.size:
            best_ask = int(asks[0])
        if bids.size and asks.size and best_bid >= best_ask:
            keep[row] = False
            continue
        out_bp[row, : bids.size] = uniq[bids]
        out_bs[row, : bids.size] = bid_qty[bids]
        out_ap[row, : asks.size] = uniq[asks]
        out_as[row, : asks.size] = ask_qty[asks]
    frame = snapshot_frame(
        updates.msg_ts_event[emit],
        updates.msg_ts_init[emit],
        out_bp,
        out_bs,
        out_ap,
        out_as,
    ).with_columns(
        pl.Series("msg", emit),
        # Segment: how many snapshots the state descends from; a change means a resync.
        pl.Series("seg", np.cumsum(updates.msg_reset)[emit] if n_msg else emit),
    )
    dropped = {"crossed_book": int((~keep).sum())}
    frame = frame.filter(pl.Series(keep))
    return RebuildResult(frame=frame, dropped={k: v for k, v in dropped.items() if v})


def snapshot_frame(
    ts_event: np.ndarray,
    ts_init: np.ndarray,
    bid_price: np.ndarray,
    bid_size: np.ndarray,
    ask_price: np.ndarray,
    ask_size: np.ndarray,
) -> pl.DataFrame:
    """(rows × levels) arrays → a book_depth10 frame; NaN (no such level) becomes null."""
    cols: dict[str, object] = {"ts_event": ts_event, "ts_init": ts_init}
    arrays = {
        ("bid", "price"): bid_price,
        ("bid", "size"): bid_size,
        ("ask", "price"): ask_price,
        ("ask", "size"): ask_size,
    }
    n_levels = bid_price.shape[1] if bid_price.ndim == 2 else 0
    for side in schemas.BOOK_SIDES:
        for fld in ("price", "size"):
            arr = arrays[(side, fld)]
            for i in range(LEVELS):
                col = arr[:, i] if i < n_levels else np.full(len(ts_event), np.nan)
                cols[schemas.book_column(side, fld, i)] = col
    return pl.DataFrame(cols).with_columns(
        pl.col(pl.Float64).fill_nan(None),
        pl.col("ts_event").cast(pl.Int64),
        pl.col("ts_init").cast(pl.Int64),
    )


def drop_unchanged(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Drop snapshots identical to the row before (a message that changed only deeper levels).

    The top 10 are what is stored, so such a row carries no information; keeping the first of a
    run keeps the time the state began.
    """
    levels = [c for c in frame.columns if c.startswith(("bid_", "ask_"))]
    if frame.height < 2:
        return frame, 0
    same = pl.all_horizontal(
        (pl.col(c).eq_missing(pl.col(c).shift(1))).fill_null(False) for c in levels
    )
    out = frame.filter(~same)
    return out, frame.height - out.height


def monotonic_times(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Clamp ts_event to its running maximum: states are ordered by when they were applied.

    A resync snapshot can carry an exchange time earlier than the last update applied before it;
    the state it creates is not in force before the state that preceded it. Returns the number
    of rows whose time was raised.
    """
    if frame.height == 0:
        return frame, 0
    ts = frame["ts_event"].to_numpy()
    clamped = np.maximum.accumulate(ts)
    n = int((clamped != ts).sum())
    return (frame.with_columns(pl.Series("ts_event", clamped)) if n else frame), n


# ---- invalid periods: where the stored book is not the market's --------------------------------

#: Key of a book_depth10 file's Parquet key-value metadata listing its invalid periods.
INVALID_PERIODS_KEY: Final = "book_invalid_periods"
INVALID_REASON: Final = "depth sequence gap"


@dataclass(frozen=True)
class InvalidPeriod:
    """[start, end) of one book day in which the book is unknown, and the object saying so.

    Stored as ``[start_ns, end_ns]`` (``end`` null: no valid snapshot again that day). Once read,
    ``end_ns`` is always a time: the day's end when the book did not resync (``resynced`` False).
    """

    start_ns: int
    end_ns: int
    resynced: bool = True
    source: str = ""

    def contains(self, ts_ns: int) -> bool:
        return self.start_ns <= ts_ns < self.end_ns

    def describe(self) -> str:
        """What an order rejected or cancelled because of the period says (orders.parquet)."""
        start = schemas.ns_to_iso(self.start_ns)
        end = schemas.ns_to_iso(self.end_ns)
        if end[:11] == start[:11]:
            end = end[11:]  # same day: the time only
        end += "" if self.resynced else " (no valid snapshot again that day)"
        return f"book invalid ({INVALID_REASON}) {_ms(start)}..{_ms(end)} in {self.source}"


def _ms(iso: str) -> str:
    """``…T10:01:02.345000000Z`` → ``…T10:01:02.345Z`` (the precision a reader needs)."""
    i = iso.find(".")
    return iso if i < 0 else iso[: i + 4] + iso[i + 10 :]


def invalid_periods(gap_starts: np.ndarray, book_ts: np.ndarray) -> list[tuple[int, int | None]]:
    """Merged [gap detected, next written snapshot) periods; end None if no snapshot follows.

    ``book_ts`` are the written snapshots' sorted times: none is written inside a gap, so the
    first one after a gap's start is the resync. Gaps that meet before a resync merge.
    """
    if gap_starts.size == 0:
        return []
    starts = np.sort(gap_starts.astype(np.int64))
    nxt = np.searchsorted(book_ts, starts, side="right")
    out: list[tuple[int, int | None]] = []
    last_idx = -1
    for s, i in zip(starts.tolist(), nxt.tolist(), strict=True):  # one per gap, not per row
        end = int(book_ts[i]) if i < book_ts.size else None
        if out and i == last_idx:
            continue  # same resync as the previous gap: already covered
        out.append((int(s), end))
        last_idx = i
    return out


def day_invalid_periods(
    periods: list[tuple[int, int | None]], day_start: int, day_end: int
) -> list[tuple[int, int | None]]:
    """The parts of ``periods`` inside [day_start, day_end); end None where it runs past the day."""
    out: list[tuple[int, int | None]] = []
    for s, e in periods:
        if s >= day_end or (e is not None and e <= day_start):
            continue
        out.append((max(s, day_start), e if e is not None and e < day_end else None))
    return out


def encode_invalid_periods(periods: list[tuple[int, int | None]]) -> dict[bytes, bytes]:
    """Key-value metadata for a book file; empty when the day has no invalid period."""
    if not periods:
        return {}
    return {INVALID_PERIODS_KEY.encode(): json.dumps([list(p) for p in periods]).encode()}


def decode_invalid_periods(
    metadata: dict[bytes, bytes] | None, source: str, day_start: int, day_end: int
) -> list[InvalidPeriod]:
    """A book file's invalid periods, validated: sorted, disjoint, inside the day, start < end.

    A malformed list is an error naming the object: a run must not guess where its book is valid.
    """
    raw = (metadata or {}).get(INVALID_PERIODS_KEY.encode())
    if raw is None:
        return []
    where = f"Parquet metadata {INVALID_PERIODS_KEY!r}"
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise schemas.DataValidationError(source, f"{where} is not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise schemas.DataValidationError(source, f"{where} must be a list, got {items!r:.80}")
    out: list[InvalidPeriod] = []
    prev_end = day_start
    for i, item in enumerate(items):
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and type(item[0]) is int
            and (item[1] is None or type(item[1]) is int)
        )
        if not ok:
            raise schemas.DataValidationError(
                source, f"{where}[{i}] must be [start_ns, end_ns or null], got {item!r:.80}"
            )
        start, end = item
        stop = day_end if end is None else end
        if not (day_start <= start < stop <= day_end):
            raise schemas.DataValidationError(
                source,
                f"{where}[{i}] = {item} is not a non-empty period inside the day "
                f"[{schemas.ns_to_iso(day_start)}, {schemas.ns_to_iso(day_end)})",
            )
        if start < prev_end and i:
            raise schemas.DataValidationError(
                source, f"{where}[{i}] = {item} overlaps or precedes the period before it"
            )
        out.append(InvalidPeriod(start, stop, end is not None, source))
        prev_end = stop
    return out
