"""Launch many backtest runs through the Dagster instance's run queue: sweeps and chunked backfills.

Why this module exists: 100+ configurations, or five years of days cut into chunks, are many
*runs* of ``backtest_job``. They must go through the instance's own run queue (the
``QueuedRunCoordinator`` + ``dagster-daemon``, or ``K8sRunLauncher`` on Kubernetes) so that the
concurrency limits of ``dagster.yaml`` apply, the UI lists them, and every run is a process of its
own. Nothing here schedules anything: :func:`submit` creates each run from the code location's
job snapshot (as ``dagster job launch`` does) and hands it to ``instance.submit_run``; the daemon
dequeues and launches them.

Every run carries the tags the UI filters on and the queue limits by: ``backtest/config``,
``backtest/strategy``, ``backtest/trigger`` and ``backtest/batch`` (one value per sweep/backfill),
plus Dagster's partition tags (``dagster/partition`` for one day, the range tags otherwise).

A chunked backfill (``--chunk year|quarter|month|day``) is ONE backtest per configuration: one run
of ``sharded_backtest_job`` whose shards are the calendar chunks. The chunks run as steps in
parallel (wherever the executor runs steps), each starting a warm-up day early, and hand state on
exactly: the stitch compares each boundary's state with the one its predecessor ended with and
re-runs a boundary that does not match, so the result is the one-engine run's, positions and
balances carried across every chunk boundary. ``--shards N`` is the same job with N even time
shards. Without either, a configuration's range is one run of the asset job ``backtest_job``
(one engine in one step).

``--as-runs`` queues the same backtest's chunks (or shards) as runs of their own instead: one run
of ``backtest_chunk_job`` per chunk, each a separate entry of the instance's run queue (so the
coordinator's limits spread them over its run slots or pods, and each is retried or re-executed
on its own), sharing a ``backtest/backfill`` id. Each chunk run speculates from its warm-up days
and stores its shard result in the results bucket, exactly as a shard step does; once every
chunk run of the backfill has succeeded, ``chunked_backtest_sensor`` queues one run of
``backtest_stitch_job``, which checks every boundary, re-runs a mismatching one from the true
state and writes the backtest's results once (``assets/shards.py``, ``assets/sensors.py``).

CLI (``DAGSTER_HOME`` names the instance; the daemon of ``scripts/dagster-dev.sh`` launches)::

    uv run python -m launch --configs demo --start 2020-01-01 --end 2024-12-31 --chunk year
    uv run python -m launch --configs demo --start 2024-01-01 --end 2024-03-31 --shards 4
    uv run python -m launch --configs demo --start 2020-01-01 --end 2024-12-31 --chunk month --as-runs
    uv run python -m launch --configs all --start 2024-01-01 --end 2024-01-01
"""

import argparse
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from dagster import DagsterInstance

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, config_names, load_config
from backtest_pipeline.run import shards as shards_mod

Chunk = Literal["none", "year", "quarter", "month", "day"]
JOB_NAME = "backtest_job"
SHARDED_JOB_NAME = "sharded_backtest_job"
CHUNK_JOB_NAME = "backtest_chunk_job"
STITCH_JOB_NAME = "backtest_stitch_job"
#: Tags of the runs of one backtest whose chunks are queued runs (``--as-runs``): the id the
#: chunk runs and their stitch run share, the chunk's index and the count, the backtest run id.
BACKFILL_TAG = "backtest/backfill"
CHUNK_TAG = "backtest/chunk"
CHUNKS_TAG = "backtest/chunks"
RUN_ID_TAG = "backtest/run_id"
REPO_ROOT = Path(__file__).resolve().parent
WORKSPACE_FILE = REPO_ROOT / "workspace.yaml"

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class RunSpec:
    """One run: a configuration over the days ``start..end`` (inclusive), as ONE backtest.

    ``chunk`` / ``shards`` make it a run of ``sharded_backtest_job`` (calendar chunks or even
    time shards as steps, stitched exactly); otherwise it is a run of ``backtest_job``.
    """

    config_name: str
    start: date
    end: date
    chunk: Chunk = "none"
    shards: int = 1
    #: the chunks (shards) as queued runs of their own, stitched by a final run
    as_runs: bool = False

    @property
    def sharded(self) -> bool:
        return self.chunk != "none" or self.shards > 1

    @property
    def job_name(self) -> str:
        if self.as_runs:
            return CHUNK_JOB_NAME
        return SHARDED_JOB_NAME if self.sharded else JOB_NAME

    def partition_tags(self) -> dict[str, str]:
        """One day → ``dagster/partition`` (as the schedule does); several → the range tags.

        The sharded job is not partitioned: its range is in its op config and in the
        ``backtest/start`` / ``backtest/end`` tags instead.
        """
        if self.sharded:
            return {"backtest/start": self.start.isoformat(), "backtest/end": self.end.isoformat()}
        if self.start == self.end:
            return {"dagster/partition": self.start.isoformat()}
        return {RANGE_START: self.start.isoformat(), RANGE_END: self.end.isoformat()}

    def run_config(self) -> dict[str, Any]:
        resources = {"backtest": {"config": {"config_name": self.config_name}}}
        if not self.sharded:
            return {"resources": resources}
        op = {"start": self.start.isoformat(), "end": self.end.isoformat()}
        op |= {"chunk": self.chunk} if self.chunk != "none" else {"shards": self.shards}
        return {"resources": resources, "ops": {"plan_shards": {"config": op}}}

    def runs(
        self, config: BacktestConfig, backfill: str
    ) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """The run config and extra tags of every run this spec queues.

        One run, except with ``as_runs``: one run of ``backtest_chunk_job`` per chunk (their
        count is the plan's, as the chunk runs compute it: ``shard_count``), all tagged with the
        ``backfill`` id the stitch run gathers them by.
        """
        if not self.as_runs:
            return [(self.run_config(), {})]
        cfg = self.run_config()
        op = cfg.pop("ops")["plan_shards"]["config"]
        n = shard_count(config, self)
        tags = {
            BACKFILL_TAG: backfill,
            CHUNKS_TAG: str(n),
            RUN_ID_TAG: config.run_id(self.start, self.end),
        }
        return [
            (
                {
                    **cfg,
                    "ops": {
                        CHUNK_OP: {"config": {**op, "backfill": backfill, "chunks": n, "index": i}}
                    },
                },  # fmt: skip
                {**tags, CHUNK_TAG: str(i)},
            )
            for i in range(n)
        ]


#: The op of ``backtest_chunk_job`` (its config: the backtest's range and cut, and the chunk).
CHUNK_OP = "run_chunk"
STITCH_OP = "stitch_chunks"


def shard_count(config: BacktestConfig, spec: RunSpec) -> int:
    """How many shards (chunks) ``assets.shards.plan_for`` cuts the spec's backtest into.

    Known before anything runs, so that one queued run per chunk can be created; the chunk runs
    recompute the plan and refuse to run if their count differs (e.g. a changed code location).
    """
    if shards_mod.refusal(config):
        return 1
    if spec.chunk != "none":
        return len(chunk_range(spec.start, spec.end, spec.chunk))
    return len(shards_mod.plan_shards(layout.days_between(spec.start, spec.end), spec.shards))


def backtest_tags(config_name: str, strategy_id: str, trigger: str) -> dict[str, str]:
    """The tags every backtest run carries (UI filters; ``dagster.yaml`` per-strategy limits)."""
    return {
        "backtest/config": config_name,
        "backtest/strategy": strategy_id,
        "backtest/trigger": trigger,
    }


#: Pod resources of a run on Kubernetes (``dagster-k8s/config`` tag, read by K8sRunLauncher; ignored
#: by the local launcher). Sized from the benchmark (deploy/README.md "Sizing"): a signal-driven
#: 3-day run of 2 M trades/day peaks at 0.7-0.95 GB RSS in the backtest process, a full-day run at
#: ~2 GB, plus ~0.6 GB for the run worker (dagster + the code location + one day of slices).
POD_RESOURCES: dict[bool, dict[str, dict[str, str]]] = {
    False: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}},
    True: {"requests": {"cpu": "1", "memory": "3500Mi"}, "limits": {"cpu": "2", "memory": "5Gi"}},
}


def k8s_config_tag(full_day: bool) -> dict[str, str]:
    """The ``dagster-k8s/config`` run tag sizing the run's pod for its kind of backtest."""
    import json

    return {
        "dagster-k8s/config": json.dumps(
            {"container_config": {"resources": POD_RESOURCES[bool(full_day)]}}, sort_keys=True
        )
    }


def _chunk_end(d: date, chunk: Chunk) -> date:
    if chunk == "day":
        return d
    if chunk == "month":
        nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
        return nxt - timedelta(days=1)
    if chunk == "quarter":
        q_end_month = ((d.month - 1) // 3 + 1) * 3
        nxt = date(d.year + (q_end_month == 12), q_end_month % 12 + 1, 1)
        return nxt - timedelta(days=1)
    if chunk == "year":
        return date(d.year, 12, 31)
    raise ValueError(f"unknown chunk {chunk!r}")


def chunk_range(start: date | str, end: date | str, chunk: Chunk) -> list[tuple[date, date]]:
    """``[start, end]`` cut at calendar boundaries; consecutive, non-overlapping, covering all days."""
    s, e = layout.parse_day(start), layout.parse_day(end)
    if e < s:
        raise ValueError(f"end {e} is before start {s}")
    if chunk == "none":
        return [(s, e)]
    out = []
    while s <= e:
        stop = min(_chunk_end(s, chunk), e)
        out.append((s, stop))
        s = stop + timedelta(days=1)
    return out


def plan(
    configs: Sequence[str],
    start: date | str,
    end: date | str,
    chunk: Chunk = "none",
    shards: int = 1,
    as_runs: bool = False,
) -> list[RunSpec]:
    """One backtest per configuration of a sweep/backfill over the whole range.

    ``chunk`` or ``shards`` > 1 split that backtest into steps of one run (``RunSpec.sharded``),
    or, with ``as_runs``, into queued runs of their own and a stitch run.
    """
    s, e = layout.parse_day(start), layout.parse_day(end)
    chunk_range(s, e, chunk)  # refuses an empty range or an unknown chunk now, not in the run
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if as_runs and chunk == "none" and shards == 1:
        raise ValueError("as_runs queues a backtest's chunks as runs: name --chunk or --shards N")
    return [RunSpec(name, s, e, chunk, shards, as_runs) for name in configs]


@contextmanager
def code_location_workspace(
    instance: DagsterInstance, workspace_file: str | Path = WORKSPACE_FILE
) -> Iterator[Any]:
    """A workspace request context on ``workspace.yaml`` (one gRPC code server for all launches)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster.version import __version__

    with WorkspaceProcessContext(
        instance=instance,
        version=__version__,
        read_only=False,
        workspace_load_target=WorkspaceFileTarget(paths=[str(workspace_file)]),
    ) as process_context:
        yield process_context.create_request_context()


def submit(
    instance: DagsterInstance,
    specs: Sequence[RunSpec],
    *,
    trigger: str = "sweep",
    batch: str | None = None,
    workspace: Any | None = None,
    workspace_file: str | Path = WORKSPACE_FILE,
    configs_dir: str | None = None,
) -> list[str]:
    """Create and submit one run per spec to the instance's run coordinator; returns run ids.

    With the ``QueuedRunCoordinator`` the runs are QUEUED and the daemon launches them within
    the limits; the same call against a Kubernetes instance queues pods instead. The private
    ``dagster._core`` calls are those of ``dagster job launch`` (pinned dagster version).
    """
    if workspace is None:
        with code_location_workspace(instance, workspace_file) as ws:
            return submit(instance, specs, trigger=trigger, batch=batch, workspace=ws,
                          configs_dir=configs_dir)  # fmt: skip

    from dagster._core.definitions.selector import JobSubsetSelector

    batch = batch or f"{trigger}-{uuid.uuid4().hex[:8]}"
    (location_name,) = workspace.code_location_names
    location = workspace.get_code_location(location_name)
    (repo,) = location.get_repositories().values()
    remote_jobs = {
        name: location.get_job(
            JobSubsetSelector(
                location_name=location_name,
                repository_name=repo.name,
                job_name=name,
                op_selection=None,
            )
        )
        for name in sorted({s.job_name for s in specs})
    }
    configs = {n: load_config(n, configs_dir) for n in {s.config_name for s in specs}}
    run_ids = []
    plan_snapshots: dict[str, Any] = {}
    for spec in specs:
        config = configs[spec.config_name]
        remote_job = remote_jobs[spec.job_name]
        tags = {
            **remote_job.tags,
            **backtest_tags(spec.config_name, config.strategy_id, trigger),
            "backtest/batch": batch,
            **k8s_config_tag(config.full_day),
            **spec.partition_tags(),
        }
        # one id per backtest whose chunks are runs: the stitch gathers its chunk runs by it
        for run_config, run_tags in spec.runs(config, uuid.uuid4().hex[:16]):
            if configs_dir:  # a sweep's variant files (``backtest sweep --dagster``)
                run_config["resources"]["backtest"]["config"]["configs_dir"] = configs_dir
            if spec.job_name not in plan_snapshots:
                # The plan depends on the job and the selection, not on which configuration the
                # resource loads nor on the days (the shards are dynamic outputs): build it once
                # per job (a code-server round trip) for the whole batch.
                plan_snapshots[spec.job_name] = location.get_execution_plan(
                    remote_job,
                    run_config,
                    step_keys_to_execute=None,
                    known_state=None,
                    instance=instance,
                ).execution_plan_snapshot
            plan_snapshot = plan_snapshots[spec.job_name]
            run = instance.create_run(
                job_name=spec.job_name,
                run_config=run_config,
                step_keys_to_execute=plan_snapshot.step_keys_to_execute,
                tags={**tags, **run_tags},
                job_snapshot=remote_job.job_snapshot,
                execution_plan_snapshot=plan_snapshot,
                parent_job_snapshot=remote_job.parent_job_snapshot,
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
                asset_graph=repo.asset_graph,
                # A new run of the whole job: no id chosen, no lineage, no sub-selection.
                **dict.fromkeys(UNSET_RUN_FIELDS),
            )
            instance.submit_run(run.run_id, workspace)
            run_ids.append(run.run_id)
    return run_ids


#: ``create_run`` takes every field by keyword; these stay None for a fresh full-job run.
UNSET_RUN_FIELDS = (
    "run_id",
    "status",
    "root_run_id",
    "parent_run_id",
    "resolved_op_selection",
    "op_selection",
    "asset_selection",
    "asset_check_selection",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch",
        description="Queue one backtest run per configuration on $DAGSTER_HOME.",
    )
    parser.add_argument(
        "--configs", required=True, help="comma list of configs/*.yaml stems, or 'all'"
    )
    parser.add_argument("--start", required=True, help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last UTC day (inclusive)")
    parser.add_argument(
        "--chunk",
        default="none",
        choices=["none", "year", "quarter", "month", "day"],
        help="one backtest whose calendar chunks run as parallel steps, stitched exactly",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="one backtest in N even time shards run as parallel steps, stitched exactly",
    )
    parser.add_argument(
        "--as-runs",
        action="store_true",
        help="queue the --chunk/--shards pieces as runs of their own (the run queue spreads "
        "them), stitched exactly by a final run once all have succeeded",
    )
    parser.add_argument("--trigger", default="cli")
    parser.add_argument("--batch", default=None, help="backtest/batch tag (default: random)")
    parser.add_argument(
        "--configs-dir", default=None, help="configuration files (default: configs)"
    )
    parser.add_argument("--workspace", default=str(WORKSPACE_FILE))
    parser.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    args = parser.parse_args(argv)

    names = (
        config_names(args.configs_dir)
        if args.configs == "all"
        else [n.strip() for n in args.configs.split(",") if n.strip()]
    )
    specs = plan(names, args.start, args.end, args.chunk, args.shards, args.as_runs)
    for s in specs:
        parts = (
            f"{len(chunk_range(s.start, s.end, s.chunk))} {s.chunk} chunks"
            if s.chunk != "none"
            else f"{s.shards} shards"
        )
        if s.as_runs:
            n = shard_count(load_config(s.config_name, args.configs_dir), s)
            parts = f"{n} chunk runs + 1 {STITCH_JOB_NAME} run"
        print(
            f"{s.config_name}\t{s.start}\t{s.end}\t{(s.end - s.start).days + 1} days"
            f"\t{s.job_name}\t{parts}"
        )
    if args.dry_run:
        return 0
    with DagsterInstance.get() as instance:
        run_ids = submit(instance, specs, trigger=args.trigger, workspace_file=args.workspace,
                         batch=args.batch, configs_dir=args.configs_dir)  # fmt: skip
    print(f"queued {len(run_ids)} run(s) on {instance.root_directory}")
    for rid in run_ids:
        print(rid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
