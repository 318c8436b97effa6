"""The backtest started ahead: the run's worker replays each day as soon as its catalog is stored.

``tick_slices`` starts the run's backtest in the worker once its first day is stored; the
worker's engine replays day d while it writes day d + 1's catalog, and ``backtest_run`` only
collects the outcome. Real Dagster runs (``materialize``, the in-process executor) and real
NautilusTrader engines throughout:

* collected, the results are byte for byte those of ``run_backtest`` reading storage directly;
* when the stored inputs it was started on changed before ``backtest_run``, the step discards it
  (stopping its process: it had written nothing) and runs the backtest again, with the same
  bytes as the result;
* an engine that fails in the overlapped run fails ``backtest_run`` with the run's error, and
  leaves a FAILED summary and no result Parquet (an earlier attempt's complete results removed).
"""

import hashlib
import io
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _dagster_helpers import START, materialize_graph, write_sample
from dagster import DagsterInstance

from assets import runtime
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.run import worker as workers
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import day_object_path

pytestmark = pytest.mark.slow

END = "2024-01-03"
COLLECTED = "collecting the engine started ahead"
DISCARDED = "the run started ahead is discarded"


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    """A local root (the emulator adds nothing here: the catalogs are read as for any run)."""
    return UnifiedCloudService(str(tmp_path / "root"))


def _digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    """sha256 of the run's five result Parquet objects and its backtest_config.json."""
    t = layout.target("results")
    paths = [layout.result_path(run_id, n) for n in layout.RESULT_PARQUETS]
    paths.append(layout.config_path(run_id))
    return {
        p.split("/")[-1]: hashlib.sha256(ucs.download_bytes_sync(t, p)).hexdigest() for p in paths
    }


def _messages(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(r.user_message for r in instance.all_logs(run_id) if r.user_message)


def test_collected_run_equals_run_backtest(ucs: UnifiedCloudService) -> None:
    write_sample(ucs)
    instance = DagsterInstance.ephemeral()
    result = materialize_graph(ucs.root, START, END, instance=instance)
    assert result.success
    log = _messages(instance, result.run_id)
    assert COLLECTED in log and DISCARDED not in log
    assert "3 of 3 days built while tick_slices fetched" in log

    config = load_config("demo")
    rid = config.run_id(START, END)
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(rid, "summary.json")
    )
    assert summary["status"] == "COMPLETED" and summary["execution_stats"]["days"] == 3
    direct = run_backtest(config, START, END, ucs=ucs, run_id="direct-run")
    assert _digests(ucs, rid) == _digests(ucs, "direct-run")
    assert summary["pnl"] == direct.summary["pnl"]
    assert summary["metrics"] == direct.summary["metrics"]
    assert summary["inputs"] == direct.summary["inputs"]  # same objects, same bytes read


def test_a_range_longer_than_the_prebuilt_days_is_collected(ucs: UnifiedCloudService) -> None:
    """Past ``MAX_PENDING_PREBUILDS`` days, ``nautilus_catalog`` hands the rest of the days to
    the worker itself: the backtest started ahead reads those too, and is still collected."""
    days = runtime.MAX_PENDING_PREBUILDS + 3
    write_sample(ucs, days)
    end = (date.fromisoformat(START) + timedelta(days=days - 1)).isoformat()
    instance = DagsterInstance.ephemeral()
    result = materialize_graph(ucs.root, START, end, instance=instance, with_checks=False)
    assert result.success
    log = _messages(instance, result.run_id)
    assert COLLECTED in log and DISCARDED not in log
    config = load_config("demo")
    run_backtest(config, START, end, ucs=ucs, run_id="direct-run")
    assert _digests(ucs, config.run_id(START, end)) == _digests(ucs, "direct-run")


def test_a_start_on_inputs_that_changed_is_discarded_and_run_again(
    ucs: UnifiedCloudService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first day's stored signals are rewritten (same rows, other bytes) once the backtest
    started ahead has read them: ``backtest_run`` would not use the objects it was started on."""
    write_sample(ucs)
    config = load_config("demo")
    path = day_object_path(config.name, "signals", START)
    real_start = workers.start_backtest_ahead

    def start_then_rewrite(*args, **kwargs):  # type: ignore[no-untyped-def]
        future = real_start(*args, **kwargs)
        future.result(timeout=120)  # the worker has read (and stat'ed) the day's objects
        t = layout.target("results")
        table = pq.ParquetFile(io.BytesIO(ucs.download_bytes_sync(t, path))).read()
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="snappy")  # the IO manager writes zstd
        ucs.upload_to_gcs_sync(t, path, buf.getvalue(), format="bytes")
        return future

    monkeypatch.setattr(workers, "start_backtest_ahead", start_then_rewrite)
    instance = DagsterInstance.ephemeral()
    result = materialize_graph(ucs.root, START, END, instance=instance)
    assert result.success
    log = _messages(instance, result.run_id)
    assert DISCARDED in log and "changed since it read them" in log and path in log
    assert COLLECTED not in log

    rid = config.run_id(START, END)
    run_backtest(config, START, END, ucs=ucs, run_id="direct-run")
    assert _digests(ucs, rid) == _digests(ucs, "direct-run")


def test_a_failure_in_the_overlapped_engine_fails_the_step_with_nothing_half_written(
    ucs: UnifiedCloudService,
) -> None:
    """The third day's 1-minute bars are unreadable: only the backtest process reads them (no
    asset does), so it is the engine started ahead that fails, after two days replayed."""
    write_sample(ucs)
    config = load_config("demo")
    rid = config.run_id(START, END)
    run_backtest(config, START, END, ucs=ucs, run_id=rid)  # an earlier attempt, complete
    t_res, t_ticks = layout.target("results"), layout.target("ticks")
    bars = layout.bars_path(END, config.instruments[0])
    ucs.upload_to_gcs_sync(t_ticks, bars, b"not a parquet file", format="bytes")

    instance = DagsterInstance.ephemeral()
    result = materialize_graph(ucs.root, START, END, instance=instance, raise_on_error=False)
    assert not result.success
    failures = result.get_step_failure_events()
    assert [f.step_key for f in failures] == ["backtest_run"]
    error = failures[0].step_failure_data.error
    assert error is not None and error.cause is not None
    assert error.cause.cls_name == "IsolatedBacktestError"
    assert f"backtest {rid} failed" in error.cause.message
    assert bars in error.cause.message  # the object the engine could not read
    assert COLLECTED in _messages(instance, result.run_id)

    summary = ucs.download_from_gcs_sync(t_res, layout.result_path(rid, "summary.json"))
    assert summary["status"] == "FAILED" and bars in summary["error"]
    for name in layout.RESULT_PARQUETS:  # the earlier attempt's complete results are gone
        assert not ucs.exists_sync(t_res, layout.result_path(rid, name)), name
    assert ucs.exists_sync(t_res, layout.config_path(rid))
    assert "run " + rid in ucs.download_from_gcs_sync(t_res, layout.log_path(rid), format="text")
