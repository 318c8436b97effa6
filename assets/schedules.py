"""T+1: every day at a configurable UTC hour, yesterday's partitions for every active config.

One run per configuration (run config picks it; tags name config and strategy so that
``dagster.yaml``'s per-strategy tag limits apply and the Runs page filters by configuration).
A configuration whose inputs are not there yet is skipped here and picked up by the
``inputs_ready_sensor`` once they land, instead of launching a run that would fail.
"""

import os
from datetime import date, datetime, timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from assets.partitions import daily_partitions
from assets.sensors import missing_inputs
from backtest_pipeline.config import BacktestConfig
from launch import backtest_tags, k8s_config_tag
from resources.settings import active_config_names, load_config
from resources.ucs_resource import UCSResource

SCHEDULE_HOUR_UTC = int(os.environ.get("BACKTEST_SCHEDULE_HOUR_UTC", "2"))

backtest_job = define_asset_job(
    "backtest_job",
    selection="*",
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


def t_plus_1_requests(ucs: UCSResource, now: datetime) -> list[RunRequest] | SkipReason:
    """Requests for yesterday (relative to ``now``, UTC) of every active configuration that is ready."""
    day = (now - timedelta(days=1)).date()
    client = ucs.client()
    requests, waiting = [], []
    for name in active_config_names():
        config = load_config(name)
        missing = missing_inputs(client, config, day)
        if missing:
            waiting.append(f"{name}: {len(missing)} missing (e.g. {missing[0]})")
        else:
            requests.append(run_request(name, config, day, "t_plus_1"))
    if not requests:
        return SkipReason(
            f"{day}: no configuration has its inputs yet: "
            + "; ".join(waiting or ["no active configuration"])
        )
    return requests


@schedule(
    job=backtest_job,
    cron_schedule=f"0 {SCHEDULE_HOUR_UTC} * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)
def t_plus_1_schedule(
    context: ScheduleEvaluationContext, ucs: UCSResource
) -> list[RunRequest] | SkipReason:
    """Yesterday's partition of every active configuration, at BACKTEST_SCHEDULE_HOUR_UTC (default 02:00)."""
    now = context.scheduled_execution_time or datetime.now()
    return t_plus_1_requests(ucs, now)
