"""What one engine run hands back, kept apart from NautilusTrader so it travels light.

A time shard's result crosses processes (and machines) as a pickle of these classes. The
process that stitches shards never runs an engine itself; defining them here lets it unpickle
and stitch the shards' outputs without importing NautilusTrader, whose import alone is about
250 MB of resident memory (``benchmarks/RESULTS.md``, the year's memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import polars as pl

from backtest_pipeline.results.operations import REFERENCE_COLUMNS


def avg_slippage_bps(terms: list[tuple[float, float]]) -> float | None:
    """Quantity-weighted mean slippage; exactly rounded sums, so any split of the fills agrees."""
    den = math.fsum(q for _, q in terms)
    return math.fsum(n for n, _ in terms) / den if den else None


@dataclass(frozen=True)
class BoundaryState:
    """What decides a run's future at a day boundary, to hand a time shard over exactly.

    Two runs that reach a boundary with equal ``positions`` (signed quantity and average open
    price of every open position), no working order and no unfinished operation behave the same
    from there on, given the same inputs: orders come from ``target − position``, fills from the
    venue's book, which both rebuild from the same ticks. Account balances may differ by a
    constant offset; the only decisions they feed (the gross-leverage limit) are replayed with
    the true balance before a shard is accepted (see ``run/shards.py``).
    """

    day: date  # the first day after the boundary
    positions: tuple[tuple[str, float, float], ...]  # (instrument key, signed qty, avg_px_open)
    open_orders: tuple[str, ...]
    open_operations: tuple[str, ...]
    balances: tuple[tuple[str, str], ...]  # (venue, exact decimal balance in account currency)
    # Depth instruments whose venue book still holds liquidity our own fills consumed: no
    # snapshot has re-stated the book since their last fill (the matching engine forgets
    # consumption only at a snapshot), so the next order may meet levels the run's history
    # emptied. Everything else a book venue holds is re-stated by the data before our next
    # order (the quote or snapshot in force, see engine/feed.py).
    consumed_books: tuple[str, ...] = ()
    # Per instrument on quotes or depth, the time of the last book row read: the row a jump or
    # an interval without a row of its own starts from. A warm-up day without book rows for an
    # instrument leaves the shard without the one the run holds, so they must agree.
    books_in_force: tuple[tuple[str, int], ...] = ()

    @property
    def quiet(self) -> bool:
        """Nothing in flight: no working order, no operation with work left, no consumed level."""
        return not self.open_orders and not self.open_operations and not self.consumed_books

    def same_course(self, other: BoundaryState) -> bool:
        """Whether a run from ``other`` continues exactly like one from ``self``."""
        return (
            self.quiet
            and other.quiet
            and self.positions == other.positions
            and self.books_in_force == other.books_in_force
        )

    def balance_offsets(self, other: BoundaryState) -> dict[str, Decimal]:
        """Per venue, what to add to ``other``'s balances to get ``self``'s."""
        mine, theirs = dict(self.balances), dict(other.balances)
        return {v: Decimal(mine[v]) - Decimal(theirs[v]) for v in mine}


@dataclass
class EngineOutput:
    orders: pl.DataFrame
    order_status_history: pl.DataFrame
    fills: pl.DataFrame
    funding: pl.DataFrame
    marks: pl.DataFrame
    operations: pl.DataFrame
    stats: dict[str, Any]
    final_balances: dict[str, float]
    # The market side of each operation's execution quality (results/operations.py).
    market_refs: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=REFERENCE_COLUMNS)
    )
    market_data: dict[str, str] = field(default_factory=dict)
    intervals: dict[date, pl.DataFrame] = field(default_factory=dict)
    engine_order_ids: list[str] = field(default_factory=list)
    # Time shards only: the state after the warm-up days and at the end, and the risk checks
    # (intent, snapshot, outcome) that depended on the account balance after the warm-up.
    start_state: BoundaryState | None = None
    end_state: BoundaryState | None = None
    risk_log: list[Any] = field(default_factory=list)
    slippage_terms: list[tuple[float, float]] = field(default_factory=list)
