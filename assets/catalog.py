"""Group ``catalog``: the day's tick slices as a NautilusTrader ``ParquetDataCatalog``."""

from dagster import AssetExecutionContext, MetadataValue, asset

from assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline.run import stages
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
) -> DayTables:
    """Writes the catalog of each day (vectorised) under ``nautilus_catalog/by_date/day-…/{config}/``.

    The stored value is the per-day manifest (instrument → Nautilus id, rows, file); the catalog
    itself is what ``backtest_run`` reads.
    """
    client = ucs.client()
    # The run's backtest process, once warm, writes the catalogs: it has NautilusTrader loaded
    # (this process then never loads it) and reads each day's stored slices itself. While it is
    # still starting, this step does the work itself rather than wait for it.
    worker = workers.ready_worker(context.run.run_id)
    out, uris, rows, size = {}, [], 0, 0
    for d in days_of(context.partition_keys):
        k = d.isoformat()
        if worker is not None:
            where = tick_slices.location(k) if isinstance(tick_slices, LazyDays) else None
            manifest = worker.call(
                stages.build_catalog_task,
                client.root,
                d,
                backtest.scope,
                where or tick_slices[k],
                instruments[k],
            )
        else:
            manifest = stages.build_catalog(
                client, d, backtest.scope, tick_slices[k], instruments[k]
            )
        out[k] = stages.manifest_table(manifest)
        uris.append(manifest["uri"])
        rows += manifest["rows"]
        size += manifest["bytes"]
    context.add_output_metadata(
        {
            "ticks": rows,
            "catalog_bytes": size,
            "catalog": MetadataValue.text(uris[-1]),
            "days": len(uris),
        }
    )
    return out
