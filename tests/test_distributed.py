"""A real multi-worker deployment on this machine: the shards of one backtest on two Celery workers.

The deployment is deploy/celery/ as it is: a Postgres-backed instance (``dagster.yaml``), a
``dagster-daemon`` dequeuing the runs ``launch`` queues, and two ``dagster-celery`` workers
(``celery.yaml``: Redis broker and backend, late acknowledgement) running the steps of
``sharded_backtest_job`` with ``BACKTEST_SHARD_EXECUTOR=celery``. Redis and Postgres are started
here on 127.0.0.1 (tests/_servers.py) and stopped at the end.

* a 10-day run through ``celery_executor`` equals the one-engine run byte for byte, and its two
  shard steps ran on the two different workers;
* the process of a worker running a shard is killed with SIGKILL: Celery requeues the task
  (``task_reject_on_worker_lost``), the other worker runs the shard again, and the outputs are
  byte-identical;
* a 60-day backfill chunked by month (``launch --chunk month``) is one run equal to the one-engine
  60-day run.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest
import yaml
from _servers import postgres_server, redis_server
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

import launch
import local_queue
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "celery"
TEN_START, TEN_DAYS = date(2024, 3, 1), 10
SIXTY_START, SIXTY_DAYS = date(2024, 5, 1), 60
HOST = socket.gethostname()
WORKERS = (f"w1@{HOST}", f"w2@{HOST}")  # dagster-celery names a worker NAME@%h
SHARD_MODULE = "backtest_pipeline.run.shards"


@dataclass
class Cluster:
    home: Path
    root: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen]
    broker: str
    backend: str
    tmp: Path

    def ucs(self) -> UnifiedCloudService:
        return UnifiedCloudService(str(self.root))


def _start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    bindir = Path(sys.executable).parent
    return subprocess.Popen(
        [
            str(bindir / "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            str(DEPLOY / "celery.yaml"),
            "-n",
            name.split("@")[0],
            "--",
            "-c",
            "1",
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def _celery_app(c: "Cluster"):  # noqa: ANN202 - a celery.Celery
    from celery import Celery

    return Celery("dagster", broker=c.broker, backend=c.backend)


def _wait_workers(c: Cluster, timeout_s: float = 90) -> None:
    app = _celery_app(c)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in c.workers.items():
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker {name} exited with {proc.returncode}")
        replies = app.control.ping(timeout=1.0) or []
        if {n for r in replies for n in r} >= set(WORKERS):
            return
        time.sleep(1)
    raise TimeoutError(f"celery workers {WORKERS} did not answer within {timeout_s} s")


@contextmanager
def running_cluster(
    write_data: Callable[[UnifiedCloudService], None], extra_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Redis, Postgres, deploy/celery/'s instance, two workers and a daemon, all stopped after.

    The calling process becomes the launching client (``DAGSTER_HOME`` and the code location's
    settings in ``os.environ``, restored after). Shared with ``benchmarks/distributed.py``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="distributed-"))
    home, root = tmp / "dagster_home", tmp / "root"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    write_data(UnifiedCloudService(str(root)))
    saved = dict(os.environ)
    with redis_server() as redis_url, postgres_server() as pg:
        broker, backend = f"{redis_url}/0", f"{redis_url}/1"
        env = {
            **os.environ,
            **pg.env(),
            "DAGSTER_HOME": str(home),
            "BACKTEST_STORAGE_ROOT": str(root),
            "BACKTEST_SHARD_EXECUTOR": "celery",
            "BACKTEST_CELERY_BROKER": broker,
            "BACKTEST_CELERY_BACKEND": backend,
            "PYTHONPATH": str(REPO),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        os.environ.update(env)
        workers: dict[str, subprocess.Popen] = {}
        try:
            for name in WORKERS:
                workers[name] = _start_worker(name, env, tmp / f"{name.split('@')[0]}.log")
            c = Cluster(home, root, env, workers, broker, backend, tmp)
            _wait_workers(c)
            with local_queue.daemon(home, tmp / "daemon.log", env=env):
                yield c
        finally:
            for proc in workers.values():
                _stop(proc)
            os.environ.clear()
            os.environ.update(saved)
    shutil.rmtree(tmp, ignore_errors=True)


def _sample(ucs: UnifiedCloudService) -> None:
    generate_sample_data(ucs, TEN_START, TEN_DAYS, trades_per_day=30_000, seed=11)
    generate_sample_data(ucs, SIXTY_START, SIXTY_DAYS, trades_per_day=1_500, seed=12)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(_sample) as c:
        yield c


def digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    t = layout.target("results")
    return {
        n: hashlib.sha256(ucs.download_bytes_sync(t, layout.result_path(run_id, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }


def one_engine(
    c: Cluster, start: date, days: int, config_name: str = "demo"
) -> tuple[str, dict[str, str], float]:
    """The reference: the CLI's one-engine run in this process (its run id, digests, wall s)."""
    config = load_config(config_name)
    end = start + timedelta(days=days - 1)
    t0 = time.perf_counter()
    result = run_backtest(config, start, end, ucs=c.ucs())
    wall = time.perf_counter() - t0
    assert result.fills.height > 0
    return result.run_id, digests(c.ucs(), result.run_id), wall


def submit(start: date, days: int, config_name: str = "demo", **how: object) -> str:
    """Queue one run through ``launch`` (``shards=`` or ``chunk=``); returns its Dagster run id."""
    end = start + timedelta(days=days - 1)
    specs = launch.plan([config_name], start, end, **how)  # type: ignore[arg-type]
    with DagsterInstance.get() as instance:
        (run_id,) = launch.submit(instance, specs, trigger="test")
    return run_id


def wait(run_id: str, timeout_s: float = 600) -> DagsterRunStatus:
    with DagsterInstance.get() as instance:
        return local_queue.wait_for_runs(instance, [run_id], timeout_s=timeout_s)[run_id]


def _workers_of_steps(run_id: str) -> dict[str, list[str]]:
    """Step key → the Celery workers that started it, in order (from the run's event log)."""
    out: dict[str, list[str]] = {}
    with DagsterInstance.get() as instance:
        for rec in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            ev = rec.dagster_event
            md = ev.engine_event_data.metadata if ev and ev.engine_event_data else {}
            if "Celery worker" in md and rec.step_key:
                out.setdefault(rec.step_key, []).append(str(md["Celery worker"].value))
    return out


def _failure_message(run_id: str) -> str:
    with DagsterInstance.get() as instance:
        return "\n".join(
            str(r.dagster_event.event_specific_data)[:2000] if r.dagster_event else r.message
            for r in instance.all_logs(run_id)
            if r.dagster_event and r.dagster_event.is_failure
        )


@pytest.fixture(scope="module")
def reference_10(cluster: Cluster) -> tuple[str, dict[str, str], float]:
    return one_engine(cluster, TEN_START, TEN_DAYS)


def test_ten_day_run_on_two_celery_workers_equals_the_one_engine_run(
    cluster: Cluster, reference_10: tuple[str, dict[str, str], float]
) -> None:
    bt_id, want, one_engine_s = reference_10
    t0 = time.perf_counter()
    run_id = submit(TEN_START, TEN_DAYS, shards=2)
    status = wait(run_id)
    wall = time.perf_counter() - t0
    assert status == DagsterRunStatus.SUCCESS, _failure_message(run_id)
    assert digests(cluster.ucs(), bt_id) == want
    summary = cluster.ucs().download_from_gcs_sync(
        layout.target("results"), layout.result_path(bt_id, "summary.json")
    )
    assert summary["status"] == "COMPLETED" and len(summary["days"]) == TEN_DAYS
    ran_on = _workers_of_steps(run_id)
    shard_workers = {w for k, ws in ran_on.items() if k.startswith("run_shard[") for w in ws}
    assert shard_workers == set(WORKERS), ran_on  # both workers ran a shard
    assert ucs_leftovers(cluster, bt_id) == []
    print(f"\none engine {one_engine_s:.1f} s; two celery workers (queue to end) {wall:.1f} s")


def ucs_leftovers(c: Cluster, bt_id: str) -> list[str]:
    return c.ucs().list_files_sync(layout.target("results"), f"shards/{bt_id}/")


def _engine_processes(c: Cluster) -> list[tuple[str, psutil.Process]]:
    """(worker, shard engine process) for every shard process running under a worker."""
    found = []
    for name, proc in c.workers.items():
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for k in kids:
            try:
                if SHARD_MODULE in " ".join(k.cmdline()):
                    found.append((name, k))
            except psutil.NoSuchProcess:
                pass
    return found


def test_a_worker_killed_mid_shard_is_retried_on_the_other_worker(
    cluster: Cluster, reference_10: tuple[str, dict[str, str], float]
) -> None:
    bt_id, want, _ = reference_10
    app = _celery_app(cluster)
    run_id = submit(TEN_START, TEN_DAYS, shards=2)
    deadline = time.monotonic() + 300
    victim: tuple[str, psutil.Process] | None = None
    while victim is None and time.monotonic() < deadline:
        engines = _engine_processes(cluster)
        victim = engines[0] if engines else None
        time.sleep(0.2)
    assert victim is not None, "no shard engine process appeared on a worker"
    name, engine = victim
    pool_process = engine.parent()  # the worker process executing the shard's step
    assert pool_process is not None
    # This worker takes no further task, so the requeued shard can only run on the other one.
    app.control.cancel_consumer("dagster", destination=[name], reply=True, timeout=5)
    time.sleep(1.0)  # mid-shard: the engine is importing or running
    assert engine.is_running()
    os.kill(pool_process.pid, signal.SIGKILL)
    try:
        status = wait(run_id)
        assert status == DagsterRunStatus.SUCCESS, _failure_message(run_id)
        assert not engine.is_running()  # the engine died with the worker process that ran it
        assert digests(cluster.ucs(), bt_id) == want
        ran_on = _workers_of_steps(run_id)
        twice = {k: ws for k, ws in ran_on.items() if k.startswith("run_shard[") and len(ws) > 1}
        assert len(twice) == 1, ran_on  # the killed shard started twice ...
        (workers,) = twice.values()
        assert workers[0] == name and workers[-1] != name, ran_on  # ... then on the other worker
    finally:
        app.control.add_consumer("dagster", destination=[name], reply=True, timeout=5)


def test_sixty_day_chunked_backfill_equals_the_one_engine_run(cluster: Cluster) -> None:
    bt_id, want, _ = one_engine(cluster, SIXTY_START, SIXTY_DAYS)
    run_id = submit(SIXTY_START, SIXTY_DAYS, chunk="month")
    status = wait(run_id)
    assert status == DagsterRunStatus.SUCCESS, _failure_message(run_id)
    assert digests(cluster.ucs(), bt_id) == want
    ran_on = _workers_of_steps(run_id)
    assert {k for k in ran_on if k.startswith("run_shard[")} == {"run_shard[s0]", "run_shard[s1]"}
    summary = cluster.ucs().download_from_gcs_sync(
        layout.target("results"), layout.result_path(bt_id, "summary.json")
    )
    info = summary["execution_stats"]["shards"]
    assert info["count"] + len(info["merged_boundaries"]) == 2, info  # May and June
    assert len(summary["days"]) == SIXTY_DAYS
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.job_name == launch.SHARDED_JOB_NAME
    assert yaml.safe_load((cluster.home / "dagster.yaml").read_text())["storage"]["postgres"]
