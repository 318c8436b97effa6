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


def test_five_year_backfill_is_planned_as_yearly_chunks(
    queue_env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """1,826 daily partitions of one configuration → 5 runs (one per calendar year) or 60 (by
    month), consecutive, nothing lost at the boundaries; the CLI prints that plan.

    Not submitted here: creating a run logs one "planned" event per asset and check per day
    (~23 per day, ~8,400 for a yearly chunk), ~29 ms each on this machine's sqlite instance, so
    queueing five yearly chunks locally takes minutes (seconds on the Postgres of deploy/)."""
    names = _sweep_configs(queue_env["configs"], 1)
    specs = launch.plan(names, "2020-01-01", "2024-12-30", chunk="year")
    days = sum((s.end - s.start).days + 1 for s in specs)
    assert days == 1826 and len(specs) == 5
    for a, b in zip(specs, specs[1:], strict=False):
        assert (b.start - a.end).days == 1
    assert [(s.start.isoformat(), s.end.isoformat()) for s in specs][-1] == (
        "2024-01-01",
        "2024-12-30",
    )
    assert specs[0].partition_tags() == {
        launch.RANGE_START: "2020-01-01",
        launch.RANGE_END: "2020-12-31",
    }
    months = launch.plan(names, "2020-01-01", "2024-12-30", chunk="month")
    assert len(months) == 60 and sum((s.end - s.start).days + 1 for s in months) == 1826
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
    assert out[0].split("\t") == [names[0], "2020-01-01", "2020-12-31", "366 days"]
    assert len(out) == 5


def test_chunked_range_runs_one_backtest_per_chunk(queue_env: dict[str, Path]) -> None:
    """2024-01-30..2024-02-02 by month: 2 runs (2 + 2 days) queued with range tags and launched
    by the daemon, each ONE backtest over its chunk (the launch of a chunked backfill, tiny)."""
    ucs = UnifiedCloudService(str(queue_env["root"]))
    generate_sample_data(ucs, "2024-01-30", 4, trades_per_day=2_000, strategy_id="sweep-s0")
    names = _sweep_configs(queue_env["configs"], 1)
    specs = launch.plan(names, "2024-01-30", "2024-02-02", chunk="month")
    assert [(s.start, s.end) for s in specs] == [
        (date(2024, 1, 30), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 2, 2)),
    ]
    with DagsterInstance.get() as instance:
        run_ids = launch.submit(instance, specs, trigger="backfill")
        runs = [instance.get_run_by_id(r) for r in run_ids]
        assert [r.status for r in runs] == [DagsterRunStatus.QUEUED] * 2
        assert [(r.tags[launch.RANGE_START], r.tags[launch.RANGE_END]) for r in runs] == [
            ("2024-01-30", "2024-01-31"),
            ("2024-02-01", "2024-02-02"),
        ]
        assert json.loads(runs[0].tags["dagster-k8s/config"])["container_config"]["resources"]
        with local_queue.daemon(queue_env["home"], queue_env["tmp"] / "daemon.log") as proc:
            statuses = local_queue.wait_for_runs(instance, run_ids, timeout_s=300, proc=proc)
        assert set(statuses.values()) == {DagsterRunStatus.SUCCESS}
        config = load_config(names[0])
        results = layout.target("results")
        for spec in specs:
            bt_id = config.run_id(spec.start, spec.end)
            summary = ucs.download_from_gcs_sync(results, layout.result_path(bt_id, "summary.json"))
            assert summary["days"] == [spec.start.isoformat(), spec.end.isoformat()]
    assert os.environ["DAGSTER_HOME"] == str(queue_env["home"])
