"""Where and how a run's steps execute, for the speed-ups that depend on it.

A run on the in-process executor executes all its steps in one process, one after the other.
Its backtest runs in a process of its own (``workers.BacktestWorker``), and starting that process
— an interpreter, NautilusTrader, the engine — takes seconds. So the run starts it at once, and
it gets ready on the second core while the input steps execute; ``backtest_run`` (and the
catalog, which needs NautilusTrader too) then hand it their work. What a later step needs is
imported (and warmed up) while ``backtest_run`` only waits for its engine.

The catalog's days are handed to that process as soon as ``tick_slices`` has stored each of
them (:func:`prebuild`): this process writes the day's trade files (NumPy and Arrow) and the
worker completes the catalog, while this one fetches day *d + 1*; ``nautilus_catalog`` then
takes what was built (:func:`take_prebuilt`) instead of starting the same work after the last
day. The worker also runs the backtest started ahead on those catalogs, so every catalog second
kept out of it is a second its engine does not wait. The catalog is the bytes the worker would
write from the stored slices alone (``tests/test_dagster_catalog.py``).

On executors that run each step in a process or pod of its own (multiprocess, Celery,
Kubernetes) nothing is started ahead of time: ``backtest_run`` spawns its process itself.
"""

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
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
CATALOG_STEP = "nautilus_catalog"
#: Days handed to the worker ahead of their step and not yet done, at most: each holds its
#: input (a day of tick slices) until the worker has it, and a long range must not pile them up.
MAX_PENDING_PREBUILDS = 4


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
            spare = workers.prewarm_worker(run_id)
            plan_context.log.debug(
                f"backtest process started with the run (pid {workers.worker_pid(run_id)}"
                + (", spawned as the command started)" if spare else ")")
            )
        try:
            yield from self._inner.execute(plan_context, execution_plan)
        finally:
            drop_prebuilt(run_id)
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


def step_runs_in_this_process(context: AssetExecutionContext, step: str) -> bool:
    """True when the asset step ``step`` is one of this run's steps and runs in this process."""
    if context.job_def.executor_def.name not in IN_PROCESS_EXECUTORS:
        return False
    keys = context.run.step_keys_to_execute
    if keys is not None:
        return step in keys
    return AssetKey(step) in context.job_def.asset_layer.executable_asset_keys


def backtest_runs_in_this_process(context: AssetExecutionContext) -> bool:
    """True when ``backtest_run`` is one of this run's steps and runs in this very process."""
    return step_runs_in_this_process(context, BACKTEST_STEP)


def has_worker(context: AssetExecutionContext) -> bool:
    """True when the run's backtest process is pooled in this process (started, not taken)."""
    worker = workers.pooled_worker(context.run.run_id)
    return worker is not None and worker.alive()


@dataclass(frozen=True)
class _Prebuilt:
    """A day of a later step's work, running in the run's worker since an earlier step."""

    match: tuple[Any, ...]
    future: "Future[Any]"


_PREBUILT: dict[tuple[str, str, str], _Prebuilt] = {}
_PREBUILT_LOCK = threading.Lock()
#: The days of each (run, step) done in the run's worker: taken as prebuilt
#: (:func:`take_prebuilt`) or handed to it by the step (:func:`note_worker_day`).
_TAKEN: dict[tuple[str, str], set[str]] = {}
#: The ``day`` of work that covers a step's whole run (the backtest started ahead).
WHOLE_RUN = "*"


def _worker_for(context: AssetExecutionContext, step: str) -> workers.BacktestWorker | None:
    """The run's live pooled worker, if ``step`` runs later in this process; else None."""
    if not step_runs_in_this_process(context, step):
        return None
    worker = workers.pooled_worker(context.run.run_id)
    return worker if worker is not None and worker.alive() else None


def _pending_prebuilds() -> int:
    return sum(not p.future.done() for k, p in _PREBUILT.items() if k[2] != WHOLE_RUN)


def can_prebuild(context: AssetExecutionContext, step: str) -> bool:
    """Whether :func:`prebuild` would start a day of ``step`` now: a caller with work of its
    own to do for the task (the staged trade files) does it only then."""
    if _worker_for(context, step) is None:
        return False
    with _PREBUILT_LOCK:
        return _pending_prebuilds() < MAX_PENDING_PREBUILDS


def prebuild(
    context: AssetExecutionContext,
    step: str,
    day: str,
    match: tuple[Any, ...],
    fn: Callable[..., Any],
    *args: Any,
    cleanup: Callable[[], None] | None = None,
) -> bool:
    """Start ``fn(*args)`` (day ``day`` of the later step ``step``) in the run's worker now.

    Only when ``step`` runs later in this process and the run's worker is pooled here, and
    while fewer than ``MAX_PENDING_PREBUILDS`` such days are pending; True if started. ``match``
    is what the step compares with its own inputs before it takes the outcome
    (:func:`take_prebuilt`): anything different and it does the work itself. ``cleanup`` runs
    once the task is over, however it ended (cancelled with the run included), or at once if
    it is not started: what was made for the task alone (its staged files) never outlives it.
    """
    run_id = context.run.run_id
    worker = _worker_for(context, step)
    future: Future[Any] | None = None
    if worker is not None:
        with _PREBUILT_LOCK:
            for other in [k for k in _PREBUILT if k[0] != run_id]:  # another run's leftovers
                _PREBUILT.pop(other).future.cancel()
            if _pending_prebuilds() < MAX_PENDING_PREBUILDS:
                with contextlib.suppress(RuntimeError):  # the worker has run its backtest
                    future = worker.submit(fn, *args)
            if future is not None:
                _PREBUILT[(run_id, step, day)] = _Prebuilt(match, future)
    if cleanup is not None:
        if future is None:
            cleanup()
        else:
            future.add_done_callback(lambda _done: cleanup())
    return future is not None


def start_ahead(
    context: AssetExecutionContext,
    step: str,
    match: tuple[Any, ...],
    start: Callable[[workers.BacktestWorker], "Future[Any]"],
) -> bool:
    """Start the whole of the later step ``step`` in the run's worker now (``start(worker)``).

    As :func:`prebuild` (only if ``step`` runs later in this process, the worker is pooled
    here), once per run and step, and not counted among the pending days: it is the work those
    days feed. The step takes it with :func:`take_started` (day :data:`WHOLE_RUN`).
    """
    run_id = context.run.run_id
    worker = _worker_for(context, step)
    if worker is None:
        return False
    with _PREBUILT_LOCK:
        if (run_id, step, WHOLE_RUN) in _PREBUILT:
            return False
        try:
            future = start(worker)
        except RuntimeError:  # the worker has run its backtest already
            return False
        _PREBUILT[(run_id, step, WHOLE_RUN)] = _Prebuilt(match, future)
    return True


def take_prebuilt(run_id: str, step: str, day: str, match: tuple[Any, ...]) -> Any | None:
    """The outcome of day ``day`` of ``step`` started by :func:`prebuild` (waits for it).

    None when none was started, its ``match`` differs from the step's, or it failed: the step
    then does the work itself (and reports its own error, if any).
    """
    started, value = take_started(run_id, step, day, match)
    return value if started else None


def take_started(
    run_id: str, step: str, day: str, match: tuple[Any, ...] | None
) -> tuple[bool, Any | None]:
    """:func:`take_prebuilt`, and whether that work had been started at all.

    For work whose start occupies the worker (the backtest started ahead): a step that finds it
    started with other arguments (``match`` None: the step cannot tell) must stop the worker
    rather than take it. ``(started, outcome)``; the outcome is None unless it matches.
    """
    with _PREBUILT_LOCK:
        pre = _PREBUILT.pop((run_id, step, day), None)
    if pre is None:
        return False, None
    if match is None or not _same(pre.match, match):
        return True, None
    try:
        value = pre.future.result()
    except Exception:  # the step's own attempt says what is wrong
        return True, None
    with _PREBUILT_LOCK:
        _TAKEN.setdefault((run_id, step), set()).add(day)
    return True, value


def note_worker_day(run_id: str, step: str, day: str) -> None:
    """Day ``day`` of ``step`` was done by the run's worker at the step's own request."""
    with _PREBUILT_LOCK:
        _TAKEN.setdefault((run_id, step), set()).add(day)


def worker_days(run_id: str, step: str) -> frozenset[str]:
    """The days of ``step`` in ``run_id`` done in the run's worker so far (taken as prebuilt,
    or noted by :func:`note_worker_day`): what a backtest started there could have read."""
    with _PREBUILT_LOCK:
        return frozenset(_TAKEN.get((run_id, step), ()))


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Element-wise equality; Arrow tables compared by content, schema and its metadata."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, pa.Table) or isinstance(y, pa.Table):
            if not (isinstance(x, pa.Table) and isinstance(y, pa.Table) and x.equals(y, True)):
                return False
        elif x != y:
            return False
    return True


def drop_prebuilt(run_id: str) -> None:
    """Forget the days started ahead for ``run_id`` that no step took (the run ends)."""
    with _PREBUILT_LOCK:
        for key in [k for k in _PREBUILT if k[0] == run_id]:
            _PREBUILT.pop(key).future.cancel()
        for taken in [k for k in _TAKEN if k[0] == run_id]:
            del _TAKEN[taken]


def prewarm_backtest(context: AssetExecutionContext) -> None:
    """Start the run's backtest process from its first steps, if the executor has not already.

    For runs whose executor is not ours (``materialize()`` in tests); a no-op otherwise.
    """
    if backtest_runs_in_this_process(context):
        workers.prewarm_worker(context.run.run_id)


def call_in_background(fn: Callable[[], None]) -> threading.Thread:
    """``fn()`` in a daemon thread (while the step only waits for another process); an error
    is left to the step that needs what ``fn`` prepares."""

    def _call() -> None:
        with contextlib.suppress(Exception):
            fn()

    thread = threading.Thread(target=_call, name="preload", daemon=True)
    thread.start()
    return thread
