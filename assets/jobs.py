"""The backtest job and the one way a (configuration, day) run is requested.

Shared by the T+1 schedule and the inputs sensor, so that both launch identical runs (same run
key, run config and tags) and a day launched by one is recognised by the other.
"""

from datetime import date

from dagster import AssetSelection, RunRequest, define_asset_job

from assets.partitions import daily_partitions
from backtest_pipeline.config import BacktestConfig
from launch import backtest_tags, k8s_config_tag

backtest_job = define_asset_job(
    "backtest_job",
    # every day-partitioned asset; the comparison of a batch is a job of its own
    selection=AssetSelection.all() - AssetSelection.groups("comparison"),
    partitions_def=daily_partitions,
    description="Inputs → catalog → one backtest over the run's days (run config picks the configuration).",
)


def run_request(config_name: str, config: BacktestConfig, day: date, source: str) -> RunRequest:
    """The run of one configuration over one day (T+1 and catch-up runs share the run key)."""
    return RunRequest(
        run_key=f"{config_name}:{day.isoformat()}",
        partition_key=day.isoformat(),
        run_config={"resources": {"backtest": {"config": {"config_name": config_name}}}},
        # the same tags as runs of launch (pod size on Kubernetes included)
        tags={
            **backtest_tags(config_name, config.strategy_id, source),
            **k8s_config_tag(config.full_day),
        },
    )


comparison_job = define_asset_job(
    "comparison_job",
    selection=AssetSelection.groups("comparison"),
    description="The runs of a sweep's batch compared (run config: ops.run_comparison.config.batch).",
)
