"""Group ``catalog``: the day's tick slices as a NautilusTrader ``ParquetDataCatalog``."""

import shutil
from datetime import date
from typing import Any

import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, asset

from assets import runtime
from assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run import runner, stages
from backtest_pipeline.run import worker as workers
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import DayTables, LazyDays
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource


def _match(
    client: UnifiedCloudService,
    backtest: BacktestSettings,
    day: date,
    slices: str | None,
    instruments: pa.Table,
    books: dict[str, stages.BookRequest],
) -> tuple[Any, ...]:
    """The arguments of a day's catalog task (see :func:`prebuild_day`)."""
    return (client.root, day, backtest.scope, slices, instruments, books)


def prebuild_day(
    context: AssetExecutionContext,
    client: UnifiedCloudService,
    backtest: BacktestSettings,
    config: BacktestConfig,
    market_data: dict[str, Any],
    day: date,
    slices: str,
    instruments: pa.Table,
    intervals: pa.Table,
    table: pa.Table | None = None,
) -> bool:
    """Start the catalog of ``day`` in the run's worker as soon as its slices are stored.

    Called by ``tick_slices`` with each day the IO manager has stored (``slices``: the
    object's path; ``table``: the slices it stored there), so that the catalog is written
    while the next day is fetched; this step later takes it if the task's arguments are the
    ones it would use itself (the same stored object among them). True if started
    (``runtime.prebuild``).

    Who writes what: this process writes the trade files from ``table``
    (``stages.stage_trades``: NumPy and Arrow, a tenth of a second a day), and the worker adds
    the books, the instruments and the manifest. The worker also runs the backtest started
    ahead, on the catalogs as they come: every catalog second it spends is a second the engine
    waits, while this process would only wait for the next step.
    """
    books = stages.book_requests(config, market_data, day, instruments, intervals)
    match = _match(client, backtest, day, slices, instruments, books)
    if not runtime.can_prebuild(context, runtime.CATALOG_STEP):
        return False  # the step builds the day itself: nothing staged for nobody
    staged = stages.stage_trades(day, table, instruments) if table is not None else None
    return runtime.prebuild(
        context,
        runtime.CATALOG_STEP,
        day.isoformat(),
        match,
        workers.catalog_task,
        client.root,
        day,
        backtest.scope,
        slices,
        instruments,
        books,
        staged,
        cleanup=(lambda: shutil.rmtree(staged.directory, ignore_errors=True)) if staged else None,
    )


def _build_day(
    run_id: str,
    client: UnifiedCloudService,
    backtest: BacktestSettings,
    day: date,
    tick_slices: DayTables,
    instruments: pa.Table,
    books: dict[str, stages.BookRequest],
) -> dict[str, Any]:
    """A day's catalog built now: by the run's backtest process if it is warm, else here.

    The warm process has NautilusTrader loaded (this process then never loads it) and reads the
    day's stored slices itself; while it is still starting, this step does the work itself
    rather than wait for it.
    """
    k = day.isoformat()
    worker = workers.ready_worker(run_id)
    if worker is None:
        return stages.build_catalog(client, day, backtest.scope, tick_slices[k], instruments, books)
    where = tick_slices.location(k) if isinstance(tick_slices, LazyDays) else None
    runtime.note_worker_day(run_id, runtime.CATALOG_STEP, k)  # a backtest started ahead reads it
    return worker.call(
        workers.catalog_task,
        client.root,
        day,
        backtest.scope,
        where or tick_slices[k],
        instruments,
        books,
    )


@asset(
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="catalog",
    kinds={"parquet"},
)
def nautilus_catalog(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    tick_slices: DayTables,
    instruments: DayTables,
    signal_intervals: DayTables,
) -> DayTables:
    """Writes the catalog of each day (vectorised) under ``nautilus_catalog/by_date/day-…/{config}/``.

    Trades, and the quotes or 10-level snapshots of every instrument the configuration's
    ``market_data`` puts on a book (resolved over the run's days as `backtest run` resolves it),
    over the same intervals, each with the row in force before them. The stored value is the
    per-day manifest (instrument → Nautilus id, rows, file); the catalog itself is what
    ``backtest_run`` reads.
    """
    client, config = ucs.client(), backtest.load()
    days = days_of(context.partition_keys)
    market_data = runner.market_data_for(client, config, days)
    # Days that tick_slices handed the run's worker as it fetched them are taken as built.
    run_id = context.run.run_id
    out, uris, rows, book_rows, size, ahead = {}, [], 0, 0, 0, 0
    for d in days:
        k = d.isoformat()
        inst = instruments[k]  # a lazy input: read once
        books = stages.book_requests(config, market_data, d, inst, signal_intervals[k])
        where = tick_slices.location(k) if isinstance(tick_slices, LazyDays) else None
        manifest = runtime.take_prebuilt(
            run_id, runtime.CATALOG_STEP, k, _match(client, backtest, d, where, inst, books)
        )
        if manifest is None:
            manifest = _build_day(run_id, client, backtest, d, tick_slices, inst, books)
        else:
            ahead += 1
        out[k] = stages.manifest_table(manifest)
        uris.append(manifest["uri"])
        rows += manifest["rows"]
        book_rows += sum(
            b["rows"] for e in manifest["instruments"].values() for b in e.get("books", {}).values()
        )
        size += manifest["bytes"]
    context.log.debug(f"{ahead} of {len(days)} days built while tick_slices fetched")
    context.add_output_metadata(
        {
            "ticks": rows,
            "book_rows": book_rows,
            "market_data": MetadataValue.json(dict(market_data)),
            "catalog_bytes": size,
            "catalog": MetadataValue.text(uris[-1]),
            "days": len(uris),
        }
    )
    return out
