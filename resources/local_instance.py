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
  checkpoints the WAL by itself every 1,000 pages;
* the event log (``LocalEventLogStorage``, the one storage written per event) keeps one
  SQLAlchemy engine and one pooled connection per database (the run's log and the index, at
  most ``KEEP_OPEN``) instead of a new engine, connection and cold statement cache per event:
  Dagster's engine per write cost ~3 ms of CPU per event (engine, connection, pragmas, SQL
  compilation), ~0.6 s of a 200-event run;
* a new instance directory (every ``backtest bench`` run starts from one) creates its databases
  with Dagster's Alembic revision history parsed once per process, not once per database and
  check (7 times, 0.3-0.6 s here): see ``_share_dagster_revision_maps``.

Everything else is ``DagsterInstance``: the same files and layout (an existing instance directory
keeps working), the same run queue, daemon and UI. Instances of other storages (Postgres, in
``deploy/``) never load this class.
"""

import gc
import os
import sqlite3
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _executes_runs_itself() -> bool:
    """True in a ``dagster asset materialize`` / ``dagster job execute`` command: this very
    process executes the run (in-process executor), so a backtest process may be wanted."""
    argv = sys.argv
    return (
        len(argv) >= 3
        and os.path.basename(argv[0]) == "dagster"
        and argv[1:3] in (["asset", "materialize"], ["job", "execute"])
    )


_spare_started = False
#: The backtest worker's body (``backtest_pipeline.run.worker.ENTRY``), named: importing that
#: module here would cost the ~0.4 s this spawn is early by.
BACKTEST_WORKER = "backtest_pipeline.run.worker:serve"


def _start_spare_backtest_worker() -> None:
    """Spawn the run's backtest process before the run exists, in a command that executes it.

    Why here, as this module is imported and before its own imports: this module is the first
    of this repository's code such a command loads (~0.7 s after it starts), ~1 s before the
    run's executor starts (the storages' imports, the instance, the code location, the run
    record and its planned events). The worker's warm-up (~1.1 s) takes that second instead of
    following it; the executor then takes this process (``worker.prewarm_worker``). A run
    without a backtest leaves it idle on the second core until the command exits, which stops
    it.
    """
    global _spare_started
    if _spare_started or not _executes_runs_itself():
        return
    _spare_started = True
    from backtest_pipeline.run import spawn  # standard library only: spawns at once

    spawn.start_spare(BACKTEST_WORKER)


_collection_paused = False


def _pause_collection() -> None:
    """No garbage collection in a command that executes a run, until its code location is built.

    Why: importing the storages and the code location (Dagster's modules, polars, pyarrow, the
    pipeline) creates several hundred thousand long-lived objects and hardly any garbage, yet
    the collector walks them again and again as they accumulate: 0.1-0.4 s of a ~1 s start-up
    here, before the run's first step. ``definitions.py`` freezes what was loaded (it is never
    garbage) and resumes collection (:func:`resume_collection`) before the run executes.
    """
    global _collection_paused
    if _executes_runs_itself() and gc.isenabled():
        gc.disable()
        _collection_paused = True


def resume_collection() -> None:
    """Collect garbage again (if :func:`_pause_collection` stopped it): the run is next."""
    global _collection_paused
    if _collection_paused:
        _collection_paused = False
        gc.enable()


_start_spare_backtest_worker()
_pause_collection()

# The storages' imports (~0.4 s: alembic, Dagster's SQLite storages) come after the spawn above.
import dagster
import yaml
from alembic.script import ScriptDirectory
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData
from dagster._utils import mkdir_p
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

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


def _share_dagster_revision_maps() -> None:
    """Parse Dagster's migration scripts once per process.

    Creating and checking each SQLite database (runs, event index, schedules, every run's log)
    goes through ``ScriptDirectory.from_config``, and each new ``ScriptDirectory`` imports all of
    Dagster's ~60 migration files again to build its revision map. The map of an installed
    package's scripts cannot change while the process runs, so directories of Dagster's own
    scripts share the first one built. Other Alembic users of the process are untouched.
    """
    original = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]
    if getattr(original, "_shares_revision_maps", False):
        return
    package = os.path.join(os.path.dirname(os.path.realpath(dagster.__file__)), "")
    maps: dict[tuple[str, tuple[str, ...]], Any] = {}
    lock = threading.Lock()

    def from_config(cls: type[ScriptDirectory], config: Any) -> ScriptDirectory:
        script = original(cls, config)
        if not os.path.realpath(script.dir).startswith(package):
            return script
        key = (script.dir, tuple(script.version_locations))
        with lock:
            if key in maps:
                script.revision_map = maps[key]
            else:
                maps[key] = script.revision_map
        return script

    from_config._shares_revision_maps = True  # type: ignore[attr-defined]
    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]


_share_dagster_revision_maps()

#: Live event log storages, so that a forked child drops the engines it inherited (SQLite
#: connections must not cross a fork).
_STORAGES: "weakref.WeakSet[LocalEventLogStorage]" = weakref.WeakSet()


class LocalEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log (same files, same tables), with an engine kept per database.

    Dagster's own opens an engine for every event write and disposes of it after the commit;
    here the engine (and its one pooled connection) of each recently used database stays open,
    at most ``KEEP_OPEN``: a run's log and the index take every write of a run. Writes still go
    one transaction per event, under Dagster's lock. Files this storage removes (``wipe``) have
    their engines disposed first.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._has_tables: set[str] = set()
        super().__init__(base_dir, inst_data)
        _STORAGES.add(self)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is None:
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=QueuePool,
                    # one connection kept; a nested use (has_table inside a write) gets a second
                    # one, closed when it is returned
                    pool_size=1,
                    max_overflow=4,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
                self._engines[shard] = engine
                while len(self._engines) > KEEP_OPEN:
                    self._engines.popitem(last=False)[1].dispose()
            else:
                self._engines.move_to_end(shard)
            return engine

    def open_databases(self) -> int:
        """How many databases this storage holds an engine on (for tests and diagnostics)."""
        with self._engines_lock:
            return len(self._engines)

    def _drop_engines(self, close: bool = True) -> None:
        with self._engines_lock:
            engines, self._engines = list(self._engines.values()), OrderedDict()
        for engine in engines:
            engine.dispose(close=close)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # type: ignore[override]
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        # Asked on every asset event; a table, once there, stays (only an upgrade adds one).
        if table_name in self._has_tables:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._has_tables.add(table_name)
        return found

    def wipe(self) -> None:
        self._drop_engines()
        super().wipe()

    def upgrade(self) -> None:
        self._drop_engines()
        self._has_tables.clear()
        super().upgrade()

    def dispose(self) -> None:
        super().dispose()
        self._drop_engines()


def _after_fork_in_child() -> None:
    for storage in list(_STORAGES):
        storage._drop_engines(close=False)  # the parent's connections stay the parent's


os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (same directories and databases), its event log local."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(os.path.join(base_dir, "history", ""))
        self._event_log_storage = LocalEventLogStorage(
            os.path.join(base_dir, "history", "runs", "")
        )
        self._schedule_storage = SqliteScheduleStorage.from_local(
            os.path.join(base_dir, "schedules")
        )
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: Any
    ) -> "LocalSqliteStorage":
        mkdir_p(config_value["base_dir"])
        return cls(inst_data=inst_data, **config_value)


class LocalInstance(DagsterInstance):
    """``DagsterInstance`` whose SQLite storage commits without a sync per write (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _COMMITS.register(self.root_directory)

    # Whatever code location the command loaded (ours resumes collection once built), the run
    # itself collects garbage: both ways Dagster creates a run resume it.
    def create_run_for_job(self, *args: Any, **kwargs: Any) -> Any:
        resume_collection()
        return super().create_run_for_job(*args, **kwargs)

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        resume_collection()
        return super().create_run(*args, **kwargs)

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
        return {
            **InstanceRef.config_defaults(base_dir),
            # used when dagster.yaml names no storage (this repository's does not)
            "storage": ConfigurableClassData(
                __name__,
                LocalSqliteStorage.__name__,
                yaml.dump({"base_dir": base_dir}, default_flow_style=False),
            ),
        }
