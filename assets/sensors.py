"""Sensors: a configuration's day launched once its inputs exist; a chunked backtest stitched.

``inputs_ready_sensor`` waits for a day's inputs instead of failing: it launches a
configuration's day once they exist.

That sensor looks at the last ``BACKTEST_SENSOR_LOOKBACK_DAYS`` complete UTC days (default 3) for
every active configuration. A (configuration, day) is requested once its instruments, signals
and ticks objects exist and no run of it exists yet; while any is missing the sensor returns a
``SkipReason`` that names what it waits for. Run keys are those of the T+1 schedule
(``{config}:{day}``), and runs already launched by the schedule are found by their tags.

``chunked_backtest_sensor`` finishes the backtests whose chunks were queued as runs of their own
(``launch --as-runs``): once every chunk run of a backfill has succeeded it queues the one stitch
run (run key ``stitch:{backfill}``, so never twice), and a chunk run that ended without success
and without recording it (a killed or canceled run; an op failure records itself) marks the
backtest FAILED unless a later run superseded it. It reads run records, not events: a backfill
whose chunk runs ended while the daemon was down is still stitched.
"""

import json
import os
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.jobs import run_request
from backtest_pipeline import layout
from backtest_pipeline.config import active_config_names, load_config
from backtest_pipeline.run.inputs import missing_inputs
from backtest_pipeline.run.runner import record_failure
from launch import (
    BACKFILL_TAG,
    CHUNK_JOB_NAME,
    CHUNK_OP,
    CHUNK_TAG,
    CHUNKS_TAG,
    RUN_ID_TAG,
    STITCH_JOB_NAME,
    STITCH_OP,
)
from resources.ucs_resource import UCSResource

LOOKBACK_DAYS = int(os.environ.get("BACKTEST_SENSOR_LOOKBACK_DAYS", "3"))
#: Runs updated this long before the cursor are looked at again: a run's record may commit after
#: a later one's; the stitch is deduplicated by its run key and a FAILED mark is written once.
RESCAN_S = 300
ENDED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def _already_run(context: SensorEvaluationContext, config_name: str, day: date) -> bool:
    records = context.instance.get_run_records(
        RunsFilter(
            tags={"backtest/config": config_name, "dagster/partition": day.isoformat()},
            statuses=[
                s
                for s in DagsterRunStatus
                if s not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
            ],
        ),
        limit=1,
    )
    return bool(records)


def ready_requests(
    context: SensorEvaluationContext, ucs: UCSResource, today: date
) -> SensorResult | SkipReason:
    client = ucs.client()
    requests, waiting = [], []
    days = [today - timedelta(days=i) for i in range(LOOKBACK_DAYS, 0, -1)]
    for name in active_config_names():
        config = load_config(name)
        for day in days:
            if _already_run(context, name, day):
                continue
            missing = missing_inputs(client, config, day)
            if missing:
                waiting.append(
                    f"{name} {day}: waiting for {len(missing)} object(s), e.g. {missing[0]}"
                )
            else:
                requests.append(run_request(name, config, day, "inputs_ready"))
    if not requests:
        return SkipReason(
            "; ".join(waiting) if waiting else "every configuration's recent days have run"
        )
    return SensorResult(run_requests=requests)


@sensor(
    job_name="backtest_job",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.STOPPED,
)
def inputs_ready_sensor(
    context: SensorEvaluationContext, ucs: UCSResource
) -> SensorResult | SkipReason:
    """Requests (configuration, day) runs whose inputs have landed; skips, naming them, until then."""
    return ready_requests(context, ucs, datetime.now(UTC).date())


class ChunkRunEnded(RuntimeError):
    """A chunk run of a backtest ended without success and without recording why."""


def _latest_chunk_runs(instance: DagsterInstance, backfill: str) -> dict[int, DagsterRun]:
    """The newest run of every chunk of a backfill (a re-execution supersedes its parent)."""
    latest: dict[int, DagsterRun] = {}
    records = instance.get_run_records(
        RunsFilter(job_name=CHUNK_JOB_NAME, tags={BACKFILL_TAG: backfill})
    )  # newest first
    for rec in records:
        index = rec.dagster_run.tags.get(CHUNK_TAG, "")
        if index.isdigit() and CHUNKS_TAG in rec.dagster_run.tags:
            latest.setdefault(int(index), rec.dagster_run)
    return latest


def stitch_request(chunk_run: DagsterRun) -> RunRequest:
    """The stitch run of the backfill ``chunk_run`` belongs to: its run config and tags."""
    cfg = chunk_run.run_config
    op = {k: v for k, v in cfg["ops"][CHUNK_OP]["config"].items() if k != "index"}
    keep = ("backtest/", "dagster-k8s/config")
    tags = {k: v for k, v in chunk_run.tags.items() if k.startswith(keep) and k != CHUNK_TAG}
    return RunRequest(
        run_key=f"stitch:{chunk_run.tags[BACKFILL_TAG]}",
        run_config={"resources": cfg["resources"], "ops": {STITCH_OP: {"config": op}}},
        tags=tags,
    )


def _why(instance: DagsterInstance, run: DagsterRun) -> str:
    failures = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    first = failures[0].dagster_event if failures else None
    err = getattr(first.event_specific_data, "error", None) if first else None
    detail = err.message.strip() if err else "no step failure recorded (the run was stopped)"
    return (
        f"chunk run {run.run_id} (chunk {run.tags[CHUNK_TAG]} of {run.tags[CHUNKS_TAG]}, "
        f"backfill {run.tags[BACKFILL_TAG]}) ended {run.status.value}: {detail}"
    )


def _mark_failed(ucs: UCSResource, run: DagsterRun, why: str) -> bool:
    """The backtest of a failed chunk run FAILED (no result object left), unless it already is."""
    op = run.run_config["ops"][CHUNK_OP]["config"]
    settings = run.run_config["resources"]["backtest"]["config"]
    config = load_config(settings["config_name"], settings.get("configs_dir"))
    client = ucs.client()
    path = layout.result_path(config.run_id(op["start"], op["end"]), "summary.json")
    target = layout.target("results")
    exists = client.exists_sync(target, path)
    if exists and client.download_from_gcs_sync(target, path).get("status") == "FAILED":
        return False
    record_failure(client, config, op["start"], op["end"], ChunkRunEnded(why))
    return True


def _superseded(instance: DagsterInstance, run: DagsterRun) -> bool:
    """A stitch of this backfill exists, or a newer backfill of the same backtest was queued."""
    backfill = run.tags[BACKFILL_TAG]
    if instance.get_run_records(
        RunsFilter(job_name=STITCH_JOB_NAME, tags={BACKFILL_TAG: backfill}), limit=1
    ):
        return True
    bt_id = run.tags.get(RUN_ID_TAG)
    if bt_id is None:
        return False
    newest = instance.get_run_records(
        RunsFilter(job_name=CHUNK_JOB_NAME, tags={RUN_ID_TAG: bt_id}), limit=1
    )
    return bool(newest) and newest[0].dagster_run.tags[BACKFILL_TAG] != backfill


def _finish(
    instance: DagsterInstance, ucs: UCSResource, backfill: str, notes: list[str]
) -> RunRequest | None:
    """The backfill's stitch request once all its chunks succeeded; else FAILED marks, notes."""
    latest = _latest_chunk_runs(instance, backfill)
    runs: Sequence[DagsterRun] = list(latest.values())
    if not runs:
        return None
    expected = int(runs[0].tags[CHUNKS_TAG])
    done = [r for r in runs if r.status == DagsterRunStatus.SUCCESS]
    if len(done) == expected and len(latest) == expected:
        return stitch_request(runs[0])
    ended = [r for r in runs if r.status != DagsterRunStatus.SUCCESS and r.status in ENDED]
    for run in ended:
        if not _superseded(instance, run) and _mark_failed(ucs, run, _why(instance, run)):
            notes.append(f"backfill {backfill}: chunk {run.tags[CHUNK_TAG]} marked FAILED")
    notes.append(f"backfill {backfill}: {len(done)}/{expected} chunk runs succeeded")
    return None


def chunked_backtests(context: SensorEvaluationContext, ucs: UCSResource) -> SensorResult:
    """Stitch requests and FAILED marks for the backfills whose chunk runs changed lately."""
    instance = context.instance
    after = json.loads(context.cursor)["after"] if context.cursor else None
    records = instance.get_run_records(
        RunsFilter(
            job_name=CHUNK_JOB_NAME,
            statuses=ENDED,
            updated_after=datetime.fromtimestamp(after - RESCAN_S, UTC) if after else None,
        ),
        order_by="update_timestamp",
        ascending=True,
    )
    # a chunk run without the tags of ``launch`` is no part of a backfill this sensor can finish
    tagged = (r.dagster_run.tags.get(BACKFILL_TAG) for r in records)
    backfills: list[str] = list(dict.fromkeys(b for b in tagged if b))
    requests: list[RunRequest] = []
    notes: list[str] = []
    for backfill in backfills:
        try:
            request = _finish(instance, ucs, backfill, notes)
        except Exception as exc:  # noqa: BLE001 - one broken backfill must not stall the others
            notes.append(f"backfill {backfill}: {type(exc).__name__}: {exc}")
            context.log.error(notes[-1])
            continue
        if request is not None:
            requests.append(request)
    for note in notes:
        context.log.info(note)
    cursor: dict[str, Any] = {
        "after": max((r.update_timestamp.timestamp() for r in records), default=after)
    }
    return SensorResult(
        run_requests=requests,
        skip_reason=None if requests else ("; ".join(notes) or "no chunk run ended"),
        cursor=json.dumps(cursor),
    )


@sensor(
    job_name=STITCH_JOB_NAME,
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
)
def chunked_backtest_sensor(context: SensorEvaluationContext, ucs: UCSResource) -> SensorResult:
    """Queues the stitch of a chunked backtest once all its chunk runs succeeded (see above)."""
    return chunked_backtests(context, ucs)
