"""Planning of sweeps/backfills (chunks, tags) and run tags on runs launched without them."""

from datetime import date, timedelta

import pytest
from _dagster_helpers import resources, write_sample
from dagster import DagsterInstance, load_assets_from_modules, materialize

import launch
from assets import inputs
from backtest_pipeline.storage.ucs import UnifiedCloudService


@pytest.mark.parametrize("chunk", ["none", "year", "quarter", "month", "day"])
@pytest.mark.parametrize(
    ("start", "end"),
    [("2020-01-01", "2024-12-30"), ("2023-02-27", "2023-03-02"), ("2024-12-31", "2024-12-31")],
)
def test_chunks_cover_the_range_exactly_once(chunk: launch.Chunk, start: str, end: str) -> None:
    chunks = launch.chunk_range(start, end, chunk)
    days = [c[0] + timedelta(days=i) for c in chunks for i in range((c[1] - c[0]).days + 1)]
    s, e = date.fromisoformat(start), date.fromisoformat(end)
    assert days == [s + timedelta(days=i) for i in range((e - s).days + 1)]
    period = {
        "year": lambda d: d.year,
        "quarter": lambda d: (d.year, (d.month - 1) // 3),
        "month": lambda d: (d.year, d.month),
        "day": lambda d: d,
    }
    for a, b in chunks:  # a chunk never crosses a calendar boundary of its kind
        if chunk != "none":
            assert period[chunk](a) == period[chunk](b)


def test_plan_and_run_specs() -> None:
    """A chunked backfill is one run (one backtest) per configuration of the sharded job, whose
    run config the job accepts; an unchunked range stays one run of the asset job."""
    from dagster import validate_run_config

    from definitions import defs

    specs = launch.plan(["demo", "two_venues"], "2024-01-01", "2024-03-31", chunk="month")
    assert [s.config_name for s in specs] == ["demo", "two_venues"]
    assert {s.job_name for s in specs} == {launch.SHARDED_JOB_NAME}
    assert specs[0].partition_tags() == {
        "backtest/start": "2024-01-01",
        "backtest/end": "2024-03-31",
    }
    cfg = specs[0].run_config()
    assert cfg["ops"]["plan_shards"]["config"] == {
        "start": "2024-01-01",
        "end": "2024-03-31",
        "chunk": "month",
    }
    job = defs.get_job_def(launch.SHARDED_JOB_NAME)
    validate_run_config(job, cfg)
    validate_run_config(
        job, launch.plan(["demo"], "2024-01-01", "2024-03-31", shards=4)[0].run_config()
    )
    plain = launch.plan(["demo"], "2024-01-01", "2024-01-03")[0]
    assert plain.job_name == launch.JOB_NAME and plain.partition_tags() == {
        launch.RANGE_START: "2024-01-01",
        launch.RANGE_END: "2024-01-03",
    }
    one = launch.RunSpec("demo", date(2024, 1, 2), date(2024, 1, 2))
    assert one.partition_tags() == {"dagster/partition": "2024-01-02"}
    assert one.run_config() == {"resources": {"backtest": {"config": {"config_name": "demo"}}}}
    with pytest.raises(ValueError, match="before start"):
        launch.chunk_range("2024-01-02", "2024-01-01", "year")


def test_untagged_run_gets_config_and_strategy_tags(local_ucs: UnifiedCloudService) -> None:
    """A run that chose its configuration by run config only (UI launchpad, CLI) is tagged by
    the assets, so the Runs page filters it by configuration like scheduled runs."""
    write_sample(local_ucs, days=1)
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [a for a in load_assets_from_modules([inputs]) if a.key.path[0] == "signals"],
        resources=resources(local_ucs.root),
        instance=instance,
        partition_key="2024-01-01",
    )
    assert result.success
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["backtest/config"] == "demo"
    assert tags["backtest/strategy"] == "demo-strategy"
