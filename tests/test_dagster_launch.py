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


def test_chunks_as_runs_plan_one_run_per_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    """``--as-runs``: one run of the chunk job per chunk (the plan's count), sharing a backfill
    id, each run config accepted by the job; the stitch job accepts the same backtest's config
    without the chunk index; without --chunk/--shards there is nothing to queue as runs."""
    from dagster import validate_run_config

    from backtest_pipeline.config import load_config
    from backtest_pipeline.run import shards
    from definitions import defs

    config = load_config("demo")
    (spec,) = launch.plan(["demo"], "2024-01-30", "2024-03-02", chunk="month", as_runs=True)
    assert spec.job_name == launch.CHUNK_JOB_NAME
    runs = spec.runs(config, "b1")
    assert len(runs) == 3 == launch.shard_count(config, spec)
    job = defs.get_job_def(launch.CHUNK_JOB_NAME)
    for i, (cfg, tags) in enumerate(runs):
        validate_run_config(job, cfg)
        op = cfg["ops"][launch.CHUNK_OP]["config"]
        assert op == {"start": "2024-01-30", "end": "2024-03-02", "chunk": "month",
                      "backfill": "b1", "chunks": 3, "index": i}  # fmt: skip
        assert tags == {
            launch.BACKFILL_TAG: "b1",
            launch.CHUNK_TAG: str(i),
            launch.CHUNKS_TAG: "3",
            launch.RUN_ID_TAG: config.run_id("2024-01-30", "2024-03-02"),
        }
    stitch = {k: v for k, v in runs[0][0]["ops"][launch.CHUNK_OP]["config"].items() if k != "index"}
    validate_run_config(
        defs.get_job_def(launch.STITCH_JOB_NAME),
        {"resources": runs[0][0]["resources"], "ops": {launch.STITCH_OP: {"config": stitch}}},
    )
    # even shards as runs: as many as plan_shards makes (at least 3 days each)
    (even,) = launch.plan(["demo"], "2024-01-01", "2024-01-08", shards=4, as_runs=True)
    days = launch.layout.days_between("2024-01-01", "2024-01-08")
    assert len(even.runs(config, "b2")) == len(shards.plan_shards(days, 4)) == 2
    # a plain spec is still one run
    (plain,) = launch.plan(["demo"], "2024-01-01", "2024-01-03")
    assert plain.runs(config, "b3") == [(plain.run_config(), {})]
    with pytest.raises(ValueError, match="--chunk or --shards"):
        launch.plan(["demo"], "2024-01-01", "2024-01-03", as_runs=True)
    argv = ["--configs", "demo", "--start", "2024-01-30", "--end", "2024-03-02",
            "--chunk", "month", "--as-runs", "--dry-run"]  # fmt: skip
    assert launch.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"demo\t2024-01-30\t2024-03-02\t33 days\t{launch.CHUNK_JOB_NAME}"
        f"\t3 chunk runs + 1 {launch.STITCH_JOB_NAME} run"
    ]
