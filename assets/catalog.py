"""Group ``catalog``: the day's tick slices as a NautilusTrader ``ParquetDataCatalog``."""

from dagster import AssetExecutionContext, MetadataValue, asset

from assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline.run import runner, stages
from backtest_pipeline.run import worker as workers
from resources.io_manager import DayTables, LazyDays
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource


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
    # The run's backtest process, once warm, writes the catalogs: it has NautilusTrader loaded
    # (this process then never loads it) and reads each day's stored slices itself. While it is
    # still starting, this step does the work itself rather than wait for it.
    worker = workers.ready_worker(context.run.run_id)
    out, uris, rows, book_rows, size = {}, [], 0, 0, 0
    for d in days:
        k = d.isoformat()
        books = stages.book_requests(config, market_data, d, instruments[k], signal_intervals[k])
        if worker is not None:
            where = tick_slices.location(k) if isinstance(tick_slices, LazyDays) else None
            manifest = worker.call(
                stages.build_catalog_task,
                client.root,
                d,
                backtest.scope,
                where or tick_slices[k],
                instruments[k],
                books,
            )
        else:
            manifest = stages.build_catalog(
                client, d, backtest.scope, tick_slices[k], instruments[k], books
            )
        out[k] = stages.manifest_table(manifest)
        uris.append(manifest["uri"])
        rows += manifest["rows"]
        book_rows += sum(
            b["rows"] for e in manifest["instruments"].values() for b in e.get("books", {}).values()
        )
        size += manifest["bytes"]
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
