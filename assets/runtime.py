"""Where and how a run's steps execute, for the speed-ups that depend on it.

A run on the in-process executor executes all its steps in one process, one after the other.
Its backtest runs in a process of its own (``workers.BacktestWorker``), and starting that process
— an interpreter, NautilusTrader, the engine — takes seconds. So the run starts it at once, and
it gets ready on the second core while the input steps execute; ``backtest_run`` (and the
catalog, which needs NautilusTrader too) then hand it their work. Modules a later step needs are
imported while ``backtest_run`` only waits for its engine.

On executors that run each step in a process or pod of its own (multiprocess, Celery,
Kubernetes) nothing is started ahead of time: ``backtest_run`` spawns its process itself.
"""

import contextlib
import gc
import importlib
import threading
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Executor,
    ExecutorDefinition,
    InitExecutorContext,
    in_process_executor,
)

from backtest_pipeline.run import worker as workers

#: ``in_process_executor`` (and ours, which keeps its name) and the one of ``materialize()``.
IN_PROCESS_EXECUTORS = frozenset({"in_process", "execute_in_process_executor"})
BACKTEST_STEP = "backtest_run"


class _WarmBacktestExecutor(Executor):
    """Dagster's in-process executor, plus: the run's backtest process starts with the run.

    Started before the resources and the compute-log capture are set up (~0.6 s before the
    first step), and stopped when the run ends if the backtest never took it.
    """

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> Any:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        run_id = plan_context.run_id
        gc.freeze()  # the run's job, plan and instance: long-lived (see definitions.py)
        if BACKTEST_STEP in execution_plan.step_keys_to_execute:
            workers.prewarm_worker(run_id)
            plan_context.log.debug(
                f"backtest process started with the run (pid {workers.worker_pid(run_id)})"
            )
        try:
            yield from self._inner.execute(plan_context, execution_plan)
        finally:
            workers.discard_worker(run_id)


def _create_executor(init_context: InitExecutorContext) -> Executor:
    creation_fn = in_process_executor.executor_creation_fn
    assert creation_fn is not None
    return _WarmBacktestExecutor(creation_fn(init_context))


#: The code location's executor: ``in_process_executor`` (same name, same config) that starts
#: the run's backtest process with the run.
in_process_with_warm_backtest = ExecutorDefinition(
    name="in_process",
    config_schema=in_process_executor.config_schema,
    requirements=in_process_executor.get_requirements,
    executor_creation_fn=_create_executor,
    description="Executes all steps in one process; the run's backtest process starts with "
    "the run, so it is ready when backtest_run needs it.",
)


def backtest_runs_in_this_process(context: AssetExecutionContext) -> bool:
    """True when ``backtest_run`` is one of this run's steps and runs in this very process."""
    if context.job_def.executor_def.name not in IN_PROCESS_EXECUTORS:
        return False
    keys = context.run.step_keys_to_execute
    if keys is not None:
        return BACKTEST_STEP in keys
    return AssetKey(BACKTEST_STEP) in context.job_def.asset_layer.executable_asset_keys


def prewarm_backtest(context: AssetExecutionContext) -> None:
    """Start the run's backtest process from its first steps, if the executor has not already.

    For runs whose executor is not ours (``materialize()`` in tests); a no-op otherwise.
    """
    if backtest_runs_in_this_process(context):
        workers.prewarm_worker(context.run.run_id)


def import_in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` in a daemon thread (while the step only waits for another process)."""

    def _load() -> None:
        for name in modules:  # an import error is reported by the step that needs the module
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=_load, name="preload-imports", daemon=True)
    thread.start()
    return thread
