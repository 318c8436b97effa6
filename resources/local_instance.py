"""The local Dagster instance of ``dagster.yaml``: Dagster's own, with cheaper SQLite commits.

Why: a run writes ~200 events to the instance (each asset partition's materialization, every step
start/output/end, every check), and Dagster's SQLite storage opens a new connection for each write
and closes it after the commit. Closing the *last* connection of a WAL database checkpoints it:
the WAL, the database file and its directory are each synced to disk — ~2,000 fsync calls per
3-day run, 2–4 s of waiting on this VM's disk (``strace -f -T -e trace=fsync,fdatasync``), about
as much as all the Dagster bookkeeping of the run on the CPU.

What this instance changes, and only for the SQLite files under its own directory:

* every connection commits with ``PRAGMA synchronous=NORMAL``: in WAL mode that is SQLite's own
  recommended setting — a commit is atomic and the database is never corrupted, by a process
  crash or a power loss; a power loss (not a process crash) may lose the last commits;
* the process holds one idle connection to each database it recently wrote (at most
  ``KEEP_OPEN``), so a write's connection is never the last one and does not checkpoint; SQLite
  checkpoints the WAL by itself every 1,000 pages.

Everything else is ``DagsterInstance``: the same files and layout (an existing instance directory
keeps working), the same run queue, daemon and UI. Instances of other storages (Postgres, in
``deploy/``) never load this class.
"""

import os
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from sqlalchemy import event
from sqlalchemy.engine import Engine

#: Databases of one process held open (the index, runs, schedules and the current runs' logs).
KEEP_OPEN = 8


class _SqliteCommits:
    """The process-wide SQLAlchemy ``connect`` hook, for the instance directories registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: tuple[str, ...] = ()  # replaced, never mutated: read without the lock
        self._held: OrderedDict[str, tuple[sqlite3.Connection, list[bool]]] = OrderedDict()
        self._listening = False

    def register(self, root: str) -> None:
        with self._lock:
            new = os.path.join(os.path.realpath(root), "")
            if new not in self._roots:
                self._roots = (*self._roots, new)
            if not self._listening:
                # SQLAlchemy's documented way to set SQLite pragmas on every connection; the
                # engines are created per write inside Dagster's storage classes.
                event.listen(Engine, "connect", self._on_connect)
                self._listening = True

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        row = dbapi_conn.execute("PRAGMA database_list").fetchone()
        path = os.path.realpath(row[2]) if row and row[2] else ""
        if not path or not any(path.startswith(r) for r in self._roots):
            return
        # Dagster puts every database of its SQLite storage in WAL mode, after creating its
        # tables: from the first connection on, a new instance's schema commits unsynced too.
        if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            if path in self._held:
                self._held.move_to_end(path)
            else:
                self._held[path] = (sqlite3.connect(path, check_same_thread=False), [False])
                while len(self._held) > KEEP_OPEN:
                    self._held.popitem(last=False)[1][0].close()
            keeper, attached = self._held[path]
            if attached[0]:
                return
            try:  # an idle connection counts for SQLite once it has read the database
                keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
                attached[0] = True
            except sqlite3.Error:  # only a saving: the write itself goes on, synced as before
                self._held.pop(path)[0].close()


_COMMITS = _SqliteCommits()


class LocalInstance(DagsterInstance):
    """``DagsterInstance`` whose SQLite storage commits without a sync per write (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _COMMITS.register(self.root_directory)

    # What Dagster asks of an ``instance_class`` of dagster.yaml: no settings of its own, and the
    # defaults of a plain instance.
    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Any:
        # Called with the instance directory before Dagster creates the storages: a new
        # instance's ~100 schema statements commit without syncs too.
        _COMMITS.register(base_dir)
        return InstanceRef.config_defaults(base_dir)
