"""The repository's ``dagster.yaml`` instance: Dagster's own files, SQLite commits without syncs.

``resources.local_instance.LocalInstance`` must keep the default instance's layout (an existing
``DAGSTER_HOME`` keeps working, and a plain ``DagsterInstance`` reads what it wrote), and it must
change the commit mode of its own databases only.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, asset, materialize
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from resources.local_instance import KEEP_OPEN, LocalEventLogStorage, LocalInstance

REPO = Path(__file__).resolve().parents[1]


@asset
def tiny() -> int:
    return 1


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def _synchronous(db: Path) -> int:
    """``PRAGMA synchronous`` of a new SQLAlchemy connection, as Dagster's storage opens them."""
    engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
    with engine.connect() as conn:
        value = conn.execute(text("PRAGMA synchronous")).scalar_one()
    engine.dispose()
    return int(value)


def test_repository_instance_keeps_dagsters_files_and_records(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance, LocalInstance)
        assert isinstance(instance.event_log_storage, LocalEventLogStorage)
        result = materialize([tiny], instance=instance)
        assert result.success
        run_id = result.run_id
        n_events = len(instance.all_logs(run_id))

    dbs = [
        home / "history" / "runs.db",
        home / "history" / "runs" / "index.db",
        home / "history" / "runs" / f"{run_id}.db",
        home / "schedules" / "schedules.db",
    ]
    for db in dbs:
        assert db.exists(), db
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", db

    # The same directory read by Dagster's default instance class (no `instance_class`).
    cfg = yaml.safe_load((home / "dagster.yaml").read_text())
    cfg.pop("instance_class")
    (home / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    with DagsterInstance.from_config(str(home)) as plain:
        assert type(plain) is DagsterInstance
        assert [r.run_id for r in plain.get_runs()] == [run_id]
        assert plain.get_run_by_id(run_id).is_success  # type: ignore[union-attr]
        assert len(plain.all_logs(run_id)) == n_events
        records = plain.fetch_materializations(AssetKey("tiny"), limit=10).records
        assert [r.run_id for r in records] == [run_id]


def test_only_the_instances_own_databases_commit_unsynced(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance, LocalInstance)
        assert _synchronous(home / "history" / "runs.db") == 1  # NORMAL
        assert _synchronous(home / "schedules" / "schedules.db") == 1
        outside = tmp_path / "elsewhere.db"
        assert _synchronous(outside) == 2  # SQLite's default, FULL
        with sqlite3.connect(outside) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_event_log_keeps_engines_bounded_and_wipes_cleanly(tmp_path: Path) -> None:
    """The event log reuses an engine per database, at most KEEP_OPEN; evicted ones reopen.

    Every run's log reads back whole after its engine was evicted, and after a wipe (which
    deletes the runs' databases under the kept engines) the next run's events are on disk: a
    new instance on the same directory reads them.
    """
    home = _home(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, LocalEventLogStorage)
        run_ids = [materialize([tiny], instance=instance).run_id for _ in range(KEEP_OPEN + 2)]
        assert 0 < storage.open_databases() <= KEEP_OPEN
        for run_id in run_ids:  # evicted engines reopen: every run's log still reads whole
            assert any(
                e.dagster_event is not None
                and e.dagster_event.event_type == DagsterEventType.RUN_SUCCESS
                for e in instance.all_logs(run_id)
            )
        instance.wipe()
        assert instance.get_runs() == []
        after = materialize([tiny], instance=instance)
        assert after.success
        n_after = len(instance.all_logs(after.run_id))
        assert n_after > 0
    with DagsterInstance.from_config(str(home)) as reopened:  # what is on disk, not in memory
        assert [r.run_id for r in reopened.get_runs()] == [after.run_id]
        assert len(reopened.all_logs(after.run_id)) == n_after


def test_new_databases_are_stamped_at_dagsters_head_with_one_revision_map(tmp_path: Path) -> None:
    """A new instance's databases carry Dagster's head revision (the shared map changes no stamp);
    Dagster's script directories share one revision map, other Alembic directories do not."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import get_alembic_config

    home = _home(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        run = materialize([tiny], instance=instance)
        for storage in (
            instance.run_storage,
            instance.event_log_storage,
            instance.schedule_storage,
        ):
            db_rev, head = storage.alembic_version()
            assert db_rev == head and head, (type(storage).__name__, db_rev, head)
        with instance.event_log_storage.run_connection(run.run_id) as conn:
            stamped = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert stamped == head

    import dagster._core.storage.runs.sqlite.sqlite_run_storage as runs_module

    dagster_cfg = get_alembic_config(runs_module.__file__)
    a, b = ScriptDirectory.from_config(dagster_cfg), ScriptDirectory.from_config(dagster_cfg)
    assert a is not b and a.revision_map is b.revision_map
    own = tmp_path / "migrations"
    (own / "versions").mkdir(parents=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(own))
    assert ScriptDirectory.from_config(cfg).revision_map is not (
        ScriptDirectory.from_config(cfg).revision_map
    )


def test_a_run_command_collects_no_garbage_only_while_it_loads() -> None:
    """`dagster asset materialize` pauses garbage collection from the instance's import until
    the code location is built (start-up only), and never in other processes (the webserver,
    the daemon, a test) that load the instance."""
    import gc
    import subprocess
    import sys

    assert gc.isenabled()  # this process imported resources.local_instance: not paused
    repo = Path(__file__).resolve().parents[1]
    code = """
import gc, sys, warnings
warnings.simplefilter("ignore")
sys.argv = ["dagster", "asset", "materialize", "-m", "definitions"]
import resources.local_instance
assert not gc.isenabled(), "collection should be paused while the command loads"
import definitions  # noqa: F401
assert gc.isenabled(), "collection should run again once the code location is built"
"""
    # another code location with this instance: the run resumes it
    other = """
import gc, shutil, sys, tempfile, warnings
warnings.simplefilter("ignore")
sys.argv = ["dagster", "job", "execute", "-f", "mine.py"]
from resources.local_instance import LocalInstance
assert not gc.isenabled()
from dagster import DagsterInstance, job, op
@op
def one() -> int:
    return 1
@job
def mine() -> None:
    one()
home = tempfile.mkdtemp()
shutil.copy("dagster.yaml", home)
instance = DagsterInstance.from_config(home)
assert isinstance(instance, LocalInstance) and not gc.isenabled()
result = mine.execute_in_process(instance=instance)
assert result.success and gc.isenabled()
"""
    for source in (code, other):
        out = subprocess.run(
            [sys.executable, "-c", source], capture_output=True, text=True, timeout=120, cwd=repo
        )
        assert out.returncode == 0, out.stderr[-3000:]
