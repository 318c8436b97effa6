"""A local Dagster instance with the repository's run queue, its daemon, and what the queue did.

Why: the run queue of ``dagster.yaml`` (limits, per-strategy tags) is only real when runs go
through ``dagster-daemon`` and ``DefaultRunLauncher`` (one subprocess per run). The 100-run test
and ``scripts/queue_throughput.py`` both need the same steps: a temp ``DAGSTER_HOME`` holding the
repository's ``dagster.yaml`` (optionally with other limits), a daemon process started and
stopped by its process group, a wait for every run to end, and the launch/end time of every run
to check the limits afterwards from the event log (not from polling, which could miss overlaps).
"""

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

REPO_ROOT = Path(__file__).resolve().parent
TERMINAL = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def write_instance_yaml(
    home: Path,
    max_concurrent_runs: int | None = None,
    tag_limits: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``home/dagster.yaml`` = the repository's, with the run limits optionally replaced."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    if max_concurrent_runs is not None:
        cfg["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    if tag_limits is not None:
        cfg["concurrency"]["runs"]["tag_concurrency_limits"] = tag_limits
    (home / "dagster.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


@contextmanager
def daemon(
    home: Path, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` on ``workspace.yaml`` for the instance at ``home``; stopped on exit.

    Started in its own session and stopped by process group (it spawns a code server and the run
    processes), SIGTERM first and SIGKILL if it ignores it for 30 s.
    """
    full_env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(home)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["dagster-daemon", "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_for_runs(
    instance: DagsterInstance,
    run_ids: Sequence[str],
    timeout_s: float,
    proc: subprocess.Popen | None = None,
    poll_s: float = 2.0,
) -> dict[str, DagsterRunStatus]:
    """Statuses once every run is terminal; raises TimeoutError (with counts) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = instance.get_run_records(RunsFilter(run_ids=list(run_ids)))
        statuses = {r.dagster_run.run_id: r.dagster_run.status for r in records}
        if len(statuses) == len(run_ids) and all(s in TERMINAL for s in statuses.values()):
            return statuses
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {proc.returncode}")
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for s in statuses.values():
                counts[s.value] = counts.get(s.value, 0) + 1
            raise TimeoutError(f"runs not finished after {timeout_s:.0f} s: {counts}")
        time.sleep(poll_s)


@dataclass(frozen=True)
class RunWindow:
    """When the queue launched a run and when it ended (event-log timestamps), and its tags."""

    run_id: str
    launched: float
    ended: float
    tags: dict[str, str]


def run_windows(instance: DagsterInstance, run_ids: Iterable[str]) -> list[RunWindow]:
    """Launch (``RUN_STARTING``, written when the daemon dequeues) to end, for every run."""
    out = []
    ended_types = (
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_CANCELED,
    )
    for rid in run_ids:
        run = instance.get_run_by_id(rid)
        assert run is not None, rid
        events = instance.all_logs(rid)
        launched = min(
            e.timestamp
            for e in events
            if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_STARTING
        )
        ended = max(
            e.timestamp
            for e in events
            if e.dagster_event and e.dagster_event.event_type in ended_types
        )
        out.append(RunWindow(rid, launched, ended, dict(run.tags)))
    return sorted(out, key=lambda w: w.launched)


def max_overlap(windows: Sequence[RunWindow], tag: str | None = None) -> int:
    """Most runs in flight at once (per value of ``tag`` if given: the max over the values)."""
    groups: dict[str | None, list[RunWindow]] = {}
    for w in windows:
        groups.setdefault(w.tags.get(tag) if tag else None, []).append(w)
    best = 0
    for ws in groups.values():
        # ends sort before starts at equal times: a run ending as another launches is not overlap
        points = sorted([(w.launched, 1) for w in ws] + [(w.ended, -1) for w in ws])
        cur = 0
        for _, delta in points:
            cur += delta
            best = max(best, cur)
    return best


def throughput(windows: Sequence[RunWindow]) -> dict[str, float]:
    """Runs/min between the first launch and the last end, and the mean launch→end time."""
    span = max(w.ended for w in windows) - min(w.launched for w in windows)
    per_run = sum(w.ended - w.launched for w in windows) / len(windows)
    return {
        "runs": len(windows),
        "span_s": round(span, 1),
        "runs_per_min": round(60 * len(windows) / span, 2),
        "mean_run_wall_s": round(per_run, 2),
    }
