"""`run_backtest`: the one function every entry point (CLI, Dagster, benchmark) calls.

It reads a range of days through UCS (only the signal intervals, by byte ranges, unless
`full_day`), streams them through one NautilusTrader engine with the next day prefetched while the
current one runs, then builds and writes the results of spec/outputs.md. Results are written so
that nothing can be mistaken for complete: the Parquet objects first, `summary.json` last; a
failure removes this run's Parquet objects and writes a FAILED summary and the log.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import psutil
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data import readers, schemas
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.results import metrics as metrics_mod
from backtest_pipeline.results import tables as results_mod
from backtest_pipeline.signals.intervals import signal_intervals
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.ucs import UnifiedCloudService

if TYPE_CHECKING:
    # NautilusTrader costs seconds to import; Dagster steps that only read inputs never need it.
    from backtest_pipeline.engine.driver import DayInput, EngineOutput

log = logging.getLogger("backtest_pipeline.run")

TRADE_COLUMNS = ["ts_event", "trade_id", "price", "size", "side"]
NS = 1_000_000_000


class BacktestFailed(RuntimeError):
    """The run failed; `summary.json` with status FAILED and the log were written."""

    def __init__(self, message: str, run_id: str, summary_uri: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.summary_uri = summary_uri


@dataclass
class InputRecord:
    bucket: str
    path: str
    generation: str
    bytes_total: int
    bytes_read: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "path": self.path,
            "generation": self.generation,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
        }


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


ProgressFn = Callable[[str, int, int, dict[str, Any]], None]
DayLoader = Callable[
    [UnifiedCloudService, BacktestConfig, date],
    "tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame]]",
]


def trade_keys_for_day(
    config: BacktestConfig, instruments: pl.DataFrame, signals: pl.DataFrame
) -> list[str]:
    """Instruments whose ticks the day needs: those signalled, plus their router peers."""
    available = set(instruments.get_column("instrument_key").to_list())
    configured = [k for k in config.instruments if k in available]
    if config.full_day:
        return configured
    signalled = set(signals.get_column("instrument_key").to_list()) if signals.height else set()

    def asset(k: str) -> tuple[str, str]:
        _v, t, pair = k.split(":")
        return ("SPOT" if t == "SPOT" else "DERIV", pair)

    wanted_assets = {asset(k) for k in signalled}
    return [k for k in configured if asset(k) in wanted_assets]


def load_day(
    ucs: UnifiedCloudService, config: BacktestConfig, day: date
) -> tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame]]:
    """Everything one day of the run needs, read and validated."""
    inputs: list[InputRecord] = []
    t_instr, t_sig = layout.target("instruments"), layout.target("signals")

    ipath = layout.instruments_path(day)
    inputs.append(_record(ucs, "instruments", ipath))
    instruments = readers.read_instruments(ucs, day)

    spath = layout.signals_path(day, config.strategy_id)
    try:
        sinfo = ucs.stat_sync(t_sig, spath)
    except ObjectNotFoundError:
        log.warning(
            "no signals for strategy %s on %s (%s): the day is skipped for trading",
            config.strategy_id,
            day,
            ucs.uri(t_sig, spath),
        )
        signals = pl.from_arrow(schemas.SIGNALS_SCHEMA.empty_table())
    else:
        signals = readers.read_signals(ucs, day, config.strategy_id)
        inputs.append(
            InputRecord(t_sig.gcs_bucket, spath, sinfo.generation, sinfo.size, sinfo.size)
        )

    check_signal_instruments(
        signals, instruments, config, ucs.uri(t_sig, spath), ucs.uri(t_instr, ipath)
    )
    keys = trade_keys_for_day(config, instruments, signals)
    intervals = signal_intervals(signals, day, config.lookback_s, config.grace_s)
    by_key: dict[str, pl.DataFrame] = {}
    trades = {}
    for key in keys:
        ranges = ranges_for_key(config, intervals, key, day)
        if not ranges:
            continue
        by_key[key] = pl.DataFrame(ranges, schema=["start_ns", "end_ns"], orient="row")
        table, record = fetch_trades(ucs, day, key, ranges, needed_by=signals.height)
        trades[key] = table
        inputs.append(record)

    available = set(instruments.get_column("instrument_key").to_list())
    funding, funding_inputs = load_funding(ucs, config, day, available)
    bars, bar_inputs = load_bars(ucs, config, day)
    inputs += funding_inputs + bar_inputs
    from backtest_pipeline.engine.driver import DayInput

    day_input = DayInput(
        day=day,
        instruments=instruments,
        signals=signals,
        trades=trades,
        funding=funding,
        bars=bars or None,
    )
    return day_input, inputs, by_key


def _record(ucs: UnifiedCloudService, role: layout.Role, path: str) -> InputRecord:
    """Stat an object (missing → ObjectNotFoundError) and record it as read whole."""
    target = layout.target(role)
    info = ucs.stat_sync(target, path)
    return InputRecord(target.gcs_bucket, path, info.generation, info.size, info.size)


def load_funding(
    ucs: UnifiedCloudService, config: BacktestConfig, day: date, available: set[str]
) -> tuple[dict[str, pl.DataFrame], list[InputRecord]]:
    """Funding events of the run's perpetuals available that day.

    A missing funding object is a documented, logged skip (no funding applied that day): the
    executions themselves are complete without it, unlike a missing tick file.
    """
    funding: dict[str, pl.DataFrame] = {}
    records: list[InputRecord] = []
    for key in config.instruments:
        if key.split(":")[1] != "PERPETUAL" or key not in available:
            continue
        path = layout.funding_path(day, key)
        try:
            records.append(_record(ucs, "ticks", path))
        except ObjectNotFoundError:
            log.warning(
                "no funding rates for %s on %s (%s): no funding applied that day",
                key,
                day,
                ucs.uri(layout.target("ticks"), path),
            )
            continue
        funding[key] = readers.read_funding(ucs, day, key)
    return funding, records


def load_bars(
    ucs: UnifiedCloudService, config: BacktestConfig, day: date
) -> tuple[dict[str, pl.DataFrame], list[InputRecord]]:
    """Derived 1-minute closes that mark positions between signal intervals, where they exist."""
    bars: dict[str, pl.DataFrame] = {}
    records: list[InputRecord] = []
    if not config.use_bars_for_marks or config.full_day:
        return bars, records
    t_ticks = layout.target("ticks")
    for key in config.instruments:
        path = layout.bars_path(day, key)
        try:
            records.append(_record(ucs, "ticks", path))
        except ObjectNotFoundError:
            continue
        bars[key] = ucs.download_from_gcs_sync(t_ticks, path).select("ts_event", "close")
    return bars, records


def check_signal_instruments(
    signals: pl.DataFrame,
    instruments: pl.DataFrame,
    config: BacktestConfig,
    signals_uri: str,
    instruments_uri: str,
) -> None:
    """A signal for an instrument the run cannot trade that day is an error, never a skip.

    Skipping would silently omit executions from results that look complete.
    """
    if signals.height == 0:
        return
    available = set(instruments.get_column("instrument_key").to_list())
    configured = set(config.instruments)
    keys = signals.get_column("instrument_key")
    for i, key in enumerate(keys.to_list()):
        if key not in configured:
            raise DataValidationError(
                signals_uri,
                f"signal {signals['signal_id'][i]!r} (row {i}) is for instrument {key!r}, which is "
                f"not in the run's instruments {sorted(configured)}",
                column="instrument_key",
                row=i,
                value=key,
            )
        if key not in available:
            raise DataValidationError(
                signals_uri,
                f"signal {signals['signal_id'][i]!r} (row {i}) is for instrument {key!r}, which is "
                f"not available that day: absent from {instruments_uri}",
                column="instrument_key",
                row=i,
                value=key,
            )


def ranges_for_key(
    config: BacktestConfig, intervals: pl.DataFrame, key: str, day: date
) -> list[tuple[int, int]]:
    """Half-open [start, end) ns ranges of `key`'s trades that the day needs.

    Router peers (the same asset on other venues) share the intervals of the signalled
    instrument, so the router can price them. Intervals are inclusive; ranges are half-open.
    """
    if config.full_day:
        return [layout.day_bounds_ns(day)]
    pair = key.split(":")[2]
    rows = intervals.filter(pl.col("instrument_key").str.ends_with(":" + pair))
    if rows.height == 0:
        return []
    return merge_ranges([(int(s), int(e) + 1) for s, e in rows.select("start_ns", "end_ns").rows()])


def fetch_trades(
    ucs: UnifiedCloudService, day: date, key: str, ranges: list[tuple[int, int]], needed_by: int
) -> tuple[pa.Table, InputRecord]:
    """The validated trades of `key` in `ranges` by byte-range reads, and what they cost.

    The last trade before each range is included (when it lies in a fetched row group) so the
    engine's book holds the price in force when a signal window opens, not one left over from
    an earlier window. A tick object with no rows at all is an error when signals need it.
    """
    t_ticks = layout.target("ticks")
    tpath = layout.trades_path(day, key)
    uri = ucs.uri(t_ticks, tpath)
    res = ucs.download_from_gcs_streaming_sync(
        t_ticks,
        tpath,
        timestamp_range=ranges,
        columns=TRADE_COLUMNS,
        use_byte_range=True,
        include_prior=True,
    )
    if res.object_rows == 0:
        raise DataValidationError(
            uri,
            f"the trades object holds no trades (0 rows) but {needed_by} signal(s) of {day} need it",
        )
    table = schemas.validate_trades(res.table, uri, day=day)
    return table, InputRecord(
        t_ticks.gcs_bucket, tpath, res.generation, res.object_size, res.bytes_read
    )


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass
class ReadSummary:
    """What a run read: every input object, the signal intervals, and the time it took."""

    inputs: list[InputRecord] = field(default_factory=list)
    intervals: dict[str, pl.DataFrame] = field(default_factory=dict)
    read_time_s: float = 0.0
    margin_init: dict[str, float] = field(default_factory=dict)


class _Prefetcher:
    """Reads day d+1 in a thread while the engine runs day d (I/O overlapped with the engine)."""

    def __init__(
        self,
        ucs: UnifiedCloudService,
        config: BacktestConfig,
        days: list[date],
        progress: ProgressFn | None,
        loader: DayLoader,
    ) -> None:
        self.ucs, self.config, self.days, self.progress = ucs, config, days, progress
        self.loader = loader
        self.inputs_by_day: dict[date, list[InputRecord]] = {}
        self.read_time_by_day: dict[date, float] = {}
        self.intervals: dict[str, pl.DataFrame] = {}
        self.ticks = 0
        self.margin_init: dict[str, float] = {}

    @property
    def inputs(self) -> list[InputRecord]:
        return [r for day in self.inputs_by_day.values() for r in day]

    def summary(self, since: date | None = None) -> ReadSummary:
        """What was read for the days from ``since`` on (a time shard's own days) or all."""
        first = since or date.min
        return ReadSummary(
            inputs=[r for d, day in self.inputs_by_day.items() if d >= first for r in day],
            intervals={
                k: v for k, v in self.intervals.items() if date.fromisoformat(k[:10]) >= first
            },
            read_time_s=sum(t for d, t in self.read_time_by_day.items() if d >= first),
            margin_init=dict(self.margin_init),
        )

    def _load(
        self, day: date
    ) -> tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame], float]:
        t0 = time.perf_counter()
        d, inp, iv = self.loader(self.ucs, self.config, day)
        return d, inp, iv, time.perf_counter() - t0

    def __iter__(self) -> Iterator[DayInput]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
            nxt: Future[Any] | None = pool.submit(self._load, self.days[0]) if self.days else None
            for i, day in enumerate(self.days):
                assert nxt is not None
                day_input, inputs, intervals, dt = nxt.result()
                nxt = pool.submit(self._load, self.days[i + 1]) if i + 1 < len(self.days) else None
                self.inputs_by_day[day] = inputs
                for row in day_input.instruments.select(
                    "instrument_key", "instrument_type", "margin_init"
                ).iter_rows():
                    # Spot is a cash account: holding it uses no margin.
                    self.margin_init.setdefault(row[0], 0.0 if row[1] == "SPOT" else float(row[2]))
                for k, v in intervals.items():
                    self.intervals[f"{day.isoformat()}|{k}"] = v
                self.read_time_by_day[day] = dt
                n = sum(t.num_rows for t in day_input.trades.values())
                self.ticks += n
                if self.progress:
                    self.progress(
                        "day", i + 1, len(self.days), {"day": day.isoformat(), "ticks": n}
                    )
                yield day_input


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
) -> BacktestResult:
    """Backtest `config` over the UTC days [start, end] and write its results under `run_id`.

    `day_loader` replaces how a day's inputs are obtained (the Dagster path reads the day from
    the NautilusTrader catalog its assets materialized); the default reads through UCS.
    `shards` > 1 splits a long run into time shards run in parallel processes and stitched
    exactly (`execution/shards.py`); the results are the same as with one engine.
    """
    ucs = ucs or UnifiedCloudService()
    days = layout.days_between(start, end)
    run_id = layout.validate_run_id(run_id) if run_id else config.run_id(days[0], days[-1])
    t_res = layout.target("results")
    locations = {
        name: ucs.uri(t_res, layout.result_path(run_id, name)) for name in layout.RESULT_OBJECTS
    }
    locations["backtest_config.json"] = ucs.uri(t_res, layout.config_path(run_id))
    locations["execution.log"] = ucs.uri(t_res, layout.log_path(run_id))
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    workdir = Path(tempfile.mkdtemp(prefix=f"bt-{run_id}-"))
    handler = logging.FileHandler(workdir / "product.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger("backtest_pipeline")
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    # Loading NautilusTrader (~1 s) is process start-up, not backtest work: the clock starts once
    # it is imported, as the bare-engine floor's does (`cli_s` of the benchmark times it all).
    from backtest_pipeline.engine.driver import run_engine

    wall0 = time.perf_counter()
    prefetch = _Prefetcher(ucs, config, days, progress, day_loader or load_day)
    try:
        log.info("run %s: %s over %s..%s on %s", run_id, config.name, days[0], days[-1], ucs.root)
        if write_results:
            # A stale result of an earlier attempt must not survive a failed re-run.
            _remove_results(ucs, run_id)
            ucs.upload_to_gcs_sync(
                t_res, layout.config_path(run_id), config.model_dump(mode="json")
            )
        from backtest_pipeline.run import shards as shards_mod

        plan = shards_mod.plan_shards(days, shards) if day_loader is None else []
        refusal = shards_mod.refusal(config) if len(plan) > 1 else None
        if refusal:
            log.warning("run %s: one engine instead of %d shards: %s", run_id, shards, refusal)
        if len(plan) > 1 and refusal is None:
            engine_out, reads = shards_mod.run_sharded(config, plan, ucs, workdir, progress)
        else:
            engine_out = run_engine(config, iter(prefetch), log_dir=workdir)
            reads = prefetch.summary()
        result = _build_result(
            config, days, run_id, engine_out, reads, wall0, created_at, locations
        )
        if write_results:
            _write_results(ucs, run_id, result, workdir)
        log.info("run %s completed in %.2f s", run_id, time.perf_counter() - wall0)
        return result
    except Exception as exc:
        log.error("run %s failed: %s\n%s", run_id, exc, traceback.format_exc())
        summary = {
            "run_id": run_id,
            "status": "FAILED",
            "created_at": created_at,
            "config": config.model_dump(mode="json"),
            "error": f"{type(exc).__name__}: {exc}",
            "days": [d.isoformat() for d in days],
            "inputs": [i.as_dict() for i in prefetch.inputs],
            "execution_stats": {"wall_time_s": round(time.perf_counter() - wall0, 3)},
        }
        if write_results:
            try:
                _remove_results(ucs, run_id)
                _upload_log(ucs, run_id, workdir)
                ucs.upload_to_gcs_sync(t_res, layout.result_path(run_id, "summary.json"), summary)
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
    t_res = layout.target("results")
    error = f"{type(exc).__name__}: {exc}"
    summary = {
        "run_id": run_id,
        "status": "FAILED",
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config.model_dump(mode="json"),
        "error": error,
        "days": [d.isoformat() for d in days],
        "inputs": [],
        "execution_stats": {},
    }
    _remove_results(ucs, run_id)
    ucs.upload_to_gcs_sync(
        t_res,
        layout.log_path(run_id),
        f"run {run_id} failed before the backtest started\n{error}\n{''.join(traceback.format_exception(exc))}",
        format="text",
    )
    ucs.upload_to_gcs_sync(t_res, layout.result_path(run_id, "summary.json"), summary)
    return ucs.uri(t_res, layout.result_path(run_id, "summary.json"))


def _remove_results(ucs: UnifiedCloudService, run_id: str) -> None:
    t_res = layout.target("results")
    # summary.json first: without it, no reader treats the other objects as a finished run.
    for name in ("summary.json", *layout.RESULT_PARQUETS):
        ucs.delete_sync(t_res, layout.result_path(run_id, name))


def _upload_log(ucs: UnifiedCloudService, run_id: str, workdir: Path) -> None:
    parts = []
    for name in ("execution.log", "product.log"):
        f = workdir / name
        if f.exists():
            parts.append(f"===== {name} =====\n{f.read_text(errors='replace')}")
    ucs.upload_to_gcs_sync(
        layout.target("results"), layout.log_path(run_id), "\n".join(parts), format="text"
    )


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
        operations=out.operations,
        intervals=reads.intervals,
    )


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover
        return psutil.Process().memory_info().rss / 2**20


def result_tables(result: BacktestResult) -> dict[str, Any]:
    """The four Parquet outputs conformed to the exact schemas of spec/outputs.md."""
    return {
        "orders.parquet": results_mod.conform(result.orders, "orders"),
        "fills.parquet": results_mod.conform(result.fills, "fills"),
        "positions.parquet": results_mod.conform(result.positions, "positions"),
        "equity_curve.parquet": results_mod.conform(result.equity_curve, "equity_curve"),
    }


def _write_results(
    ucs: UnifiedCloudService, run_id: str, result: BacktestResult, workdir: Path
) -> None:
    t_res = layout.target("results")
    for name, table in result_tables(result).items():
        ucs.upload_to_gcs_sync(t_res, layout.result_path(run_id, name), table, format="parquet")
    _upload_log(ucs, run_id, workdir)
    ucs.upload_to_gcs_sync(t_res, layout.result_path(run_id, "summary.json"), result.summary)


def summary_json(result: BacktestResult) -> str:
    return json.dumps(result.summary, indent=2, default=str)
