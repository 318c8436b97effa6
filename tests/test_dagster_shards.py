"""``sharded_backtest_job``: plan → shard steps → stitch gives the one-engine run byte for byte.

The shard results and the step outputs must go through the results bucket (``shards/…``) and be
removed once the run's results are written; a chunked run (one shard per calendar month) is one
backtest across its chunk boundaries, including boundaries that hold a position.
"""

import hashlib
import shutil
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    DagsterInstance,
    build_reconstructable_job,
    execute_job,
    instance_for_test,
)

from assets import shards as shard_assets
from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run import shards
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.settings import BacktestSettings
from resources.step_io import UCSPickleIOManager
from resources.ucs_resource import UCSResource

START = date(2024, 3, 1)
DAYS = 8
END = START + timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sharded-job")
    generate_sample_data(UnifiedCloudService(str(path)), START, DAYS, trades_per_day=5_000, seed=3)
    return path


def digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    t = layout.target("results")
    return {
        n: hashlib.sha256(ucs.download_bytes_sync(t, layout.result_path(run_id, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }


def run_config(start: date, end: date, **op: object) -> dict[str, object]:
    cfg = {"start": start.isoformat(), "end": end.isoformat(), **op}
    return {"ops": {"plan_shards": {"config": cfg}}}


def _resources(root: str) -> dict[str, object]:
    ucs = UCSResource(root=root)
    return {
        "ucs": ucs,
        "backtest": BacktestSettings(config_name="demo"),
        shard_assets.IO_MANAGER_KEY: UCSPickleIOManager(ucs=ucs),
    }


def test_plan_chunks_follow_the_calendar_with_warm_up_days() -> None:
    days = layout.days_between("2024-01-30", "2024-03-02")
    plans = shards.plan_chunks(days, [(date(2024, 1, 30), date(2024, 1, 31)),
                                      (date(2024, 2, 1), date(2024, 2, 29)),
                                      (date(2024, 3, 1), date(2024, 3, 2))])  # fmt: skip
    assert [d for p in plans for d in p.own_days] == days
    assert [p.warmup for p in plans] == [0, 1, 1] and [p.final for p in plans][-1]
    assert plans[1].days[0] == date(2024, 1, 31)
    with pytest.raises(ValueError, match="do not cover"):
        shards.plan_chunks(days, [(date(2024, 1, 30), date(2024, 2, 28))])


def test_step_output_paths_stay_under_the_shards_prefix() -> None:
    path = layout.step_output_path("0f1e-aa", "run_shard[s1]", "result")
    assert path == "shards/steps/0f1e-aa/run_shard_s1_/result.pkl"
    assert layout.shard_result_path("BT-1", "abc", 2, "result.pkl") == (
        "shards/BT-1/abc/shard-2/result.pkl"
    )
    with pytest.raises(layout.LayoutError):
        layout.shards_prefix("BT-1", "../x")


@pytest.mark.slow  # one-engine run + a 2-shard run of engine processes: ~1 min
def test_sharded_job_in_process_equals_the_one_engine_run(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(data, root)
    ucs = UnifiedCloudService(str(root))
    config = load_config("demo")
    run_id = config.run_id(START, END)
    run_backtest(config, START, END, ucs=ucs)
    want = digests(ucs, run_id)
    result = shard_assets.sharded_backtest_job.execute_in_process(
        run_config=run_config(START, END, shards=2),
        resources=_resources(str(root)),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    assert result.output_for_node("stitch_shards") == run_id
    assert digests(ucs, run_id) == want
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(run_id, "summary.json")
    )
    info = summary["execution_stats"]["shards"]
    assert summary["status"] == "COMPLETED"
    assert info["count"] + len(info["merged_boundaries"]) == 2, info
    # the shard results were handed over through the bucket and removed after the stitch
    leftovers = ucs.list_files_sync(layout.target("results"), f"shards/{run_id}/")
    assert leftovers == []
    steps = ucs.list_files_sync(layout.target("results"), f"shards/steps/{result.run_id}/")
    assert any("run_shard_s1_" in p for p in steps), steps


def _never_flat(ucs: UnifiedCloudService, config: BacktestConfig, days: list[date]) -> None:
    """Signals that always hold a long position: every chunk boundary carries one."""
    t_sig = layout.target("signals")
    for day in days:
        path = layout.signals_path(day, config.strategy_id)
        sig = ucs.download_from_gcs_sync(t_sig, path)
        sig = sig.with_columns((pl.col("target_position").abs() + 0.1).round(3))
        ucs.upload_to_gcs_sync(t_sig, path, sig, format="parquet")


@pytest.mark.slow  # multiprocess executor: a process per step
def test_chunked_run_across_month_boundaries_holding_positions(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Month chunks 02-27..03-03 on the multiprocess executor (each step its own process, the
    outputs through the bucket), with a position held at the 03-01 boundary."""
    root = tmp_path / "root"
    start = date(2024, 2, 27)
    generate_sample_data(UnifiedCloudService(str(root)), start, 6, trades_per_day=5_000, seed=4)
    ucs = UnifiedCloudService(str(root))
    config = load_config("demo")
    end = start + timedelta(days=5)
    _never_flat(ucs, config, layout.days_between(start, end))
    run_id = config.run_id(start, end)
    seq = run_backtest(config, start, end, ucs=ucs)
    boundary_ns = layout.day_bounds_ns(date(2024, 3, 1))[0]
    held = seq.positions.filter(pl.col("ts_event") < boundary_ns).tail(1)
    assert held.height == 1 and held["quantity"][0] > 0  # a position crosses the boundary
    want = digests(ucs, run_id)
    ucs.delete_sync(layout.target("results"), layout.result_path(run_id, "orders.parquet"))
    monkeypatch.setenv("BACKTEST_STORAGE_ROOT", str(root))
    with instance_for_test() as instance:
        result = execute_job(
            build_reconstructable_job("definitions", "sharded_job"),
            instance=instance,
            run_config=run_config(start, end, chunk="month"),
        )
        assert result.success
    assert digests(ucs, run_id) == want
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(run_id, "summary.json")
    )
    info = summary["execution_stats"]["shards"]
    assert info["count"] + len(info["merged_boundaries"]) == 2, info


@pytest.mark.slow  # the failing shard is retried twice (RetryPolicy), each an engine process
def test_a_failing_shard_fails_the_run_cleanly(data: Path, tmp_path: Path) -> None:
    """A shard whose ticks object is corrupt: retried, then the run fails with the object named
    in a FAILED summary, no result Parquet left (a stale earlier result removed too)."""
    root = tmp_path / "root"
    shutil.copytree(data, root)
    ucs = UnifiedCloudService(str(root))
    config = load_config("demo")
    run_id = config.run_id(START, END)
    run_backtest(config, START, END, ucs=ucs)  # a complete earlier result that must not survive
    bad = layout.trades_path(END - timedelta(days=1), config.instruments[0])
    ucs.upload_to_gcs_sync(layout.target("ticks"), bad, b"PAR1 truncated", format="bytes")
    result = shard_assets.sharded_backtest_job.execute_in_process(
        run_config=run_config(START, END, shards=2),
        resources=_resources(str(root)),
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failed = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failed] == ["run_shard[s1]"]
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    t = layout.target("results")
    summary = ucs.download_from_gcs_sync(t, layout.result_path(run_id, "summary.json"))
    assert summary["status"] == "FAILED" and bad in summary["error"]
    for name in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t, layout.result_path(run_id, name))
