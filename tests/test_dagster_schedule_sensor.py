"""T+1 schedule and the inputs-ready sensor, with Dagster's test helpers."""

import warnings
from datetime import UTC, date, datetime

import pytest
from _dagster_helpers import write_sample
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

from assets.jobs import backtest_job
from assets.schedules import t_plus_1_schedule
from assets.sensors import inputs_ready_sensor, ready_requests
from backtest_pipeline.config import load_config
from backtest_pipeline.run.inputs import missing_inputs
from backtest_pipeline.storage.ucs import UnifiedCloudService
from definitions import defs
from resources.ucs_resource import UCSResource

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(autouse=True)
def _active(monkeypatch: pytest.MonkeyPatch) -> None:
    # demo has sample data; two_venues also needs BYBIT ticks that the sample lacks
    monkeypatch.setenv("BACKTEST_ACTIVE_CONFIGS", "demo,two_venues")


def test_definitions_register_schedule_sensor_and_job() -> None:
    assert defs.get_schedule_def("t_plus_1_schedule").cron_schedule == "0 2 * * *"
    assert defs.get_sensor_def("inputs_ready_sensor") is not None
    assert defs.get_job_def("backtest_job").partitions_def is not None
    assert backtest_job.name == "backtest_job"


def test_schedule_requests_yesterday_for_ready_configs(local_ucs: UnifiedCloudService) -> None:
    write_sample(local_ucs)
    ctx = build_schedule_context(
        scheduled_execution_time=datetime(2024, 1, 3, 2, 0, tzinfo=UTC),
        resources={"ucs": UCSResource(root=local_ucs.root)},
        repository_def=defs.get_repository_def(),
    )
    data = t_plus_1_schedule.evaluate_tick(ctx)
    reqs = data.run_requests or []
    assert [(r.partition_key, r.tags["backtest/config"]) for r in reqs] == [("2024-01-02", "demo")]
    req = reqs[0]
    assert req.run_key == "demo:2024-01-02"
    assert req.run_config == {"resources": {"backtest": {"config": {"config_name": "demo"}}}}
    assert req.tags["backtest/strategy"] == "demo-strategy"


def test_schedule_skips_when_inputs_are_missing(local_ucs: UnifiedCloudService) -> None:
    ctx = build_schedule_context(
        scheduled_execution_time=datetime(2024, 1, 3, 2, 0, tzinfo=UTC),
        resources={"ucs": UCSResource(root=local_ucs.root)},
        repository_def=defs.get_repository_def(),
    )
    data = t_plus_1_schedule.evaluate_tick(ctx)
    assert not data.run_requests
    assert "no configuration has its inputs yet" in (data.skip_message or "")


def test_missing_inputs_names_the_objects(local_ucs: UnifiedCloudService) -> None:
    write_sample(local_ucs, days=1)
    assert missing_inputs(local_ucs, load_config("demo"), date(2024, 1, 1)) == []
    missing = missing_inputs(local_ucs, load_config("two_venues"), date(2024, 1, 1))
    assert len(missing) == 1 and "BYBIT:PERPETUAL:BTC-USDT.parquet" in missing[0]
    assert len(missing_inputs(local_ucs, load_config("demo"), date(2024, 1, 5))) == 3


def test_sensor_waits_then_requests_and_does_not_repeat(local_ucs: UnifiedCloudService) -> None:
    instance = DagsterInstance.ephemeral()
    ucs_res = UCSResource(root=local_ucs.root)
    ctx = build_sensor_context(
        instance=instance, resources={"ucs": ucs_res}, repository_def=defs.get_repository_def()
    )
    waiting = ready_requests(ctx, ucs_res, date(2024, 1, 4))
    assert isinstance(waiting, SkipReason) and "waiting for" in (waiting.skip_message or "")

    write_sample(local_ucs, days=2)  # 2024-01-01 and 02 land; 03 is still late
    result = ready_requests(ctx, ucs_res, date(2024, 1, 4))
    assert not isinstance(result, SkipReason)
    keys = [
        (r.partition_key, r.tags["backtest/config"], r.tags["backtest/trigger"])
        for r in result.run_requests
    ]
    assert keys == [("2024-01-01", "demo", "inputs_ready"), ("2024-01-02", "demo", "inputs_ready")]

    # a (config, day) that already has a run is not requested again
    instance.add_run(
        DagsterRun(
            job_name="backtest_job",
            run_id="r1",
            status=DagsterRunStatus.SUCCESS,
            tags={"backtest/config": "demo", "dagster/partition": "2024-01-01"},
        )
    )
    again = ready_requests(ctx, ucs_res, date(2024, 1, 4))
    assert [r.partition_key for r in again.run_requests] == ["2024-01-02"]


def test_sensor_evaluates_with_dagster_helpers(local_ucs: UnifiedCloudService) -> None:
    ctx = build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        resources={"ucs": UCSResource(root=local_ucs.root)},
        repository_def=defs.get_repository_def(),
    )
    data = inputs_ready_sensor.evaluate_tick(ctx)
    assert not data.run_requests and data.skip_message
