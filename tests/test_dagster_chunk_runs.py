"""A backtest's chunks as queued runs (``launch --as-runs``) through the real run queue.

A temp instance with the repository's ``dagster.yaml`` (``QueuedRunCoordinator``, 2 runs at once;
the per-strategy limit lifted so that the chunks of one strategy can overlap), its
``dagster-daemon`` (run queue and sensors) and ``DefaultRunLauncher`` (one process per run):

* 9 days cut into 3 chunk runs, a long position held across both chunk boundaries: the chunk
  runs are spread over the 2 run slots, ``chunked_backtest_sensor`` queues one stitch run once
  all have succeeded, one boundary holds as speculated and the other (an unfinished operation)
  is re-run from the true state, and the results equal the one-engine run byte for byte (the
  shard objects removed afterwards);
* a month-chunked backtest whose second chunk reads a corrupt ticks object: that chunk run fails
  (after its step retries), no stitch run is queued, and the backtest is FAILED with the object
  named, no result Parquet left (a complete earlier result removed too).

The sensor's decisions on run records (fast, no daemon): a chunk run that ended CANCELED without
recording it marks the backtest FAILED once; a re-executed chunk supersedes its failed parent and
the stitch is requested with a run config the stitch job accepts; a newer backfill of the same
backtest supersedes an older failed one.

Why a separate file from tests/test_dagster_shards.py: that one runs the one-run mode (shard
steps of one run); this one needs the daemon, which only a real instance has.
"""

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
    instance_for_test,
    validate_run_config,
)

import launch
import local_queue
from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.run import shards
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.ucs_resource import UCSResource

START = date(2024, 2, 26)
DAYS = 9
END = START + timedelta(days=DAYS - 1)  # 2024-03-05: the backtest crosses a month boundary


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """DAGSTER_HOME, storage root and sample data, in os.environ for the daemon and the runs."""
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.access(shm, os.W_OK)
    home = Path(tempfile.mkdtemp(prefix="dagster-home-", dir=shm)) if on_tmpfs else tmp_path / "h"
    root = tmp_path / "root"
    local_queue.write_instance_yaml(home, tag_limits=[])
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("BACKTEST_STORAGE_ROOT", str(root))
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    ucs = UnifiedCloudService(str(root))
    generate_sample_data(ucs, START, DAYS, trades_per_day=3_000, seed=5)
    _never_flat(ucs, load_config("demo"), layout.days_between(START, END))
    yield {"home": home, "root": root, "tmp": tmp_path}
    if on_tmpfs:
        shutil.rmtree(home, ignore_errors=True)


def _never_flat(ucs: UnifiedCloudService, config: BacktestConfig, days: list[date]) -> None:
    """Signals that always hold a long position: every chunk boundary carries one."""
    t_sig = layout.target("signals")
    for day in days:
        path = layout.signals_path(day, config.strategy_id)
        sig = ucs.download_from_gcs_sync(t_sig, path)
        sig = sig.with_columns((pl.col("target_position").abs() + 0.1).round(3))
        ucs.upload_to_gcs_sync(t_sig, path, sig, format="parquet")


def digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    t = layout.target("results")
    return {
        n: hashlib.sha256(ucs.download_bytes_sync(t, layout.result_path(run_id, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }


def _runs(instance: DagsterInstance, job: str, backfill: str) -> list:
    records = instance.get_run_records(
        RunsFilter(job_name=job, tags={launch.BACKFILL_TAG: backfill}), ascending=True
    )
    return [r.dagster_run for r in records]


def _wait_for_stitch(instance: DagsterInstance, backfill: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = _runs(instance, launch.STITCH_JOB_NAME, backfill)
        if runs:
            return runs[0].run_id
        time.sleep(2)
    raise TimeoutError(f"no stitch run of backfill {backfill} after {timeout_s:.0f} s")


@pytest.mark.slow  # a daemon, 4 runs of their own processes, an engine each: ~1.5 min
def test_chunk_runs_through_the_queue_equal_the_one_engine_run(
    queue: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ucs = UnifiedCloudService(str(queue["root"]))
    config = load_config("demo")
    days = layout.days_between(START, END)
    plans = shards.plan_shards(days, 3)
    assert len(plans) == 3
    one = run_backtest(config, START, END, ucs=ucs)
    bt_id = one.run_id
    for p in plans[1:]:  # a long position crosses every chunk boundary
        boundary_ns = layout.day_bounds_ns(p.own_days[0])[0]
        held = one.positions.filter(pl.col("ts_event") < boundary_ns).tail(1)
        assert held.height == 1 and held["quantity"][0] > 0, p.label()
    want = digests(ucs, bt_id)
    ResultWriter(ucs, bt_id).remove()  # the stitch run must write them again

    with local_queue.daemon(queue["home"], queue["tmp"] / "daemon.log") as proc:
        argv = ["--configs", "demo", "--start", str(START), "--end", str(END),
                "--shards", "3", "--as-runs", "--trigger", "test"]  # fmt: skip
        assert launch.main(argv) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"3 chunk runs + 1 {launch.STITCH_JOB_NAME} run" in out[0]
        chunk_ids = out[2:]
        with DagsterInstance.get() as instance:
            chunk_runs = [instance.get_run_by_id(r) for r in chunk_ids]
            assert [r.job_name for r in chunk_runs] == [launch.CHUNK_JOB_NAME] * 3
            assert [r.tags[launch.CHUNK_TAG] for r in chunk_runs] == ["0", "1", "2"]
            (backfill,) = {r.tags[launch.BACKFILL_TAG] for r in chunk_runs}
            assert {r.tags[launch.RUN_ID_TAG] for r in chunk_runs} == {bt_id}
            statuses = local_queue.wait_for_runs(instance, chunk_ids, timeout_s=600, proc=proc)
            assert set(statuses.values()) == {DagsterRunStatus.SUCCESS}, statuses
            stitch_id = _wait_for_stitch(instance, backfill, timeout_s=300)
            (stitch_status,) = local_queue.wait_for_runs(
                instance, [stitch_id], timeout_s=600, proc=proc
            ).values()
            assert stitch_status == DagsterRunStatus.SUCCESS
            # the queue spread the chunk runs over its 2 slots, and held the limit
            assert local_queue.max_overlap(local_queue.run_windows(instance, chunk_ids)) == 2
            stitch = instance.get_run_by_id(stitch_id)
            assert stitch.tags["dagster/run_key"] == f"stitch:{backfill}"
            assert stitch.tags["backtest/config"] == "demo"
            assert launch.CHUNK_TAG not in stitch.tags
            # the stitch ran after every chunk run had ended, and exactly once
            windows = local_queue.run_windows(instance, [*chunk_ids, stitch_id])
            assert windows[-1].run_id == stitch_id
            assert max(w.ended for w in windows[:-1]) <= windows[-1].launched
            assert len(_runs(instance, launch.STITCH_JOB_NAME, backfill)) == 1

    assert digests(ucs, bt_id) == want
    results = layout.target("results")
    summary = ucs.download_from_gcs_sync(results, layout.result_path(bt_id, "summary.json"))
    assert summary["status"] == "COMPLETED" and summary["days"] == [str(d) for d in days]
    info = summary["execution_stats"]["shards"]
    assert info["count"] + len(info["merged_boundaries"]) == 3, info
    # both outcomes of the check on this data: 02-29 holds as speculated; at 03-01 an operation
    # is unfinished, so the stitch run re-ran that chunk from its predecessor's true state
    assert [m[:10] for m in info["merged_boundaries"]] == ["2024-03-01"], info
    assert ucs.list_files_sync(results, f"shards/{bt_id}/") == []  # shard objects removed


@pytest.mark.slow  # a daemon, 2 runs, the failing chunk's engine 3 times: ~1.5 min
def test_a_failing_chunk_run_fails_the_backtest_cleanly(queue: dict[str, Path]) -> None:
    ucs = UnifiedCloudService(str(queue["root"]))
    config = load_config("demo")
    bt_id = run_backtest(config, START, END, ucs=ucs).run_id  # a complete earlier result
    bad = layout.trades_path(END, config.instruments[0])  # read by the March chunk only
    ucs.upload_to_gcs_sync(layout.target("ticks"), bad, b"PAR1 truncated", format="bytes")
    (spec,) = launch.plan(["demo"], START, END, chunk="month", as_runs=True)
    with (
        local_queue.daemon(queue["home"], queue["tmp"] / "daemon.log") as proc,
        DagsterInstance.get() as instance,
    ):
        chunk_ids = launch.submit(instance, [spec], trigger="test")
        assert len(chunk_ids) == 2  # February and March
        statuses = local_queue.wait_for_runs(instance, chunk_ids, timeout_s=600, proc=proc)
        assert [statuses[r] for r in chunk_ids] == [
            DagsterRunStatus.SUCCESS,
            DagsterRunStatus.FAILURE,
        ]
        backfill = instance.get_run_by_id(chunk_ids[0]).tags[launch.BACKFILL_TAG]
        # two sensor intervals after the last chunk run ended: still no stitch run
        time.sleep(25)
        assert _runs(instance, launch.STITCH_JOB_NAME, backfill) == []
        assert proc.poll() is None
        # what the sensor sees (evaluated here on the same records): half the chunks done
        from assets.sensors import chunked_backtests

        seen = chunked_backtests(
            build_sensor_context(instance=instance), UCSResource(root=str(queue["root"]))
        )
        assert not seen.run_requests
        assert f"backfill {backfill}: 1/2 chunk runs succeeded" in seen.skip_reason.skip_message
    t = layout.target("results")
    summary = ucs.download_from_gcs_sync(t, layout.result_path(bt_id, "summary.json"))
    assert summary["status"] == "FAILED" and bad in summary["error"], summary.get("error")
    for name in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t, layout.result_path(bt_id, name))


def test_the_sensor_marks_stopped_chunks_failed_and_stitches_re_executed_ones(
    tmp_path: Path,
) -> None:
    from assets.sensors import chunked_backtests
    from definitions import defs

    ucs = UnifiedCloudService(str(tmp_path))
    resource = UCSResource(root=str(tmp_path))
    config = load_config("demo")
    (spec,) = launch.plan(["demo"], START, END, chunk="month", as_runs=True)
    chunk_job = defs.get_job_def(launch.CHUNK_JOB_NAME)
    bt_id = config.run_id(START, END)
    t = layout.target("results")
    writer = ResultWriter(ucs, bt_id)
    writer.write_summary({"run_id": bt_id, "status": "COMPLETED"})  # an earlier complete result
    ucs.upload_to_gcs_sync(t, layout.result_path(bt_id, "orders.parquet"), b"x", format="bytes")

    def queue_runs(backfill: str, statuses: list[DagsterRunStatus]) -> list[str]:
        ids = []
        for (run_config, tags), status in zip(spec.runs(config, backfill), statuses, strict=True):
            tags = {**tags, "backtest/config": "demo"}
            run = instance.create_run_for_job(chunk_job, run_config=run_config, tags=tags,
                                              status=status)  # fmt: skip
            ids.append(run.run_id)
        return ids

    def summary() -> dict:
        return ucs.download_from_gcs_sync(t, layout.result_path(bt_id, "summary.json"))

    with instance_for_test() as instance:
        _, stopped = queue_runs("aaa", [DagsterRunStatus.SUCCESS, DagsterRunStatus.CANCELED])
        first = chunked_backtests(build_sensor_context(instance=instance), resource)
        assert not first.run_requests
        assert "backfill aaa: chunk 1 marked FAILED" in first.skip_reason.skip_message
        assert summary()["status"] == "FAILED"
        assert (
            f"chunk run {stopped} (chunk 1 of 2, backfill aaa) ended CANCELED"
            in (summary()["error"])
        )
        assert not ucs.exists_sync(t, layout.result_path(bt_id, "orders.parquet"))
        # the next tick looks at the same runs again (re-scan window): marked once only
        again = chunked_backtests(build_sensor_context(instance=instance, cursor=first.cursor),
                                  resource)  # fmt: skip
        assert "marked FAILED" not in again.skip_reason.skip_message

        # the stopped chunk re-executed (a newer run of chunk 1, same tags): the stitch is due
        (_, rerun) = spec.runs(config, "aaa")
        instance.create_run_for_job(chunk_job, run_config=rerun[0], tags=rerun[1],
                                    status=DagsterRunStatus.SUCCESS)  # fmt: skip
        done = chunked_backtests(build_sensor_context(instance=instance), resource)
        (request,) = done.run_requests
        assert request.run_key == "stitch:aaa"
        assert request.tags[launch.BACKFILL_TAG] == "aaa" and launch.CHUNK_TAG not in request.tags
        stitch_config = request.run_config["ops"][launch.STITCH_OP]["config"]
        assert stitch_config == {"start": str(START), "end": str(END), "chunk": "month",
                                 "backfill": "aaa", "chunks": 2}  # fmt: skip
        validate_run_config(defs.get_job_def(launch.STITCH_JOB_NAME), request.run_config)

        # an older backfill's failed chunk, once a newer backfill of the backtest is queued
        writer.write_summary({"run_id": bt_id, "status": "COMPLETED"})
        queue_runs("bbb", [DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS])
        queue_runs("ccc", [DagsterRunStatus.STARTED, DagsterRunStatus.NOT_STARTED])
        late = chunked_backtests(build_sensor_context(instance=instance), resource)
        # aaa again (deduplicated by its run key in the daemon), nothing for bbb or ccc
        assert [r.run_key for r in late.run_requests] == ["stitch:aaa"]
        assert summary()["status"] == "COMPLETED"  # not marked: superseded by ccc

        # a backfill the sensor cannot finish (its configuration is gone) does not stall others
        (cfg, tags), _ = spec.runs(config, "eee")
        cfg["resources"]["backtest"]["config"]["config_name"] = "no-such-config"
        tags = {**tags, launch.RUN_ID_TAG: "BT-gone"}
        instance.create_run_for_job(chunk_job, run_config=cfg, tags=tags,
                                    status=DagsterRunStatus.FAILURE)  # fmt: skip
        broken = chunked_backtests(build_sensor_context(instance=instance), resource)
        assert [r.run_key for r in broken.run_requests] == ["stitch:aaa"]
