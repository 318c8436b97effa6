"""Group ``comparison``: the runs of a sweep's batch side by side, as in ``backtest compare``.

Not partitioned and outside ``backtest_job``: a batch is a set of runs over whatever days its
sweep chose, found through ``batches/{batch}/batch.json``. The asset writes the same objects as
the CLI (``comparisons/{batch}/runs.parquet`` and ``comparison.html``); its value stays there,
so it returns a ``MaterializeResult`` and no IO manager is involved.
"""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from backtest_pipeline.comparison import store
from backtest_pipeline.comparison import summary as cmp_summary
from backtest_pipeline.comparison import table as cmp
from resources.ucs_resource import UCSResource

GROUP = "comparison"


class ComparisonConfig(Config):
    batch: str = Field(description="Batch id of a sweep (backtest sweep --batch NAME)")


@asset(group_name=GROUP, kinds={"parquet", "html"})
def run_comparison(
    context: AssetExecutionContext, config: ComparisonConfig, ucs: UCSResource
) -> MaterializeResult:
    """The leaderboard of a batch: ``comparisons/{batch}/runs.parquet`` and ``comparison.html``."""
    client = ucs.client()
    comparison = cmp.batch_comparison(client, config.batch)
    locations = store.write_comparison(client, comparison)
    runs = comparison.runs
    done = runs.filter(runs["status"] == "COMPLETED")
    best = done.row(0, named=True) if done.height else None
    # the Runs page filters comparisons by batch, as it does the batch's backtest runs
    context.instance.add_run_tags(context.run.run_id, {"backtest/batch": config.batch})
    metadata = {
        "batch": config.batch,
        "runs": runs.height,
        "runs_completed": done.height,
        "leaderboard": MetadataValue.md(cmp_summary.leaderboard_markdown(comparison)),
        "plot": MetadataValue.md(cmp_summary.plot_markdown(comparison)),
        "comparison_html": MetadataValue.url(locations["comparison.html"]),
        "runs_parquet": MetadataValue.url(locations["runs.parquet"]),
        "differing_keys": MetadataValue.json(comparison.differing_keys),
    }
    if best is not None:
        metadata["best_run_id"] = best["run_id"]
        metadata["best_net_pnl"] = MetadataValue.float(round(best["net_pnl"], 2))
        if best["sharpe_ratio"] is not None:
            metadata["best_sharpe_ratio"] = MetadataValue.float(round(best["sharpe_ratio"], 2))
    return MaterializeResult(metadata=metadata)
