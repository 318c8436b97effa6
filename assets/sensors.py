"""Wait for a day's inputs instead of failing: launch a configuration's day once they exist.

The sensor looks at the last ``BACKTEST_SENSOR_LOOKBACK_DAYS`` complete UTC days (default 3) for
every active configuration. A (configuration, day) is requested once its instruments, signals
and ticks objects exist and no run of it exists yet; while any is missing the sensor returns a
``SkipReason`` that names what it waits for. Run keys are those of the T+1 schedule
(``{config}:{day}``), and runs already launched by the schedule are found by their tags.
"""

import os
from datetime import UTC, date, datetime, timedelta

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.jobs import run_request
from backtest_pipeline.config import active_config_names, load_config
from backtest_pipeline.run.inputs import missing_inputs
from resources.ucs_resource import UCSResource

LOOKBACK_DAYS = int(os.environ.get("BACKTEST_SENSOR_LOOKBACK_DAYS", "3"))


def _already_run(context: SensorEvaluationContext, config_name: str, day: date) -> bool:
    records = context.instance.get_run_records(
        RunsFilter(
            tags={"backtest/config": config_name, "dagster/partition": day.isoformat()},
            statuses=[
                s
                for s in DagsterRunStatus
                if s not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
            ],
        ),
        limit=1,
    )
    return bool(records)


def ready_requests(
    context: SensorEvaluationContext, ucs: UCSResource, today: date
) -> SensorResult | SkipReason:
    client = ucs.client()
    requests, waiting = [], []
    days = [today - timedelta(days=i) for i in range(LOOKBACK_DAYS, 0, -1)]
    for name in active_config_names():
        config = load_config(name)
        for day in days:
            if _already_run(context, name, day):
                continue
            missing = missing_inputs(client, config, day)
            if missing:
                waiting.append(
                    f"{name} {day}: waiting for {len(missing)} object(s), e.g. {missing[0]}"
                )
            else:
                requests.append(run_request(name, config, day, "inputs_ready"))
    if not requests:
        return SkipReason(
            "; ".join(waiting) if waiting else "every configuration's recent days have run"
        )
    return SensorResult(run_requests=requests)


@sensor(
    job_name="backtest_job",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.STOPPED,
)
def inputs_ready_sensor(
    context: SensorEvaluationContext, ucs: UCSResource
) -> SensorResult | SkipReason:
    """Requests (configuration, day) runs whose inputs have landed; skips, naming them, until then."""
    return ready_requests(context, ucs, datetime.now(UTC).date())
