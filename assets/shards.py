"""``sharded_backtest_job``: one long backtest as steps — plan → one step per shard → stitch.

The thin Dagster shell of ``backtest_pipeline.run.shards``: the plan (shards and their warm-up
days) becomes dynamic outputs, each shard a step that runs wherever the job's executor runs steps
(local processes, Celery workers, Kubernetes jobs), and the stitch a step that checks every
boundary exactly and re-runs a failed one itself. Shard results travel through the results
bucket (``shards/{run_id}/{dagster run id}/…``), step outputs through :class:`UCSPickleIOManager`:
nothing goes through a disk another worker cannot see. A chunked backfill (``launch --chunk``) is
this job with one shard per calendar chunk, so it is one backtest, not one per chunk.

The executor is the deployment's choice, read when the code location loads
(``$BACKTEST_SHARD_EXECUTOR``): ``multiprocess`` (default), ``in_process``, ``celery`` (broker and
backend from ``$BACKTEST_CELERY_BROKER`` / ``$BACKTEST_CELERY_BACKEND``) or ``k8s``
(``k8s_job_executor``: each step a Kubernetes Job).

The same protocol with the chunks as queued runs (``launch --as-runs``): ``backtest_chunk_job``
is one chunk of one backtest (its plan recomputed from the run config, the chunk's result stored
under ``shards/{run_id}/{backfill}/``), and ``backtest_stitch_job`` the stitch, queued by
``assets.sensors.chunked_backtest_sensor`` once every chunk run of the backfill has succeeded. A
chunk run writes no result object; only the stitch does, once, through the same
``runner.stitch_backtest`` as the stitch step.
"""

import os
from collections.abc import Iterator

from dagster import (
    Config,
    DynamicOut,
    DynamicOutput,
    ExecutorDefinition,
    OpExecutionContext,
    Out,
    RetryPolicy,
    in_process_executor,
    job,
    multiprocess_executor,
    op,
)
from pydantic import Field

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run import runner, stages
from backtest_pipeline.run import shards as shards_mod
from backtest_pipeline.run.shards import ShardPlan
from backtest_pipeline.storage.ucs import UnifiedCloudService
from launch import (
    BACKFILL_TAG,
    CHUNK_JOB_NAME,
    CHUNK_TAG,
    CHUNKS_TAG,
    POD_RESOURCES,
    RUN_ID_TAG,
    SHARDED_JOB_NAME,
    STITCH_JOB_NAME,
    chunk_range,
)
from resources.settings import BacktestSettings, tag_run
from resources.ucs_resource import UCSResource

JOB_NAME = SHARDED_JOB_NAME
IO_MANAGER_KEY = "shard_io"
EXECUTOR_ENV = "BACKTEST_SHARD_EXECUTOR"
#: Celery settings that make a worker lost in the middle of a shard harmless: the task is
#: acknowledged only once done, and requeued (to another worker) when its process dies.
CELERY_RELIABILITY = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


class ShardedRunConfig(Config):
    """What to backtest as one run: the days, and how they are cut into shards."""

    start: str = Field(description="first UTC day, YYYY-MM-DD")
    end: str = Field(description="last UTC day (inclusive)")
    shards: int = Field(default=2, ge=1, description="time shards (ignored when chunk is set)")
    chunk: str = Field(
        default="none",
        description="none | year | quarter | month | day: one shard per calendar chunk",
    )
    warmup_days: int = Field(default=shards_mod.WARMUP_DAYS, ge=0)


def shard_executor() -> ExecutorDefinition:
    """The executor named by ``$BACKTEST_SHARD_EXECUTOR`` (see the module docstring)."""
    name = os.environ.get(EXECUTOR_ENV, "multiprocess")
    if name == "multiprocess":
        return multiprocess_executor
    if name == "in_process":
        return in_process_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": {"env": "BACKTEST_CELERY_BROKER"},
                "backend": {"env": "BACKTEST_CELERY_BACKEND"},
                "config_source": CELERY_RELIABILITY,
            },
            name="celery",
        )
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"${EXECUTOR_ENV}={name!r}: expected multiprocess, in_process, celery or k8s")


def plan_for(
    config: BacktestConfig, run: ShardedRunConfig, ucs: UnifiedCloudService
) -> list[ShardPlan]:
    """The run's shards: calendar chunks, or ``run.shards`` even ranges; one if refused."""
    days = layout.days_between(run.start, run.end)
    # Resolved once (``auto`` as `backtest run` resolves it); every shard replays the same data.
    market_data = runner.market_data_for(ucs, config, days)
    if shards_mod.refusal(config, market_data):
        plans = shards_mod.plan_shards(days, 1)
    elif run.chunk != "none":
        chunks = chunk_range(days[0], days[-1], run.chunk)  # type: ignore[arg-type]
        plans = shards_mod.plan_chunks(days, chunks, run.warmup_days)
    else:
        plans = shards_mod.plan_shards(days, run.shards, run.warmup_days)
    return shards_mod.with_market_data(plans, market_data)


#: Step pod of a shard on Kubernetes: one engine, sized as a signal-driven run pod.
SHARD_TAGS = {"dagster-k8s/config": {"container_config": {"resources": POD_RESOURCES[False]}}}


@op(out=DynamicOut(ShardPlan, io_manager_key=IO_MANAGER_KEY), tags=SHARD_TAGS)
def plan_shards(
    context: OpExecutionContext,
    config: ShardedRunConfig,
    ucs: UCSResource,
    backtest: BacktestSettings,
) -> Iterator[DynamicOutput[ShardPlan]]:
    """The shards and their warm-up days; the run's stale results removed, its config written."""
    bt_config, client = backtest.load(), ucs.client()
    tag_run(context, backtest, bt_config.strategy_id)
    days = layout.days_between(config.start, config.end)
    with stages.failing_run(client, bt_config, days):
        plans = plan_for(bt_config, config, client)
        runner.begin_results(client, bt_config, bt_config.run_id(days[0], days[-1]))
    why = shards_mod.refusal(bt_config, dict(plans[0].market_data))
    if why:
        context.log.warning(f"one shard only: {why}")
    for p in plans:
        context.log.info(p.label())
        yield DynamicOutput(p, mapping_key=f"s{p.index}")


@op(
    out=Out(io_manager_key=IO_MANAGER_KEY),
    retry_policy=RetryPolicy(max_retries=2, delay=1),
    tags=SHARD_TAGS,
)
def run_shard(
    context: OpExecutionContext, plan: ShardPlan, ucs: UCSResource, backtest: BacktestSettings
) -> tuple[ShardPlan, str]:
    """One shard's engine in its own process; its result stored in the results bucket."""
    bt_config, client = backtest.load(), ucs.client()
    days = [d for d in plan.days]
    run_id = bt_config.run_id(*_run_bounds(context))
    context.log.info(f"{plan.label()} of {run_id}")
    with stages.failing_run(client, bt_config, [*_run_bounds(context)]):
        path = shards_mod.run_one_shard(bt_config, client, plan, run_id, context.run_id)
    context.add_output_metadata({"result": client.uri(layout.target("results"), path),
                                 "days": len(days)})  # fmt: skip
    return plan, context.run_id


@op(out=Out(io_manager_key=IO_MANAGER_KEY), tags=SHARD_TAGS)
def stitch_shards(
    context: OpExecutionContext,
    stored: list[tuple[ShardPlan, str]],
    ucs: UCSResource,
    backtest: BacktestSettings,
) -> str:
    """The shards checked boundary by boundary (failed ones re-run here); the results written."""
    bt_config, client = backtest.load(), ucs.client()
    result = runner.stitch_backtest(bt_config, stored, client)
    info = result.summary["execution_stats"].get("shards", {})
    context.add_output_metadata(
        {
            "run_id": result.run_id,
            "shards": info.get("count", 1),
            "merged_boundaries": "; ".join(info.get("merged_boundaries", [])) or "none",
            "summary": result.locations["summary.json"],
        }
    )
    return result.run_id


def _run_bounds(context: OpExecutionContext) -> tuple[str, str]:
    """The run's first and last day, from its op config (every step sees the same run config)."""
    cfg = context.run_config["ops"]["plan_shards"]["config"]
    return cfg["start"], cfg["end"]


@job(
    name=JOB_NAME,
    executor_def=shard_executor(),
    description="One exact backtest over a long range: plan → shards (steps) → stitch.",
)
def sharded_backtest_job() -> None:
    stitch_shards(plan_shards().map(run_shard).collect())


# ---- the same backtest with its chunks as queued runs (``launch --as-runs``) ---------------


class ChunkedBacktestConfig(ShardedRunConfig):
    """A backtest whose chunks are runs of their own: its range and cut, and their shared id."""

    backfill: str = Field(description="id shared by the chunk runs and the stitch run")
    chunks: int = Field(ge=1, description="how many chunk runs the backtest was queued as")


class ChunkRunConfig(ChunkedBacktestConfig):
    """One chunk run of a :class:`ChunkedBacktestConfig` backtest."""

    index: int = Field(ge=0, description="the chunk this run backtests (0 = the first)")


def chunk_plans(
    config: BacktestConfig, run: ChunkedBacktestConfig, ucs: UnifiedCloudService
) -> list[ShardPlan]:
    """The backtest's shards, as every chunk run and the stitch recompute them; the queued count
    must match (chunk runs of a different cut could never stitch into one backtest)."""
    plans = plan_for(config, run, ucs)
    if len(plans) != run.chunks:
        raise ValueError(
            f"backfill {run.backfill}: {run.start}..{run.end} plans as {len(plans)} chunk(s) "
            f"but was queued as {run.chunks} chunk runs; launch it again"
        )
    return plans


@op(retry_policy=RetryPolicy(max_retries=2, delay=1), tags=SHARD_TAGS)
def run_chunk(
    context: OpExecutionContext,
    config: ChunkRunConfig,
    ucs: UCSResource,
    backtest: BacktestSettings,
) -> None:
    """One chunk, speculating from its warm-up days; its result stored for the stitch run.

    A failure marks the backtest FAILED (``failing_run``); no result object is written here.
    """
    bt_config, client = backtest.load(), ucs.client()
    tag_run(context, backtest, bt_config.strategy_id)
    days = layout.days_between(config.start, config.end)
    _tag_chunk_run(context, config, bt_config.run_id(days[0], days[-1]))
    with stages.failing_run(client, bt_config, days):
        plans = chunk_plans(bt_config, config, client)
        if config.index >= len(plans):
            raise ValueError(f"chunk {config.index} of a backtest of {len(plans)} chunk(s)")
        plan = plans[config.index]
        run_id = bt_config.run_id(days[0], days[-1])
        context.log.info(f"{plan.label()} of {run_id} (backfill {config.backfill})")
        path = shards_mod.run_one_shard(bt_config, client, plan, run_id, config.backfill)
    context.log.info(f"{plan.label()} stored at {client.uri(layout.target('results'), path)}")


def _tag_chunk_run(context: OpExecutionContext, config: ChunkRunConfig, run_id: str) -> None:
    """The backfill tags on a chunk run launched without them (the UI's launchpad), so that the
    sensor can gather it with the other chunks of its backtest."""
    wanted = {
        BACKFILL_TAG: config.backfill,
        CHUNK_TAG: str(config.index),
        CHUNKS_TAG: str(config.chunks),
        RUN_ID_TAG: run_id,
    }
    missing = {k: v for k, v in wanted.items() if context.run.tags.get(k) != v}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


@op(tags=SHARD_TAGS)
def stitch_chunks(
    context: OpExecutionContext,
    config: ChunkedBacktestConfig,
    ucs: UCSResource,
    backtest: BacktestSettings,
) -> None:
    """Every chunk run's result checked boundary by boundary (a failed one re-run here from the
    true state), then the backtest's results written once."""
    bt_config, client = backtest.load(), ucs.client()
    tag_run(context, backtest, bt_config.strategy_id)
    days = layout.days_between(config.start, config.end)
    with stages.failing_run(client, bt_config, days):
        plans = chunk_plans(bt_config, config, client)
    # ``stitch_backtest`` writes the results, or the FAILED summary, itself
    result = runner.stitch_backtest(bt_config, [(p, config.backfill) for p in plans], client)
    info = result.summary["execution_stats"].get("shards", {})
    context.log.info(
        f"{result.run_id}: {info.get('count', 1)} chunk(s), merged boundaries: "
        f"{'; '.join(info.get('merged_boundaries', [])) or 'none'}; {result.locations['summary.json']}"
    )


@job(
    name=CHUNK_JOB_NAME,
    executor_def=in_process_executor,
    description="One chunk of a backtest queued as its own run (launch --as-runs).",
)
def backtest_chunk_job() -> None:
    run_chunk()


@job(
    name=STITCH_JOB_NAME,
    executor_def=in_process_executor,
    description="The chunk runs of one backtest checked and stitched exactly; its results written.",
)
def backtest_stitch_job() -> None:
    stitch_chunks()
