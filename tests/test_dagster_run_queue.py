"""100 backtest runs through the real run queue: ``dagster.yaml`` limits, ``dagster-daemon``,
``DefaultRunLauncher`` (one process per run), as a sweep of 100 configurations would run.

Checks that all 100 complete, that none is lost or duplicated, that at most 2 runs (and 1 per
strategy) were ever in flight — while 2 actually were, so the limit is exercised — and that every
run's results sit under its own backtest ``run_id``. Also: a five-year backfill is planned as
yearly (or monthly) chunks covering every day once, and a chunked range crossing a month boundary
is queued with partition-range tags and executes as one run (one backtest) per chunk.

Budget: a tiny run takes ~12 s of wall time here, so 100 runs at 2 in flight take ~10.5 min
(measured: 636 s for the whole test, 9.6 runs/min); the other two tests take ~40 s.
"""

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

import launch
import local_queue
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

DAY = "2024-01-01"
N_RUNS = 100
N_STRATEGIES = 4
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _sweep_configs(configs_dir: Path, n: int) -> list[str]:
    """``n`` variants of the demo configuration (latency, balance), over 4 strategies."""
    base = yaml.safe_load(DEMO.read_text())
    names = []
    configs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cfg = json.loads(json.dumps(base))
        cfg["name"] = f"sweep-{i:03d}"
        cfg["strategy_id"] = f"sweep-s{i % N_STRATEGIES}"
        venue = cfg["venues"]["BINANCE-FUTURES"]
        venue["latency"] = {"base_ms": 5.0 + i}
        venue["starting_balance"] = 100_000.0 + 1_000 * (i // N_STRATEGIES)
        (configs_dir / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
        names.append(cfg["name"])
    return names


@pytest.fixture
def queue_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A temp DAGSTER_HOME (the repo's dagster.yaml), storage root and configs dir, in os.environ
    so that the code server, the daemon and the run processes all see them.

    The instance's sqlite files go to tmpfs when there is one: each event is a committed sqlite
    transaction (~8 ms fsync on this disk vs 0.04 ms), ~200 per run; the test is about the
    queue, not the disk. The storage root (inputs, results) stays on disk."""
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.access(shm, os.W_OK)
    home = Path(tempfile.mkdtemp(prefix="dagster-home-", dir=shm)) if on_tmpfs else tmp_path / "h"
    root, configs = tmp_path / "root", tmp_path / "configs"
    local_queue.write_instance_yaml(home)
    for var, value in (
        ("DAGSTER_HOME", home),
        ("BACKTEST_STORAGE_ROOT", root),
        ("BACKTEST_CONFIGS_DIR", configs),
    ):
        monkeypatch.setenv(var, str(value))
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    yield {"home": home, "root": root, "configs": configs, "tmp": tmp_path}
    if on_tmpfs:
        shutil.rmtree(home, ignore_errors=True)


def test_hundred_runs_through_the_run_queue(queue_env: dict[str, Path]) -> None:
    t0 = time.monotonic()
    ucs = UnifiedCloudService(str(queue_env["root"]))
    for s in range(N_STRATEGIES):
        generate_sample_data(ucs, DAY, 1, trades_per_day=2_000, strategy_id=f"sweep-s{s}")
    names = _sweep_configs(queue_env["configs"], N_RUNS)

    with DagsterInstance.get() as instance:
        limits = instance.get_concurrency_config().run_queue_config
        assert limits is not None and limits.max_concurrent_runs == 2
        # the daemon starts dequeuing while the runs are still being created, as in real use
        with local_queue.daemon(queue_env["home"], queue_env["tmp"] / "daemon.log") as proc:
            run_ids = launch.submit(
                instance, launch.plan(names, DAY, DAY), trigger="test", batch="sweep-100"
            )
            assert len(set(run_ids)) == N_RUNS
            t_submitted = time.monotonic()
            statuses = local_queue.wait_for_runs(instance, run_ids, timeout_s=1500, proc=proc)
        t_done = time.monotonic()

        # all complete, none lost, none duplicated
        failed = [r for r, s in statuses.items() if s != DagsterRunStatus.SUCCESS]
        assert not failed, f"{len(failed)} runs did not succeed, e.g. {failed[:3]}"
        assert instance.get_runs_count() == N_RUNS
        by_config = {instance.get_run_by_id(r).tags["backtest/config"] for r in run_ids}
        assert by_config == set(names)

        # the limits held, and were reached (2 in flight, never 2 of one strategy)
        windows = local_queue.run_windows(instance, run_ids)
        assert local_queue.max_overlap(windows) == 2
        assert local_queue.max_overlap(windows, tag="backtest/strategy") == 1

        # every run's results under its own backtest run_id, exactly once
        backtest_ids = {}
        for rid in run_ids:
            mats = [
                e
                for e in instance.all_logs(rid, of_type=DagsterEventType.ASSET_MATERIALIZATION)
                if e.dagster_event.asset_key.path == ["backtest_run"]
            ]
            assert len(mats) == 1, rid
            meta = mats[0].dagster_event.materialization.metadata
            name = instance.get_run_by_id(rid).tags["backtest/config"]
            assert meta["config_name"].value == name
            backtest_ids[rid] = meta["run_id"].value
            assert backtest_ids[rid] == load_config(name).run_id(DAY, DAY)
        assert len(set(backtest_ids.values())) == N_RUNS
        results = layout.target("results")
        for bt_id in backtest_ids.values():
            summary = ucs.download_from_gcs_sync(results, layout.result_path(bt_id, "summary.json"))
            assert summary["run_id"] == bt_id and summary["status"] == "COMPLETED"
            assert ucs.exists_sync(results, layout.log_path(bt_id))

    stats = local_queue.throughput(windows)
    print(
        f"\n100-run queue test: setup + submit {t_submitted - t0:.0f} s, all done after "
        f"{t_done - t0:.0f} s; {json.dumps(stats)}"
    )


def test_five_year_backfill_is_one_run_of_yearly_chunks(
    queue_env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """1,826 daily partitions of one configuration → ONE run of the sharded job whose shards are
    the 5 calendar years (or 60 months): consecutive, every day once, every chunk but the first
    starting a warm-up day early; the CLI prints that plan."""
    from assets.shards import ShardedRunConfig, plan_for

    names = _sweep_configs(queue_env["configs"], 1)
    (spec,) = launch.plan(names, "2020-01-01", "2024-12-30", chunk="year")
    assert spec.job_name == launch.SHARDED_JOB_NAME
    config = load_config(names[0])
    op = spec.run_config()["ops"]["plan_shards"]["config"]
    ucs = UnifiedCloudService(str(queue_env["root"]))
    years = plan_for(config, ShardedRunConfig(**op), ucs)
    days = [d for p in years for d in p.own_days]
    assert len(days) == 1826 and len(years) == 5 and len(set(days)) == 1826
    assert [p.own_days[0].isoformat() for p in years][1:] == [
        f"{y}-01-01" for y in range(2021, 2025)
    ]
    assert [p.warmup for p in years] == [0, 1, 1, 1, 1]
    assert years[-1].own_days[-1] == date(2024, 12, 30)
    (monthly,) = launch.plan(names, "2020-01-01", "2024-12-30", chunk="month")
    months = plan_for(
        config, ShardedRunConfig(**monthly.run_config()["ops"]["plan_shards"]["config"]), ucs
    )
    assert len(months) == 60 and sum(len(p.own_days) for p in months) == 1826
    assert (
        launch.main(
            [
                "--configs",
                names[0],
                "--start",
                "2020-01-01",
                "--end",
                "2024-12-30",
                "--chunk",
                "year",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"{names[0]}\t2020-01-01\t2024-12-30\t1826 days\t{launch.SHARDED_JOB_NAME}\t5 year chunks"
    ]


def test_chunked_range_is_one_backtest_through_the_queue(queue_env: dict[str, Path]) -> None:
    """2024-01-30..2024-02-02 by month: ONE queued run of the sharded job, launched by the daemon
    (multiprocess executor: plan, one step per chunk, stitch), equal to the one-engine run."""
    import hashlib

    from backtest_pipeline.run.runner import run_backtest

    ucs = UnifiedCloudService(str(queue_env["root"]))
    generate_sample_data(ucs, "2024-01-30", 4, trades_per_day=2_000, strategy_id="sweep-s0")
    names = _sweep_configs(queue_env["configs"], 1)
    config = load_config(names[0])
    results = layout.target("results")
    bt_id = config.run_id("2024-01-30", "2024-02-02")

    def digests() -> list[str]:
        return [
            hashlib.sha256(
                ucs.download_bytes_sync(results, layout.result_path(bt_id, n))
            ).hexdigest()
            for n in layout.RESULT_PARQUETS
        ]

    run_backtest(config, "2024-01-30", "2024-02-02", ucs=ucs)
    want = digests()
    specs = launch.plan(names, "2024-01-30", "2024-02-02", chunk="month")
    with DagsterInstance.get() as instance:
        run_ids = launch.submit(instance, specs, trigger="backfill")
        (run,) = [instance.get_run_by_id(r) for r in run_ids]
        assert run.status == DagsterRunStatus.QUEUED and run.job_name == launch.SHARDED_JOB_NAME
        assert (run.tags["backtest/start"], run.tags["backtest/end"]) == (
            "2024-01-30",
            "2024-02-02",
        )
        assert json.loads(run.tags["dagster-k8s/config"])["container_config"]["resources"]
        with local_queue.daemon(queue_env["home"], queue_env["tmp"] / "daemon.log") as proc:
            statuses = local_queue.wait_for_runs(instance, run_ids, timeout_s=400, proc=proc)
        assert set(statuses.values()) == {DagsterRunStatus.SUCCESS}
        steps = {
            e.step_key for e in instance.all_logs(run_ids[0], of_type=DagsterEventType.STEP_SUCCESS)
        }
        assert {"run_shard[s0]", "run_shard[s1]", "stitch_shards"} <= steps
    summary = ucs.download_from_gcs_sync(results, layout.result_path(bt_id, "summary.json"))
    assert summary["days"] == ["2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02"]
    assert digests() == want
    assert os.environ["DAGSTER_HOME"] == str(queue_env["home"])
