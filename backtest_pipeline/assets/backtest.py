"""Group ``backtest``: one backtest over the run's days, and its result objects.

``backtest_run`` runs the whole range of the run as ONE backtest (state carried across days) in
a spawned process that reads the trades from the Nautilus catalogs. The result assets are the
run's objects at their exact results paths (``backtest_results/{run_id}/…``): their values are
:class:`RunArtifact` s that the UCS IO manager stores there, with a pointer per covered day.
"""

from typing import Any

import polars as pl
from dagster import AssetExecutionContext, MetadataValue, asset

from backtest_pipeline import layout
from backtest_pipeline.assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline.execution import report, stages
from backtest_pipeline.resources.io_manager import DayTables, RunArtifact
from backtest_pipeline.resources.settings import BacktestSettings, tag_run
from backtest_pipeline.resources.ucs_resource import UCSResource

GROUP = "backtest"
COMMON = {"partitions_def": daily_partitions, "backfill_policy": single_run, "group_name": GROUP}


def _run_metadata(art: RunArtifact) -> dict[str, Any]:
    return {
        "run_id": art.run_id,
        "start": art.days[0] if art.days else "",
        "end": art.days[-1] if art.days else "",
        "days_covered": len(art.days),
    }


@asset(**COMMON, kinds={"nautilus"})
def backtest_run(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
    funding_rates: DayTables,
    nautilus_catalog: DayTables,
) -> RunArtifact:
    """One backtest of the run configuration over all the run's days, in its own process."""
    client, config = ucs.client(), backtest.load()
    tag_run(context, backtest, config.strategy_id)
    days = days_of(context.partition_keys)
    missing = [d for d in days if d.isoformat() not in nautilus_catalog]
    if missing:
        raise RuntimeError(f"nautilus_catalog is missing for {missing}")
    bundles = [
        stages.make_bundle(
            client,
            config,
            backtest.scope,
            d,
            instruments[k],
            signals[k],
            signal_intervals[k],
            funding_rates[k],
        )
        for d in days
        for k in [d.isoformat()]
    ]
    run_id = config.run_id(days[0], days[-1])
    context.log.info(
        f"backtest {run_id}: {backtest.config_name} over {days[0]}..{days[-1]} ({len(days)} days)"
    )
    out = stages.run_backtest_isolated(client, config, bundles, run_id=run_id)
    summary = out["summary"]
    flat = report.flat_metrics(summary)
    locations = out["locations"]
    context.add_output_metadata(
        {
            "run_id": run_id,
            "config_name": backtest.config_name,
            "strategy_id": config.strategy_id,
            "start": days[0].isoformat(),
            "end": days[-1].isoformat(),
            "days_covered": len(days),
            "status": summary["status"],
            "net_pnl": flat.get("net_pnl"),
            "ticks_per_second": flat.get("ticks_per_second"),
            "ticks_processed": flat.get("ticks_processed"),
            "bytes_read": flat.get("bytes_read"),
            "bytes_available": flat.get("bytes_available"),
            "wall_time_s": flat.get("wall_time_s"),
            "results": MetadataValue.text(locations["summary.json"].rsplit("/", 1)[0] + "/"),
            "execution_log": MetadataValue.text(locations["execution.log"]),
        }
    )
    return RunArtifact(
        run_id, "backtest_config.json", summary["config"], [d.isoformat() for d in days]
    )


def _result_asset(name: str, doc: str):  # type: ignore[no-untyped-def]
    """orders / fills / positions / equity_curve: the run's Parquet object, with its row count."""

    @asset(name=name.removesuffix(".parquet"), **COMMON, kinds={"parquet"}, description=doc)
    def _asset(
        context: AssetExecutionContext, ucs: UCSResource, backtest_run: RunArtifact
    ) -> RunArtifact:
        client = ucs.client()
        table = stages.read_result_table(client, backtest_run.run_id, name)
        context.add_output_metadata(
            {**_run_metadata(backtest_run), "dagster/row_count": table.num_rows}
        )
        return RunArtifact(backtest_run.run_id, name, table, backtest_run.days)

    return _asset


orders = _result_asset(
    "orders.parquet", "One row per order of the run (OMS view), with its operation."
)
fills = _result_asset("fills.parquet", "One row per fill of the run.")
positions = _result_asset(
    "positions.parquet", "The position timeline: every fill and equity sample while open."
)
equity_curve = _result_asset(
    "equity_curve.parquet", "Portfolio value on the equity grid and at every fill."
)


@asset(**COMMON, kinds={"json"})
def backtest_summary(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest_run: RunArtifact,
    equity_curve: RunArtifact,
) -> RunArtifact:
    """``summary.json`` of the run: PnL, metrics and execution stats, with an equity plot."""
    client = ucs.client()
    summary = client.download_from_gcs_sync(
        layout.target("results"), layout.result_path(backtest_run.run_id, "summary.json")
    )
    flat = report.flat_metrics(summary)
    equity = pl.from_arrow(equity_curve.data)
    assert isinstance(equity, pl.DataFrame)
    md_table = "| metric | value |\n| --- | --- |\n" + "\n".join(
        f"| {k} | {v} |" for k, v in flat.items()
    )
    context.add_output_metadata(
        {
            **_run_metadata(backtest_run),
            **{k: v for k, v in flat.items() if isinstance(v, int | float) and v is not None},
            "metrics": MetadataValue.md(md_table),
            "equity_curve": MetadataValue.md(report.equity_markdown(equity, backtest_run.run_id)),
            "summary": MetadataValue.text(
                client.uri(
                    layout.target("results"),
                    layout.result_path(backtest_run.run_id, "summary.json"),
                )
            ),
        }
    )
    return RunArtifact(backtest_run.run_id, "summary.json", summary, backtest_run.days)
