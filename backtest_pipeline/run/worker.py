"""One backtest, one freshly *spawned* process, started ahead of the step that needs it.

NautilusTrader initialises its logging once per process, so a second engine in a long-lived
Dagster worker would write into the first run's log; and its import costs seconds. So each
backtest of the Dagster path runs in its own spawned process, which the run starts as soon as
it begins (its imports warm while the input steps read), and takes when the backtest step comes.
"""

import atexit
import contextlib
import gc
import io
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run import spawn, stages
from backtest_pipeline.run.inputs import DayLoader
from backtest_pipeline.run.stages import CatalogDayLoader, DayBundle
from backtest_pipeline.storage.ucs import UnifiedCloudService

log = logging.getLogger("backtest_pipeline.stages")


def _child(
    root: str, config_json: str, start: str, end: str, run_id: str, bundles: list[DayBundle]
) -> dict[str, Any]:
    return _backtest_outcome(root, config_json, start, end, run_id, CatalogDayLoader(bundles))


def _backtest_outcome(
    root: str,
    config_json: str,
    start: str,
    end: str,
    run_id: str,
    day_loader: DayLoader,
    wait_to_write: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``run_backtest`` in this (worker) process, its outcome as plain data for the pipe."""
    from backtest_pipeline.run.runner import BacktestFailed, run_backtest

    config = BacktestConfig.model_validate_json(config_json)
    ucs = UnifiedCloudService(root)
    try:
        result = run_backtest(
            config,
            start,
            end,
            ucs=ucs,
            run_id=run_id,
            write_results=True,
            day_loader=day_loader,
            wait_to_write=wait_to_write,
        )
    except BacktestFailed as exc:  # its custom __init__ does not survive pickling: send data
        return {
            "status": "FAILED",
            "error": str(exc),
            "run_id": exc.run_id,
            "summary_uri": exc.summary_uri,
        }
    return {
        "status": result.status,
        "summary": result.summary,
        "locations": result.locations,
        "run_id": result.run_id,
    }


class IsolatedBacktestError(RuntimeError):
    """The backtest failed in its process; its FAILED summary and log were written."""


def _warm_imports() -> None:
    """What a backtest imports before its first tick (NautilusTrader, the engine): seconds of work."""
    import backtest_pipeline.engine.driver  # noqa: F401
    import backtest_pipeline.run.runner  # noqa: F401


#: What a worker process runs (``spawn.spawn_worker_process``): :func:`serve`.
ENTRY = f"{__name__}:serve"


def serve(conn: Connection) -> None:
    """Body of a :class:`BacktestWorker` process: warm up, serve tasks, exit after the last.

    It says ``("ready", None)`` once warm. Tasks are ``(fn, args, last)``; the outcome of each
    goes back as ``("ok", value)`` or ``("error", text)``. After the ``last`` task (the backtest) the process leaves with
    ``os._exit``: the task wrote everything it writes (results, log) before returning, and
    tearing down a heap full of engine objects costs ~1 s that the waiting step would pay.
    """
    try:
        _warm_imports()
    except Exception:  # pragma: no cover - the task itself reports the import error
        log.debug("warm-up imports failed", exc_info=True)
    gc.freeze()  # the imported modules: never garbage, no need to walk them in every collection
    gc.enable()  # paused while they were imported (spawn.worker_main)
    code = 0
    try:
        conn.send(("ready", None))
        while True:
            try:
                fn, args, last = conn.recv()
            except (EOFError, OSError):  # the owner closed the worker (or died)
                break
            try:
                outcome: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:  # sent as text: an exception may not survive pickling
                outcome = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            try:
                conn.send(outcome)
            except Exception:  # pragma: no cover - the owner sees EOF and reports it
                code = 1
                break
            if last:
                break
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


class BacktestWorker:
    """A spawned process that imports the engine ahead of time, then runs ONE backtest.

    Why: a backtest runs in its own process (NautilusTrader initialises logging once per
    process), and starting that process — interpreter, NautilusTrader, the engine — costs
    several seconds. Started when a run begins, the worker does that on the second core while
    the run's input steps execute, so ``backtest_run`` only waits for the engine itself. Before
    the backtest it may serve other NautilusTrader work of the same run (:meth:`call`: the
    catalog's instruments), which then never loads NautilusTrader into the Dagster process.
    One backtest per worker (:meth:`run`, the last task): two engines never share a process.
    """

    def __init__(self, started: spawn.Started | None = None) -> None:
        """``started``: a process already spawned (``spawn.take_spare``), else one is now."""
        self._started = started or spawn.spawn_worker_process(ENTRY)
        self._proc, self._conn = self._started.proc, self._started.conn
        self._done = False
        self._ready = False
        self._lock = threading.Lock()
        self._sender: ThreadPoolExecutor | None = None
        self._sender_lock = threading.Lock()
        atexit.register(self.close)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return not self._done and self._proc.is_alive()

    def ready(self) -> bool:
        """True once the warm-up is over (never blocks): a task would start at once."""
        with self._lock:
            if not self._ready and not self._done:
                try:
                    if self._conn.poll():
                        self._ready = self._conn.recv()[0] == "ready"
                except (EOFError, OSError):
                    return False
            return self._ready and self.alive()

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], last: bool) -> Any:
        with self._lock:
            if self._done:
                raise RuntimeError("this BacktestWorker has run its backtest and exited")
            self._done = last
            try:
                if not self._ready:  # wait for the warm-up to end
                    self._ready = self._conn.recv()[0] == "ready"
                self._conn.send((fn, args, last))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._done = True
                self.close()
                raise IsolatedBacktestError(
                    f"the backtest process {self._proc.pid} died (exit code {self._proc.exitcode})"
                ) from exc
        if last:
            self.close()
        if status != "ok":
            raise IsolatedBacktestError(f"the backtest process failed: {value}")
        return value

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker (module-level ``fn``, picklable args); it stays alive."""
        return self._submit(fn, args, last=False)

    def submit(self, fn: Callable[..., Any], *args: Any) -> "Future[Any]":
        """``fn(*args)`` in the worker without waiting for it: its outcome as a future.

        Why: a step can hand the worker a day's work as soon as that day is ready and go on
        with the next day while the worker (on the other core) does it. Tasks run one at a time
        in the order given (one sending thread), and all of them before :meth:`run` (which waits
        for them); a task that fails, or a worker that dies or is closed, fails only its future.
        """
        with self._sender_lock:  # not the worker's lock: a task may be running under that one
            if self._done:
                raise RuntimeError("this BacktestWorker has run its backtest and exited")
            if self._sender is None:
                self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-send")
            return self._sender.submit(self._submit, fn, args, False)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The worker's last task (the backtest): ``fn(*args)``, then the process exits.

        Tasks given to :meth:`submit` run first (their futures hold their outcomes).
        """
        if self._sender is not None:
            self._sender.shutdown(wait=True)
        return self._submit(fn, args, last=True)

    def close(self) -> None:
        """Stop the worker and reap it: an idle one is killed (it holds only imports and
        stateless helper results); after its last task it has exited or is about to."""
        atexit.unregister(self.close)
        if self._sender is not None:  # a queued task fails its future; none waits for it
            self._sender.shutdown(wait=False, cancel_futures=True)
        spawn.stop(self._started, kill=not self._done)
        self._done = True


_WORKERS: dict[str, BacktestWorker] = {}
_WORKERS_LOCK = threading.Lock()


def prewarm_worker(key: str) -> bool:
    """Start the backtest process of ``key`` (a Dagster run id) now, if not started yet.

    At most one idle worker per process: one left by another run (whose backtest step never
    ran) is stopped. A spare started before the run (``spawn.start_spare``) is taken first:
    True when it was (the process has been warming since).
    """
    with _WORKERS_LOCK:
        if key in _WORKERS and _WORKERS[key].alive():
            return False
        for other in [k for k in _WORKERS if k != key]:
            _WORKERS.pop(other).close()
        spare = spawn.take_spare(ENTRY)
        _WORKERS[key] = BacktestWorker(spare)
        return spare is not None


def take_worker(key: str) -> BacktestWorker | None:
    """The warm worker of ``key`` (removed from the pool), or None if there is none alive."""
    with _WORKERS_LOCK:
        worker = _WORKERS.pop(key, None)
    if worker is not None and not worker.alive():
        worker.close()
        return None
    return worker


def pooled_worker(key: str) -> BacktestWorker | None:
    """The idle worker the pool holds for ``key``, warm or still starting (None if none)."""
    with _WORKERS_LOCK:
        return _WORKERS.get(key)


def ready_worker(key: str) -> BacktestWorker | None:
    """``key``'s worker if it is warm already, left in the pool (for tasks before the backtest).

    None while it is still starting: a step that can do its work itself does not wait for it.
    """
    with _WORKERS_LOCK:
        worker = _WORKERS.get(key)
    return worker if worker is not None and worker.ready() else None


def worker_pid(key: str) -> int | None:
    """Process id of ``key``'s worker (for logs), None if it has none."""
    with _WORKERS_LOCK:
        worker = _WORKERS.get(key)
    return worker.pid if worker is not None else None


def discard_worker(key: str) -> None:
    """Stop ``key``'s worker if it was never used (the run ends without a backtest)."""
    with _WORKERS_LOCK:
        worker = _WORKERS.pop(key, None)
    if worker is not None:
        worker.close()


def run_backtest_isolated(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    bundles: Sequence[DayBundle],
    run_id: str | None = None,
    worker: BacktestWorker | None = None,
) -> dict[str, Any]:
    """Run ``run_backtest`` over the bundles' days in its own process; returns summary + locations.

    ``worker``: a process started earlier by :func:`prewarm_worker` (warm imports); without
    one, a new process is spawned here.
    """
    days = sorted(b.day for b in bundles)
    if not days:
        raise ValueError("no day to backtest")
    rid = run_id or config.run_id(days[0], days[-1])
    out = (worker or BacktestWorker()).run(
        _child,
        ucs.root,
        config.model_dump_json(),
        days[0].isoformat(),
        days[-1].isoformat(),
        rid,
        list(bundles),
    )
    return _completed(out)


# ---- the backtest started ahead of its step, on the catalogs as they are stored ----------------
#
# The Dagster path completes each day's catalog in the worker as soon as that day's tick slices
# are stored (their trade files written by the Dagster process, ``stages.stage_trades``; the
# worker adds the books, the instruments and the manifest). The CLI's engine replays day d
# while its prefetch thread reads day d + 1; to do the same, the worker starts the backtest in a thread of its own as soon as its inputs are known
# (:func:`speculate_task`), its day loader waiting for each day's catalog to be stored by this
# process (:func:`catalog_task`), while the worker's loop goes on writing the next catalogs.
# The run writes nothing until the step that owns it collects it (:func:`collect_task`): if the
# step finds other arguments than those the run was started with, it stops the process instead,
# and nothing of the speculative run is left in storage.


class _DayCatalog:
    """A day's catalog as this process stored it: set once stored, and how many times."""

    def __init__(self) -> None:
        self.stored = threading.Event()
        self.builds = 0


#: Catalog days stored by this process, by (root, scope, day).
_CATALOGS: dict[tuple[str, str, date], _DayCatalog] = {}
_CATALOGS_LOCK = threading.Lock()

#: The input objects a day's backtest bundle is made of, by asset name → results-bucket path.
BUNDLE_INPUTS = ("instruments", "signals", "signal_intervals", "funding_rates")


def _day_catalog(root: str, scope: str, day: date) -> _DayCatalog:
    with _CATALOGS_LOCK:
        return _CATALOGS.setdefault((root, scope, day), _DayCatalog())


def catalog_task(
    root: str,
    day: date,
    scope: str,
    slices: Any,
    instruments: Any,
    books: Any = None,
    staged: stages.StagedTrades | None = None,
) -> dict[str, Any]:
    """``stages.build_catalog_task`` as a worker task; a backtest started ahead is told the day
    is stored (its day loader waits for exactly that)."""
    manifest = stages.build_catalog_task(root, day, scope, slices, instruments, books, staged)
    entry = _day_catalog(root, scope, day)
    with _CATALOGS_LOCK:
        entry.builds += 1
    entry.stored.set()
    return manifest


class _CatalogsAsStored:
    """A :class:`CatalogDayLoader` that first waits until this process has stored the day's
    catalog: the engine replays day d while the worker's loop writes day d + 1.

    It notes which build of each day it read (:meth:`rebuilt`): a day whose catalog was
    written again afterwards (its step rebuilt it with other arguments) was read as it no
    longer is.
    """

    def __init__(self, root: str, scope: str, bundles: Sequence[DayBundle]) -> None:
        self._root, self._scope = root, scope
        self._inner = CatalogDayLoader(bundles)
        self._read: dict[date, int] = {}

    def __call__(
        self, ucs: UnifiedCloudService, config: BacktestConfig, day: date, **kwargs: Any
    ) -> Any:
        entry = _day_catalog(self._root, self._scope, day)
        entry.stored.wait()
        with _CATALOGS_LOCK:
            self._read[day] = entry.builds
        return self._inner(ucs, config, day, **kwargs)

    def rebuilt(self) -> list[date]:
        """The days read so far whose catalog this process has stored again since."""
        with _CATALOGS_LOCK:
            return sorted(
                d
                for d, n in self._read.items()
                if _CATALOGS[(self._root, self._scope, d)].builds != n
            )


class _Speculation:
    """A backtest running in a thread of the worker, held before its first write."""

    def __init__(self, loader: _CatalogsAsStored) -> None:
        self.loader = loader
        self.approved = threading.Event()
        self.done = threading.Event()
        self.outcome: dict[str, Any] | None = None
        self.error: str | None = None


_SPECULATIONS: dict[str, _Speculation] = {}


def _read_stored(ucs: UnifiedCloudService, path: str) -> tuple[pa.Table, str]:
    """A stored day object (results bucket) and the generation it was read at.

    Stat, read, stat: an object rewritten meanwhile fails the start (its step then runs the
    backtest itself) rather than pass for the generation the step will compare.
    """
    target = layout.target("results")
    before = ucs.stat_sync(target, path).generation
    data = ucs.download_bytes_sync(target, path)
    if ucs.stat_sync(target, path).generation != before:
        raise RuntimeError(f"{ucs.uri(target, path)} changed while it was read")
    return pq.ParquetFile(io.BytesIO(data)).read(), before


def speculate_task(
    root: str,
    config_json: str,
    run_id: str,
    scope: str,
    inputs: list[tuple[str, dict[str, str]]],
) -> dict[str, str]:
    """Start the run's backtest now, in a thread of this worker; return what it read.

    ``inputs``: per day (ISO), the stored objects of :data:`BUNDLE_INPUTS` (results-bucket
    paths). The engine replays each day once this process has stored its catalog
    (:func:`catalog_task`) and writes nothing until :func:`collect_task`. Returns each object's
    generation as read, for the owning step to compare with the ones it would use.
    """
    if run_id in _SPECULATIONS:
        raise RuntimeError(f"a backtest of {run_id} was already started in this process")
    config = BacktestConfig.model_validate_json(config_json)
    ucs = UnifiedCloudService(root)
    generations: dict[str, str] = {}
    bundles: list[DayBundle] = []
    for day_iso, paths in inputs:
        tables: dict[str, pa.Table] = {}
        for name in BUNDLE_INPUTS:
            tables[name], generations[paths[name]] = _read_stored(ucs, paths[name])
        bundles.append(
            stages.make_bundle(
                ucs,
                config,
                scope,
                date.fromisoformat(day_iso),
                tables["instruments"],
                tables["signals"],
                tables["signal_intervals"],
                tables["funding_rates"],
            )
        )
    days = sorted(b.day for b in bundles)
    if not days:
        raise ValueError("no day to backtest")
    loader = _CatalogsAsStored(root, scope, bundles)
    spec = _Speculation(loader)

    def body() -> None:
        try:
            spec.outcome = _backtest_outcome(
                root,
                config_json,
                days[0].isoformat(),
                days[-1].isoformat(),
                run_id,
                loader,
                spec.approved.wait,
            )
        except BaseException as exc:  # sent as text by collect_task
            spec.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:
            spec.done.set()

    _SPECULATIONS[run_id] = spec
    threading.Thread(target=body, name="speculative-backtest", daemon=True).start()
    return generations


def collect_task(run_id: str) -> dict[str, Any]:
    """The worker's last task after :func:`speculate_task`: let the run write, wait for it.

    Unless a day it read was rebuilt since (every catalog is final by now): then the outcome
    is ``DISCARDED``, the run never writes, and the process exits with it.
    """
    spec = _SPECULATIONS.pop(run_id, None)
    if spec is None:
        raise RuntimeError(f"no backtest of {run_id} was started in this process")
    rebuilt = spec.loader.rebuilt()
    if rebuilt:
        return {
            "status": "DISCARDED",
            "run_id": run_id,
            "error": f"the catalog of {rebuilt[0]} was written again after it was read",
        }
    spec.approved.set()
    spec.done.wait()
    if spec.error is not None or spec.outcome is None:
        raise RuntimeError(spec.error or "the backtest thread ended without an outcome")
    return spec.outcome


def start_backtest_ahead(
    worker: BacktestWorker,
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    run_id: str,
    scope: str,
    inputs: list[tuple[str, dict[str, str]]],
) -> "Future[Any]":
    """Queue :func:`speculate_task` in ``worker``; its future holds the generations it read."""
    return worker.submit(speculate_task, ucs.root, config.model_dump_json(), run_id, scope, inputs)


def collect_backtest(worker: BacktestWorker, run_id: str) -> dict[str, Any] | str:
    """The outcome of the backtest :func:`start_backtest_ahead` started (the worker's last task).

    A string when it was discarded instead (why): it wrote nothing, its process has exited,
    and the caller runs the backtest itself. Raises :class:`IsolatedBacktestError` as
    :func:`run_backtest_isolated` does: the run failed (its FAILED summary and log written, no
    result Parquet) or its process died.
    """
    out = worker.run(collect_task, run_id)
    if out["status"] == "DISCARDED":
        return str(out["error"])
    return _completed(out)


def _completed(out: dict[str, Any]) -> dict[str, Any]:
    if out["status"] != "COMPLETED":
        raise IsolatedBacktestError(
            f"backtest {out['run_id']} failed: {out.get('error')} (see {out.get('summary_uri')})"
        )
    return out
