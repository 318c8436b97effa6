"""T+1: every day at a configurable UTC hour, yesterday's partitions for every active config.

One run per configuration (run config picks it; tags name config and strategy so that
``dagster.yaml``'s per-strategy tag limits apply and the Runs page filters by configuration).
A configuration whose inputs are not there yet is skipped here and picked up by the
``inputs_ready_sensor`` once they land, instead of launching a run that would fail.
"""

import os
from datetime import datetime, timedelta

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from assets.jobs import backtest_job, run_request
from backtest_pipeline.config import active_config_names, load_config
from backtest_pipeline.run.inputs import missing_inputs
from resources.ucs_resource import UCSResource

SCHEDULE_HOUR_UTC = int(os.environ.get("BACKTEST_SCHEDULE_HOUR_UTC", "2"))


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
