"""Starting a backtest worker process with nothing but the standard library imported here.

Why a module of its own: a worker's warm-up (an interpreter, NautilusTrader, the engine) takes
over a second, so the earlier it is spawned the less anyone waits for it. ``run/worker.py``
imports the pipeline's stages (polars, pyarrow, the catalog code), ~0.4 s before a process could
be spawned from it; this module spawns one at once, and the child imports the rest itself.
The child's body is named, not imported (``entry``: ``"module:function"``, called with the
child's end of the pipe), so this module depends on nothing of the pipeline.
"""

import atexit
import gc
import importlib
import multiprocessing
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import NamedTuple


class Started(NamedTuple):
    """A spawned worker process, the owner's end of its pipe, and the process's temp directory.

    Why a temp directory of its own: a worker that is stopped (a discarded backtest started
    ahead, a run that ends without its backtest) is killed mid-task, and the temp files of that
    task (its engine log, catalogs read back) would stay behind; its owner removes the whole
    directory once the process is reaped (:func:`stop`).
    """

    proc: BaseProcess
    conn: Connection
    tmp: str


def worker_main(entry: str, conn: Connection, tmp: str) -> None:
    """Entry point of a worker process: ``entry``'s module is imported in the child only.

    Its temp files go under ``tmp`` (see :class:`Started`). Without garbage collection while it
    imports (NautilusTrader, polars, pyarrow: long-lived objects, next to no garbage, ~0.15 s of
    collections): ``entry`` resumes it once warm.
    """
    module, name = entry.split(":")
    tempfile.tempdir = tmp
    gc.disable()
    getattr(importlib.import_module(module), name)(conn)


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """While a process is spawned, hide ``__main__``'s file so the child does not re-run it.

    ``multiprocessing``'s spawn re-imports the parent's main script in the child (for functions
    defined there). Under ``dagster asset materialize`` that is the ``dagster`` CLI (~1.2 s of
    imports per backtest); a worker only runs functions of the pipeline, so it needs none of it.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def spawn_worker_process(entry: str) -> Started:
    """A new worker process running ``entry`` (it warms up at once), and the owner's end of
    its pipe."""
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    tmp = tempfile.mkdtemp(prefix="backtest-worker-")
    proc = ctx.Process(
        target=worker_main, args=(entry, child_conn, tmp), name="backtest-worker", daemon=True
    )
    with main_module_hidden():
        proc.start()
    child_conn.close()
    return Started(proc, conn, tmp)


_SPARE: dict[str, Started] = {}
_SPARE_LOCK = threading.Lock()


def start_spare(entry: str) -> None:
    """Spawn a worker running ``entry`` before the run it is for exists; the next run's worker
    takes it (:func:`take_spare`). At most one per entry; one never taken is stopped at exit."""
    with _SPARE_LOCK:
        if entry not in _SPARE:
            _SPARE[entry] = spawn_worker_process(entry)


def take_spare(entry: str) -> Started | None:
    """The spare worker process of ``entry`` (removed), if one was started and is alive."""
    with _SPARE_LOCK:
        started = _SPARE.pop(entry, None)
    if started is not None and not started.proc.is_alive():
        stop(started)
        return None
    return started


def stop(started: Started, kill: bool = True) -> None:
    """Close the pipe, kill the process if ``kill`` and it still runs, reap it, remove its
    temp directory (a process still running after 30 s is killed: its files are removed)."""
    started.conn.close()
    if kill and started.proc.is_alive():
        started.proc.kill()
    started.proc.join(timeout=30)
    if started.proc.is_alive():  # pragma: no cover - a stuck worker
        started.proc.kill()
        started.proc.join()
    shutil.rmtree(started.tmp, ignore_errors=True)


@atexit.register
def _stop_unused_spare() -> None:
    with _SPARE_LOCK:
        for entry in list(_SPARE):
            stop(_SPARE.pop(entry))
