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


def _last_per_slot(slots: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last update of each slot in a batch (later updates of a level replace earlier ones)."""
    rev = slots[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)
    return uniq, sizes[::-1][first_in_rev]


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
    qty = {False: np.zeros(n_slots), True: np.zeros(n_slots)}
    best = {False: -1, True: n_slots}  # best bid slot (highest), best ask slot (lowest)
    # Update rows of each message: msg is non-decreasing, so message m spans bounds[m]:bounds[m+1].
    bounds = np.searchsorted(updates.msg, np.arange(n_msg + 1), side="left")
    emit = emission_messages(updates.msg_ts_event, interval_ns)
    resets = np.flatnonzero(updates.msg_reset)

    out_bp = np.full((emit.size, LEVELS), np.nan)
    out_bs = np.full((emit.size, LEVELS), np.nan)
    out_ap = np.full((emit.size, LEVELS), np.nan)
    out_as = np.full((emit.size, LEVELS), np.nan)
    keep = np.ones(emit.size, dtype=bool)
    first_msg = 0
    for row, last_msg in enumerate(emit):
        # A snapshot inside the batch makes everything before it irrelevant.
        r = resets[(resets >= first_msg) & (resets <= last_msg)]
        if r.size:
            first_msg = int(r[-1])
            for side in (False, True):
                qty[side][:] = 0.0
            best = {False: -1, True: n_slots}
        lo, hi = bounds[first_msg], bounds[last_msg + 1]
        first_msg = int(last_msg) + 1
        if hi > lo:
            sl, sz, ask = slot[lo:hi], updates.size[lo:hi], updates.is_ask[lo:hi]
            for side in (False, True):
                m = ask == side
                if not m.any():
                    continue
                s_idx, s_val = _last_per_slot(sl[m], sz[m])
                qty[side][s_idx] = s_val
                added = s_idx[s_val > 0]
                if added.size:
                    best[side] = (
                        max(best[side], int(added.max()))
                        if not side
                        else min(best[side], int(added.min()))
                    )
        bids = _top_below(qty[False], best[False], LEVELS)
        asks = _top_above(qty[True], best[True], LEVELS)
        if bids.size:
            best[False] = int(bids[0])
        if asks.size:
            best[True] = int(asks[0])
        if bids.size and asks.size and bids[0] >= asks[0]:
            keep[row] = False
            continue
        out_bp[row, : bids.size] = uniq[bids]
        out_bs[row, : bids.size] = qty[False][bids]
        out_ap[row, : asks.size] = uniq[asks]
        out_as[row, : asks.size] = qty[True][asks]
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
