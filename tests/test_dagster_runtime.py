"""The run's warm backtest process and the code location's executor.

``BacktestWorker`` is a real spawned process: it serves helper tasks, runs one last task, then
exits; an idle one is stopped when its run ends. The end-to-end test runs the real
``dagster asset materialize`` command (the code location's executor starts the worker with the
run) and checks the range gives exactly what ``run_backtest`` gives.
"""

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from hashlib import sha256
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from _dagster_helpers import write_sample

from assets import runtime
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.run import spawn
from backtest_pipeline.run import worker as workers
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.local_instance import BACKTEST_WORKER

REPO = Path(__file__).resolve().parents[1]


def _boom() -> None:
    raise ValueError("no such thing")


def _die() -> None:
    os._exit(3)


def test_worker_serves_tasks_then_exits_after_the_last() -> None:
    w = workers.BacktestWorker()
    assert w.call(os.getpid) == w.pid != os.getpid()
    assert w.call(sorted, [3, 1, 2]) == [1, 2, 3]
    # collection was paused for its imports only: the tasks (the engine) run with it
    assert w.call(gc.isenabled) is True
    assert w.ready() and w.alive()
    assert w.run(os.getpid) == w.pid
    assert not w.alive()
    with pytest.raises(RuntimeError, match="has run its backtest"):
        w.call(os.getpid)


def test_worker_errors_and_death_are_reported() -> None:
    w = workers.BacktestWorker()
    with pytest.raises(workers.IsolatedBacktestError, match="ValueError: no such thing"):
        w.call(_boom)
    assert w.alive()  # a failed helper task does not cost the backtest its process
    with pytest.raises(workers.IsolatedBacktestError, match="died"):
        w.run(_die)
    assert not w.alive()


def _slow_square(x: int) -> int:
    time.sleep(0.2)
    return x * x


def test_submitted_tasks_run_in_order_and_before_the_backtest() -> None:
    w = workers.BacktestWorker()
    futures = [w.submit(_slow_square, i) for i in range(3)]
    failed = w.submit(_boom)
    assert not futures[-1].done()  # submit does not wait
    assert w.run(os.getpid) == w.pid  # the last task waits for the queued ones
    assert [f.result() for f in futures] == [0, 1, 4]
    with pytest.raises(workers.IsolatedBacktestError, match="ValueError: no such thing"):
        failed.result()
    with pytest.raises(RuntimeError, match="has run its backtest"):
        w.submit(os.getpid)


def test_a_closed_worker_fails_the_futures_of_its_queued_tasks() -> None:
    w = workers.BacktestWorker()
    futures = [w.submit(_slow_square, i) for i in range(3)]
    w.close()
    for f in futures:
        with pytest.raises(BaseException):  # noqa: B017 - died, closed or cancelled
            f.result(timeout=30)


def _context(run_id: str, steps: list[str] | None) -> Any:
    """What runtime.prebuild reads of an asset step's context."""
    return SimpleNamespace(
        run=SimpleNamespace(run_id=run_id, step_keys_to_execute=steps),
        job_def=SimpleNamespace(executor_def=SimpleNamespace(name="in_process")),
    )


def test_prebuilt_work_is_taken_only_with_the_same_arguments() -> None:
    table = pa.table({"x": [1, 2]})
    ctx = _context("run-p", [runtime.CATALOG_STEP, runtime.BACKTEST_STEP])
    assert not runtime.prebuild(ctx, runtime.CATALOG_STEP, "d1", (1,), sorted, [2, 1])  # no worker
    workers.prewarm_worker("run-p")
    try:
        assert not runtime.prebuild(  # the step is not one of this run's
            _context("run-p", [runtime.BACKTEST_STEP]), runtime.CATALOG_STEP, "d1", (1,), sorted, []
        )
        for day in ("d1", "d2", "d3"):
            assert runtime.prebuild(ctx, runtime.CATALOG_STEP, day, ("a", table), sorted, [2, 1])
        assert runtime.take_prebuilt("run-p", runtime.CATALOG_STEP, "d1", ("a", table)) == [1, 2]
        other = pa.table({"x": [1, 3]})
        assert runtime.take_prebuilt("run-p", runtime.CATALOG_STEP, "d2", ("a", other)) is None
        assert runtime.take_prebuilt("run-p", runtime.CATALOG_STEP, "d2", ("a", table)) is None
        assert runtime.take_prebuilt("run-p", runtime.CATALOG_STEP, "d9", ("a", table)) is None
        runtime.drop_prebuilt("run-p")
        assert runtime.take_prebuilt("run-p", runtime.CATALOG_STEP, "d3", ("a", table)) is None
    finally:
        workers.discard_worker("run-p")


def test_prebuild_slots_and_the_cleanup_of_what_was_made_for_a_day(tmp_path: Path) -> None:
    """Work made for a day's task alone (staged files) is cleaned up however the task ends, and
    at once when no task starts; ``can_prebuild`` says beforehand whether one would."""
    ctx = _context("run-q", [runtime.CATALOG_STEP, runtime.BACKTEST_STEP])
    made: list[Path] = []

    def staged(name: str) -> tuple[Path, Any]:
        d = tmp_path / name
        d.mkdir()
        made.append(d)
        return d, lambda: shutil.rmtree(d)

    d0, clean0 = staged("no-worker")
    assert not runtime.can_prebuild(ctx, runtime.CATALOG_STEP)
    assert not runtime.prebuild(ctx, runtime.CATALOG_STEP, "d0", (0,), sorted, [], cleanup=clean0)
    assert not d0.exists()  # not started: cleaned up at once
    workers.prewarm_worker("run-q")
    try:
        for i in range(runtime.MAX_PENDING_PREBUILDS):
            assert runtime.can_prebuild(ctx, runtime.CATALOG_STEP)
            d, clean = staged(f"day-{i}")
            assert runtime.prebuild(
                ctx, runtime.CATALOG_STEP, f"d{i}", (i,), _slow_square, i, cleanup=clean
            )
        assert not runtime.can_prebuild(ctx, runtime.CATALOG_STEP)  # the slots are taken
        assert runtime.take_prebuilt("run-q", runtime.CATALOG_STEP, "d1", (1,)) == 1
        deadline = time.monotonic() + 30
        while any(p.exists() for p in made) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(p.exists() for p in made)  # every task over: every staged dir gone
    finally:
        runtime.drop_prebuilt("run-q")
        workers.discard_worker("run-q")


def test_work_started_ahead_is_taken_once_and_says_it_was_started() -> None:
    ctx = _context("run-s", [runtime.CATALOG_STEP, runtime.BACKTEST_STEP])
    whole = runtime.WHOLE_RUN
    assert not runtime.start_ahead(ctx, runtime.BACKTEST_STEP, (1,), lambda w: w.submit(sorted, []))
    assert runtime.take_started("run-s", runtime.BACKTEST_STEP, whole, (1,)) == (False, None)
    workers.prewarm_worker("run-s")
    try:
        assert runtime.start_ahead(
            ctx, runtime.BACKTEST_STEP, ("a",), lambda w: w.submit(sorted, [2, 1])
        )
        assert not runtime.start_ahead(  # once per run and step
            ctx, runtime.BACKTEST_STEP, ("a",), lambda w: w.submit(sorted, [])
        )
        # started, but with other arguments: the step knows, to stop the worker
        assert runtime.take_started("run-s", runtime.BACKTEST_STEP, whole, ("b",)) == (True, None)
        assert runtime.start_ahead(
            ctx, runtime.BACKTEST_STEP, ("a",), lambda w: w.submit(sorted, [2, 1])
        )
        assert runtime.take_started("run-s", runtime.BACKTEST_STEP, whole, None) == (True, None)
        assert runtime.start_ahead(
            ctx, runtime.BACKTEST_STEP, ("a",), lambda w: w.submit(sorted, [2, 1])
        )
        assert runtime.take_started("run-s", runtime.BACKTEST_STEP, whole, ("a",)) == (
            True,
            [1, 2],
        )
        # the catalog days taken as prebuilt are remembered for the run, until it ends
        assert runtime.prebuild(ctx, runtime.CATALOG_STEP, "d1", (1,), sorted, [1])
        assert runtime.prebuild(ctx, runtime.CATALOG_STEP, "d2", (1,), sorted, [1])
        assert runtime.take_prebuilt("run-s", runtime.CATALOG_STEP, "d1", (1,)) == [1]
        assert runtime.take_prebuilt("run-s", runtime.CATALOG_STEP, "d2", (2,)) is None
        assert runtime.worker_days("run-s", runtime.CATALOG_STEP) == {"d1"}
        runtime.note_worker_day("run-s", runtime.CATALOG_STEP, "d2")  # built by the worker itself
        assert runtime.worker_days("run-s", runtime.CATALOG_STEP) == {"d1", "d2"}
        runtime.drop_prebuilt("run-s")
        assert runtime.worker_days("run-s", runtime.CATALOG_STEP) == frozenset()
    finally:
        workers.discard_worker("run-s")


def test_a_spare_worker_is_taken_by_the_next_run() -> None:
    assert BACKTEST_WORKER == workers.ENTRY  # what the instance spawns is the worker
    spawn.start_spare(workers.ENTRY)
    spawn.start_spare(workers.ENTRY)  # at most one
    assert workers.prewarm_worker("run-spare")  # took the spare
    try:
        assert spawn.take_spare(workers.ENTRY) is None
        w = workers.pooled_worker("run-spare")
        assert w is not None and w.call(os.getpid) == w.pid != os.getpid()
        assert not workers.prewarm_worker("run-spare")  # already has its worker
    finally:
        workers.discard_worker("run-spare")
    assert workers.prewarm_worker("run-fresh") is False  # no spare left: a new process
    workers.discard_worker("run-fresh")


def _temp_file() -> str:
    """A temp file of the worker's, left behind as a task killed mid-way would leave it."""
    fd, path = tempfile.mkstemp(prefix="left-")
    os.close(fd)
    return path


def test_a_stopped_worker_leaves_no_temp_files() -> None:
    """Killed idle, or exited after its last task: its temp directory goes with it."""
    for last in (False, True):
        w = workers.BacktestWorker()
        left = w.run(_temp_file) if last else w.call(_temp_file)
        assert os.path.exists(left) or last  # an exited worker's directory is already gone
        assert not left.startswith(tempfile.gettempdir() + os.sep + "left-")  # its own dir
        w.close()
        assert not os.path.exists(left) and not os.path.exists(os.path.dirname(left))
    spawn.start_spare(workers.ENTRY)
    spare = spawn.take_spare(workers.ENTRY)
    assert spare is not None and os.path.isdir(spare.tmp)
    spawn.stop(spare)
    assert not os.path.exists(spare.tmp) and not spare.proc.is_alive()


def test_spawning_keeps_the_main_module() -> None:
    main = sys.modules["__main__"]
    before = (main.__dict__.get("__file__"), main.__dict__.get("__spec__"))
    workers.BacktestWorker().close()
    assert (main.__dict__.get("__file__"), main.__dict__.get("__spec__")) == before


def test_pool_keeps_one_idle_worker_per_process() -> None:
    workers.prewarm_worker("run-a")
    first = workers.pooled_worker("run-a")
    workers.prewarm_worker("run-a")  # idempotent
    assert workers.pooled_worker("run-a") is first
    workers.prewarm_worker("run-b")  # another run's idle worker is stopped
    assert workers.pooled_worker("run-a") is None and first is not None and not first.alive()
    taken = workers.take_worker("run-b")
    assert taken is not None and workers.take_worker("run-b") is None
    taken.close()
    workers.prewarm_worker("run-c")
    workers.discard_worker("run-c")
    assert workers.pooled_worker("run-c") is None


@pytest.mark.slow
def test_cli_materialize_range_equals_run_backtest(tmp_path: Path) -> None:
    """`dagster asset materialize` over 3 days (the code location's executor) = run_backtest."""
    root = tmp_path / "data"
    ucs = UnifiedCloudService(str(root))
    write_sample(ucs)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BACKTEST_STORAGE_ROOT": str(root),
        "BACKTEST_PARTITIONS_START": "2024-01-01",
    }
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        *("asset", "materialize", "-m", "definitions", "--select", "not group:comparison"),
        *("--partition-range", "2024-01-01...2024-01-03"),
    ]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "RUN_SUCCESS" in out.stderr
    # nothing of the command failed on the side (a thread's exception is only printed)
    assert "Traceback" not in out.stderr and "Exception in thread" not in out.stderr
    assert "backtest process started with the run" in out.stderr  # the executor's warm start
    # … which took the process the instance spawned as the command started
    assert "spawned as the command started" in out.stderr
    # each day's catalog was started by the worker as soon as tick_slices had stored the day
    assert "3 of 3 days built while tick_slices fetched" in out.stderr
    # … and the backtest, on those catalogs as they were stored: the step only collected it
    assert "collecting the engine started ahead" in out.stderr

    config = load_config("demo")
    rid = config.run_id("2024-01-01", "2024-01-03")
    t = layout.target("results")

    def read(run_id: str, name: str) -> pl.DataFrame:
        return ucs.download_from_gcs_sync(t, layout.result_path(run_id, name))

    dagster_fills = read(rid, "fills.parquet")
    dagster_summary = ucs.download_from_gcs_sync(t, layout.result_path(rid, "summary.json"))
    direct = run_backtest(config, "2024-01-01", "2024-01-03", ucs=ucs, run_id="direct-run")
    assert dagster_summary["status"] == "COMPLETED"
    assert dagster_fills.height > 0
    assert dagster_fills.equals(read("direct-run", "fills.parquet"))

    def digests(run_id: str) -> dict[str, str]:
        paths = [layout.result_path(run_id, n) for n in layout.RESULT_PARQUETS]
        paths.append(layout.config_path(run_id))
        return {
            p.rsplit("/", 1)[-1]: sha256(ucs.download_bytes_sync(t, p)).hexdigest() for p in paths
        }

    assert digests(rid) == digests("direct-run")
    assert dagster_summary["pnl"] == direct.summary["pnl"]
    assert dagster_summary["metrics"] == direct.summary["metrics"]
    log = ucs.download_from_gcs_sync(t, layout.log_path(rid), format="text")
    assert "BACKTESTER-001" in log  # the engine's own lines, written in the warm process
