"""`run_backtest`: the one function every entry point (CLI, Dagster, benchmark) calls.

It reads a range of days through UCS (only the signal intervals, by byte ranges, unless
`full_day`), streams them through one NautilusTrader engine with the next day prefetched while the
current one runs, then builds and writes the results of docs/outputs.md. Results are written so
that nothing can be mistaken for complete: the Parquet objects first, `summary.json` last; a
failure removes this run's Parquet objects and writes a FAILED summary and the log.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import psutil

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, MarketData
from backtest_pipeline.results import metrics as metrics_mod
from backtest_pipeline.results import operations as operations_mod
from backtest_pipeline.results import report as report_mod
from backtest_pipeline.results import tables as results_mod
from backtest_pipeline.results.writer import ResultWriter, failed_summary, utc_now
from backtest_pipeline.run import shards as shards_mod
from backtest_pipeline.run.inputs import (
    DayLoader,
    Prefetcher,
    ProgressFn,
    ReadSummary,
    load_day,
    resolve_market_data,
)
from backtest_pipeline.storage.ucs import UnifiedCloudService

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    # NautilusTrader costs seconds to import; Dagster steps that only read inputs never need it.
    from backtest_pipeline.engine.output import EngineOutput

log = logging.getLogger("backtest_pipeline.run")

NS = 1_000_000_000


class BacktestFailed(RuntimeError):
    """The run failed; `summary.json` with status FAILED and the log were written."""

    def __init__(self, message: str, run_id: str, summary_uri: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.summary_uri = summary_uri


@dataclass
class BacktestResult:
    run_id: str
    status: str
    summary: dict[str, Any]
    locations: dict[str, str]
    orders: pl.DataFrame
    fills: pl.DataFrame
    positions: pl.DataFrame
    equity_curve: pl.DataFrame
    operations: pl.DataFrame
    intervals: dict[str, pl.DataFrame] = field(default_factory=dict)


#: What produces a run's engine output: given the run's work directory and its prefetcher.
Produce = Callable[[Path, Prefetcher, Mapping[str, MarketData]], "tuple[EngineOutput, ReadSummary]"]


def run_backtest(
    config: BacktestConfig,
    start: date | str,
    end: date | str,
    ucs: UnifiedCloudService | None = None,
    run_id: str | None = None,
    progress: ProgressFn | None = None,
    write_results: bool = True,
    day_loader: DayLoader | None = None,
    shards: int = 1,
    wait_to_write: Callable[[], None] | None = None,
) -> BacktestResult:
    """Backtest `config` over the UTC days [start, end] and write its results under `run_id`.

    `day_loader` replaces how a day's inputs are obtained (the Dagster path reads the day from
    the NautilusTrader catalog its assets materialized); the default reads through UCS. It is
    called as ``load_day`` is, with the run's resolved ``market_data`` as a keyword.
    `shards` > 1 splits a long run into time shards run in parallel processes and stitched
    exactly (`run/shards.py`); the results are the same as with one engine.
    `wait_to_write`: for a run started before anyone asked for it (the Dagster path starts its
    engine while the catalogs are still being written): nothing is written (not even the removal
    of an earlier attempt's results) until the engine is done or failed and this has returned;
    the caller blocks there until it knows the run is wanted, else ends the process. Called
    again after it has returned, it must return at once.
    """
    ucs = ucs or UnifiedCloudService()
    days = layout.days_between(start, end)
    run_id = layout.validate_run_id(run_id) if run_id else config.run_id(days[0], days[-1])

    def produce(
        workdir: Path, prefetch: Prefetcher, market_data: Mapping[str, MarketData]
    ) -> tuple[EngineOutput, ReadSummary]:
        plan = shards_mod.with_market_data(planned, market_data)
        refusal = shards_mod.refusal(config, market_data) if len(plan) > 1 else None
        if refusal:
            log.warning("run %s: one engine instead of %d shards: %s", run_id, shards, refusal)
        if len(plan) > 1 and refusal is None:
            return shards_mod.run_sharded(config, plan, ucs, workdir, progress, parallel=shards)
        from backtest_pipeline.engine.driver import run_engine

        engine_out = run_engine(config, iter(prefetch), log_dir=workdir, market_data=market_data)
        return engine_out, prefetch.summary()

    planned = shards_mod.plan_shards(days, shards) if day_loader is None else []
    return _execute(
        config, days, ucs, run_id, produce, progress, write_results, day_loader,
        wait_to_write=wait_to_write, engine_here=len(planned) <= 1,
    )  # fmt: skip


def stitch_backtest(
    config: BacktestConfig,
    stored: Sequence[tuple[shards_mod.ShardPlan, str]],
    ucs: UnifiedCloudService,
    run_id: str | None = None,
) -> BacktestResult:
    """The results of a run whose shards ran elsewhere (`shards.run_one_shard`), stitched exactly.

    The stitch step of a distributed run: the stored shard results are checked boundary by
    boundary (a failed boundary is re-run here), then the results are built and written exactly
    as `run_backtest` builds and writes them, so they are the one-engine run's byte for byte.
    `stored` pairs each shard's plan with the attempt (orchestrator run id) that stored it.
    """
    days = [d for p, _ in sorted(stored, key=lambda s: s[0].index) for d in p.own_days]
    if not days or days != layout.days_between(days[0], days[-1]):
        raise ValueError(f"shard plans do not cover {days[0]}..{days[-1]} once each, in order")
    run_id = layout.validate_run_id(run_id) if run_id else config.run_id(days[0], days[-1])

    def produce(
        workdir: Path, _prefetch: Prefetcher, _market_data: Mapping[str, MarketData]
    ) -> tuple[EngineOutput, ReadSummary]:
        return shards_mod.stitch(config, ucs, stored, run_id, workdir)

    result = _execute(config, days, ucs, run_id, produce, None, True, None, engine_here=False)
    shards_mod.discard(ucs, run_id, [a for _, a in stored])
    return result


def begin_results(ucs: UnifiedCloudService, config: BacktestConfig, run_id: str) -> None:
    """A run starts: a stale result of an earlier attempt must not survive a failed re-run."""
    writer = ResultWriter(ucs, run_id)
    writer.remove()
    writer.write_config(config.model_dump(mode="json"))


def _execute(
    config: BacktestConfig,
    days: list[date],
    ucs: UnifiedCloudService,
    run_id: str,
    produce: Produce,
    progress: ProgressFn | None,
    write_results: bool,
    day_loader: DayLoader | None,
    *,
    wait_to_write: Callable[[], None] | None = None,
    engine_here: bool = True,
) -> BacktestResult:
    """Produce the engine output, build the results and write them (or the FAILED summary).

    ``engine_here`` is False when the engine runs in other processes (time shards, a stitch):
    this process then never imports NautilusTrader, whose ~250 MB would otherwise sit under the
    shards' outputs while it stitches them (the peak of a year's run).
    """
    writer = ResultWriter(ucs, run_id)
    locations = writer.locations()
    created_at = utc_now()
    workdir = Path(tempfile.mkdtemp(prefix=f"bt-{run_id}-"))
    handler = logging.FileHandler(workdir / "product.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger("backtest_pipeline")
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    if engine_here:
        # Loading NautilusTrader (~1 s) is process start-up, not backtest work: the clock starts
        # once it is imported, as the bare-engine floor's does (`cli_s` of the benchmark times
        # it all).
        import backtest_pipeline.engine.driver  # noqa: F401

    wall0 = time.perf_counter()
    prefetch = Prefetcher(ucs, config, days, progress, day_loader or load_day)
    try:
        market_data = market_data_for(ucs, config, days)
        # A day loader (the Dagster path's catalog reader) is told the same market data.
        prefetch.loader = functools.partial(day_loader or load_day, market_data=market_data)
        log.info("run %s: %s over %s..%s on %s", run_id, config.name, days[0], days[-1], ucs.root)
        if write_results and wait_to_write is None:
            begin_results(ucs, config, run_id)
        engine_out, reads = produce(workdir, prefetch, market_data)
        result = _build_result(
            config, days, run_id, engine_out, reads, wall0, created_at, locations
        )
        # The marks, status history and references served the build; they need not wait for
        # the writing, the last step of a long run's peak.
        del engine_out, reads
        if write_results:
            if wait_to_write is not None:
                wait_to_write()
                begin_results(ucs, config, run_id)
            writer.write_completed(
                result_tables(result), result.summary, workdir, report_html(result)
            )
        log.info("run %s completed in %.2f s", run_id, time.perf_counter() - wall0)
        return result
    except Exception as exc:
        log.error("run %s failed: %s\n%s", run_id, exc, traceback.format_exc())
        summary = failed_summary(
            run_id,
            config.model_dump(mode="json"),
            days,
            exc,
            created_at=created_at,
            inputs=[i.as_dict() for i in prefetch.inputs],
            execution_stats={"wall_time_s": round(time.perf_counter() - wall0, 3)},
        )
        if write_results:
            try:
                if wait_to_write is not None:  # as a run that wrote its config first ends
                    wait_to_write()
                    writer.write_config(config.model_dump(mode="json"))
                writer.write_failed(summary, workdir=workdir)
            except Exception as write_exc:  # storage itself may be what failed
                log.error("could not record the failure of %s: %s", run_id, write_exc)
                raise BacktestFailed(
                    f"{exc} (and the FAILED summary could not be written: {write_exc})",
                    run_id,
                    locations["summary.json"],
                ) from exc
        raise BacktestFailed(str(exc), run_id, locations["summary.json"]) from exc
    finally:
        root_logger.removeHandler(handler)
        handler.close()
        shutil.rmtree(workdir, ignore_errors=True)


def market_data_for(
    ucs: UnifiedCloudService, config: BacktestConfig, days: list[date]
) -> dict[str, MarketData]:
    """What each instrument's book is built from over ``days`` (``market_data: auto`` resolved).

    Every path resolves it here, from the objects in the ticks bucket, so that `backtest run`,
    time shards and the Dagster assets (whose catalog holds the book slices it names) replay
    the same data types for the same configuration.
    """
    return resolve_market_data(ucs, config, days)


def record_failure(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    start: date | str,
    end: date | str,
    exc: BaseException,
    run_id: str | None = None,
) -> str:
    """Mark the run of `config` over [start, end] FAILED when it fails before `run_backtest`.

    The Dagster path validates its inputs in earlier steps than the backtest; a failure there
    must leave the same trace as one inside `run_backtest`: no result Parquet that could pass for
    complete, a FAILED summary naming the error, and the log. Returns the summary's URI.
    """
    days = layout.days_between(start, end)
    run_id = layout.validate_run_id(run_id) if run_id else config.run_id(days[0], days[-1])
    return ResultWriter(ucs, run_id).failed_before_start(config.model_dump(mode="json"), days, exc)


def _build_result(
    config: BacktestConfig,
    days: list[date],
    run_id: str,
    out: EngineOutput,
    reads: ReadSummary,
    wall0: float,
    created_at: str,
    locations: dict[str, str],
) -> BacktestResult:
    start_ns = layout.day_bounds_ns(days[0])[0]
    end_ns = layout.day_bounds_ns(days[-1])[1]
    starting_balance = sum(config.venue(v).starting_balance for v in config.venue_names)
    margin_init = reads.margin_init
    equity_ns = int(config.equity_interval_s * NS)
    metrics_ns = int(config.metrics_interval_s * NS)
    positions = results_mod.build_positions(
        out.fills, out.marks, start_ns=start_ns, end_ns=end_ns, equity_interval_ns=equity_ns
    )
    equity = results_mod.build_equity_curve(
        out.fills,
        out.funding,
        out.marks,
        starting_balance=starting_balance,
        start_ns=start_ns,
        end_ns=end_ns,
        equity_interval_ns=equity_ns,
        margin_init=margin_init,
    )
    pnl = results_mod.build_pnl(out.fills, out.funding, equity, starting_balance=starting_balance)
    trips = results_mod.round_trips(out.fills, out.funding)
    mets = metrics_mod.compute_metrics(equity, trips, metrics_ns, start_ns, end_ns)
    operations = operations_mod.build_operations(
        out.operations, out.orders, out.fills, out.market_refs
    )
    wall = time.perf_counter() - wall0
    bytes_read = sum(i.bytes_read for i in reads.inputs)
    tick_inputs = [i for i in reads.inputs if "/data_type-trades/" in i.path]
    stats = dict(out.stats)
    stats.update(
        {
            "days": len(days),
            "bytes_read": bytes_read,
            "bytes_available": sum(i.bytes_total for i in tick_inputs),
            "tick_bytes_read": sum(i.bytes_read for i in tick_inputs),
            "read_time_s": round(reads.read_time_s, 3),
            "wall_time_s": round(wall, 3),
            "ticks_per_second": round(
                stats.get("ticks_processed", 0) / max(stats.get("engine_time_s", 0), 1e-9), 1
            ),
            "peak_rss_mb": round(max(_peak_rss_mb(), stats.pop("peak_rss_mb_shards", 0.0)), 1),
            "full_day": config.full_day,
            "market_data": {k: out.market_data.get(k, "trades") for k in config.instruments},
            "tca": operations_mod.tca_by_algo(operations),
        }
    )
    summary = {
        "run_id": run_id,
        "status": "COMPLETED",
        "created_at": created_at,
        "config": config.model_dump(mode="json"),
        "start": days[0].isoformat(),
        "end": days[-1].isoformat(),
        "days": [d.isoformat() for d in days],
        "starting_balance": starting_balance,
        "account_currency": config.account_currency,
        "pnl": pnl,
        "metrics": mets,
        "execution_stats": stats,
        "inputs": [i.as_dict() for i in reads.inputs],
        "results": locations,
    }
    return BacktestResult(
        run_id=run_id,
        status="COMPLETED",
        summary=summary,
        locations=locations,
        orders=out.orders,
        fills=out.fills,
        positions=positions,
        equity_curve=equity,
        operations=operations,
        intervals=reads.intervals,
    )


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover
        return psutil.Process().memory_info().rss / 2**20


def result_tables(result: BacktestResult) -> Mapping[str, pa.Table]:
    """The Parquet outputs conformed to the exact schemas of docs/outputs.md.

    Each table is conformed when it is asked for: the writer takes them one by one, so a long
    run never holds all five Arrow copies of its outputs at once (a year's are ~130 MB).
    """
    return _ResultTables(result)


class _ResultTables(Mapping[str, "pa.Table"]):
    """Each of ``layout.RESULT_PARQUETS`` from the result's frame of the same name, conformed to
    the schema of that name."""

    def __init__(self, result: BacktestResult) -> None:
        self._result = result

    def __getitem__(self, name: str) -> pa.Table:
        if name not in layout.RESULT_PARQUETS:
            raise KeyError(name)
        frame = name.removesuffix(".parquet")
        return results_mod.conform(getattr(self._result, frame), frame)

    def __iter__(self) -> Iterator[str]:
        return iter(layout.RESULT_PARQUETS)

    def __len__(self) -> int:
        return len(layout.RESULT_PARQUETS)


def report_html(result: BacktestResult) -> str:
    """The run's ``report.html`` (self-contained: inline SVG charts, no network needed)."""
    return report_mod.render_report_html(
        result.summary, result.equity_curve, result.positions, result.operations
    )


def summary_json(result: BacktestResult) -> str:
    return json.dumps(result.summary, indent=2, default=str)
