"""What a long run keeps per day: the marks are cut to those the results read, nothing lost.

A run used to hold every per-second mark it read until its end (~10,000 rows a day at the
reference size, the largest thing growing with the days after the run's orders and fills).
Each finished day now keeps, per instrument, only the last mark at or before each equity-grid
instant and each fill (``engine/driver._DayFeeder.prune_marks``). These tests count the rows
kept and check the equity curve and positions against the ones built from every mark.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from _engine_data import (
    BTC,
    DAY1,
    config,
    day_input,
    instrument_row,
    instruments_df,
    signals,
    steady_trades,
    t,
)

from backtest_pipeline import layout
from backtest_pipeline.engine.conversion import marks_per_second
from backtest_pipeline.engine.driver import DayInput, run_engine
from backtest_pipeline.results.tables import build_equity_curve, build_positions
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.storage.ucs import UnifiedCloudService

INST = instruments_df(instrument_row(BTC))
N_DAYS = 5
GRID_S = 60


def _days() -> list[DayInput]:
    """Each day: two busy stretches of a trade every 0.5 s, a signal in each, minute bars."""
    out = []
    for i in range(N_DAYS):
        d = DAY1 + timedelta(days=i)
        parts = [
            steady_trades(d, a, a + 600, 0.5, 40_000.0 + 10 * i, drift=0.1, prefix=f"T{a}-")
            for a in (3_600, 50_000)
        ]
        target = 0.1 if i % 2 == 0 else -0.1
        sigs = signals(
            {"signal_id": f"s{i}a", "ts_event": t(d, 3_700), "instrument_key": BTC,
             "target_position": target},
            {"signal_id": f"s{i}b", "ts_event": t(d, 50_100), "instrument_key": BTC,
             "target_position": 0.0 if i % 3 else target / 2},
        )  # fmt: skip
        minutes = np.arange(0, 86_400, 60)
        bars = pl.DataFrame(
            {"ts_event": [t(d, float(m)) for m in minutes], "close": 39_990.0 + minutes / 1e4}
        )
        out.append(day_input(d, INST, sigs, {BTC: pa.concat_tables(parts)}, bars={BTC: bars}))
    return out


def _every_mark(days: list[DayInput]) -> pl.DataFrame:
    """Every mark the run reads, built here from its inputs as the driver builds them."""
    parts = []
    for d in days:
        parts.append(marks_per_second(d.trades[BTC], BTC))
        assert d.bars is not None
        parts.append(
            d.bars[BTC].select(
                pl.col("ts_event").cast(pl.Int64),
                pl.lit(BTC).alias("instrument_key"),
                pl.col("close").cast(pl.Float64).alias("price"),
            )
        )
    return pl.concat(parts).sort(["ts_event", "instrument_key"], maintain_order=True)


def test_marks_kept_per_day_are_bounded_and_the_results_unchanged() -> None:
    days = _days()
    out = run_engine(config([BTC], equity_interval_s=GRID_S), days)
    every = _every_mark(days)
    assert out.fills.height >= N_DAYS  # every day trades, so fills exist to be valued
    day_of = pl.col("ts_event") // 86_400_000_000_000
    fill_days = out.fills.select(day_of.alias("d"))
    # The bars close below 40,000, every trade is at or above it: each source counted apart.
    kept = out.marks.select(day_of.alias("d"), (pl.col("price") >= 40_000.0).alias("trade"))
    for i in range(N_DAYS):
        day_index = (DAY1 + timedelta(days=i) - date(1970, 1, 1)).days
        fills = fill_days.filter(pl.col("d") == day_index).height
        today = kept.filter(pl.col("d") == day_index)
        # Per-second marks (~1,200 a day here): one per grid instant inside each 600 s stretch
        # of trades, the one after it (it serves every later instant), one per fill.
        trade_marks = today.filter(pl.col("trade")).height
        assert 0 < trade_marks <= 2 * (600 // GRID_S + 2) + fills, (i, trade_marks, fills)
        # Minute bars on the grid's instants: each is read, so all are kept (and no more).
        assert today.filter(~pl.col("trade")).height == 86_400 // GRID_S, i
    assert out.marks.height < 0.6 * every.height

    start_ns = layout.day_bounds_ns(DAY1)[0]
    end_ns = layout.day_bounds_ns(DAY1 + timedelta(days=N_DAYS - 1))[1]
    grid = GRID_S * 1_000_000_000
    for build in (
        lambda m: build_positions(out.fills, m, start_ns, end_ns, grid),
        lambda m: build_equity_curve(out.fills, out.funding, m, 100_000.0, start_ns, end_ns, grid),
    ):
        assert build(out.marks).equals(build(every))


def test_the_portfolio_analyzer_keeps_a_day_of_closes_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NautilusTrader's analyzer copies its whole run of closed-position PnLs at each close."""
    from nautilus_trader.analysis.analyzer import PortfolioAnalyzer

    held: list[int] = []  # records in the analyzer when each close is added
    record = PortfolioAnalyzer.record_trade

    def counting(self: PortfolioAnalyzer, position_id, realized_pnl, ts_event=None) -> None:  # type: ignore[no-untyped-def]
        held.append(sum(len(v) for v in self._recorded_realized_pnls.values()))
        record(self, position_id, realized_pnl, ts_event)

    monkeypatch.setattr(PortfolioAnalyzer, "record_trade", counting)
    out = run_engine(config([BTC]), _days())
    closes_per_day = out.fills.group_by(pl.col("ts_event") // 86_400_000_000_000).len()
    assert len(held) >= N_DAYS  # positions closed on several days
    # Without the daily reset the last close would see every earlier one.
    assert max(held) < closes_per_day["len"].max()


def test_marks_kept_when_the_grid_does_not_divide_the_day() -> None:
    """A step that does not divide 24 h puts the grid at other instants each day: keep all."""
    days = _days()[:2]
    out = run_engine(config([BTC], equity_interval_s=7 * 60 + 1), days)
    assert out.marks.equals(_every_mark(days))


def test_log_object_streamed_from_its_file(ucs: UnifiedCloudService, tmp_path: Path) -> None:
    """The joined log is uploaded from its file (both backends): same bytes, file removed."""
    work = tmp_path / "work"
    work.mkdir()
    engine_log = "x" * (3 << 20) + "\nline é\n"
    (work / "execution.log").write_text(engine_log, encoding="utf-8")
    (work / "product.log").write_text("done\n", encoding="utf-8")
    writer = ResultWriter(ucs, "log-run")
    writer.write_log_from(work)
    got = ucs.download_bytes_sync(layout.target("results"), writer.path("execution.log"))
    want = f"===== execution.log =====\n{engine_log}\n===== product.log =====\ndone\n"
    assert got == want.encode()
    assert not (work / ".log.joined").exists()


def test_fills_and_per_order_lookups_do_not_grow_with_the_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At each day's end the fills are frames, and per-order lookups hold open orders only.

    Kept as Python tuples and dict entries, a year of fills and orders (~0.3 MB a day at the
    reference size) grew the run's memory by every order it ever sent.
    """
    from backtest_pipeline.engine import driver

    seen: list[tuple[int, int, int, int]] = []  # (fills, as tuples, per-order entries, open)
    purge = driver._purge_closed

    def spying(engine, *rest) -> None:  # type: ignore[no-untyped-def]
        purge(engine, *rest)
        s = engine.trader.strategies()[0]
        frozen = getattr(s.fills, "frozen_rows", 0)
        entries = max(len(s._arrives), len(s._fill_seq), len(s._cancel_reasons))
        seen.append((len(s.fills), len(s.fills) - frozen, entries, s.oms.open_count))

    monkeypatch.setattr(driver, "_purge_closed", spying)
    out = run_engine(config([BTC]), _days())
    assert len(seen) == N_DAYS and seen[-1][0] >= N_DAYS  # fills on every day
    for fills, as_tuples, entries, open_orders in seen:
        assert as_tuples == 0, (fills, as_tuples)
        assert entries <= open_orders, (entries, open_orders)
    assert out.fills.height >= seen[-1][0]


def test_finished_orders_leave_python_objects_and_the_outputs_are_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each day's resolved, closed orders become frame rows; orders and history stay the same."""
    from backtest_pipeline.engine import driver
    from backtest_pipeline.trading.oms import OMS

    held: list[tuple[int, int]] = []  # per day end: (orders so far, held as Python records)
    freeze = getattr(driver._OperationTracker, "freeze_resolved", None)

    def counting(self, *args) -> None:  # type: ignore[no-untyped-def]
        if freeze is not None:
            freeze(self, *args)
        oms = self.strategy.oms
        held.append((len(oms.orders_frame()), len(oms.records())))

    monkeypatch.setattr(driver._OperationTracker, "freeze_resolved", counting, raising=False)
    if freeze is None:  # the code before: count at the same point of the day
        resolve = driver._OperationTracker.resolve_finished

        def resolving(self, today) -> None:  # type: ignore[no-untyped-def]
            resolve(self, today)
            counting(self, set())

        monkeypatch.setattr(driver._OperationTracker, "resolve_finished", resolving)
    out = run_engine(config([BTC]), _days())
    assert len(held) == N_DAYS and held[-1][0] > held[1][0] > 0
    for k in range(2, N_DAYS):
        # What is still held as records: at most the orders of the last two days.
        assert held[k][1] <= held[k][0] - held[k - 2][0], (k, held)

    monkeypatch.setattr(OMS, "freeze", lambda self, ids: None, raising=False)
    whole = run_engine(config([BTC]), _days())
    assert out.orders.equals(whole.orders)
    assert out.order_status_history.equals(whole.order_status_history)


def test_cyclic_garbage_of_a_day_is_freed_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A footer's metadata (pyarrow FileMetaData ↔ ParquetSchema) is a cycle in the oldest
    generation once dropped from the footer cache: only a full collection frees its native
    row-group metadata. The day's end must run one, or RSS climbs between rare collections."""
    import gc
    import weakref

    from backtest_pipeline.engine import driver

    class Held:
        me: object = None

    alive: list[bool] = []
    purge = driver._purge_closed

    def spying(*args) -> None:  # type: ignore[no-untyped-def]
        held = Held()
        held.me = held  # a cycle, as FileMetaData ↔ ParquetSchema
        ref = weakref.ref(held)
        gc.collect()  # survives (still referenced): now in the oldest generation
        del held  # garbage that only a full collection finds
        purge(*args)
        alive.append(ref() is not None)

    monkeypatch.setattr(driver, "_purge_closed", spying)
    run_engine(config([BTC]), _days())
    assert alive == [False] * N_DAYS
