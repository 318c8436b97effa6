"""``backtest sweep --dagster``: the variants queued on a real instance and run by its daemon.

The variants go through ``launch`` (as every queued run does), each loads its resolved
configuration from the sweep's variant files, carries the batch tag, and ends as the same
results (same run_id) a local run of the variant writes; ``backtest compare --batch`` then
finds them through the batch membership, with no Dagster involved.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from typer.testing import CliRunner

import local_queue
from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

DAY = "2024-01-01"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
runner = CliRunner()


@pytest.fixture
def instance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    shm = Path("/dev/shm")
    on_tmpfs = shm.is_dir() and os.access(shm, os.W_OK)
    home = Path(tempfile.mkdtemp(prefix="dagster-home-", dir=shm)) if on_tmpfs else tmp_path / "h"
    local_queue.write_instance_yaml(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("BACKTEST_STORAGE_ROOT", str(tmp_path / "root"))
    yield home
    if on_tmpfs:
        shutil.rmtree(home, ignore_errors=True)


def test_sweep_queued_on_the_instance(tmp_path: Path, instance_home: Path) -> None:
    root = tmp_path / "root"
    ucs = UnifiedCloudService(str(root))
    generate_sample_data(ucs, DAY, 1, trades_per_day=5_000, seed=3)
    args = ["sweep", "--config", str(DEMO), "--set", "venues.BINANCE-FUTURES.latency.base_ms=5,50"]
    args += ["--start", DAY, "--end", DAY, "--root", str(root), "--batch", "queued", "--dagster"]
    args += ["--configs-out", str(tmp_path / "variants")]
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "queued 2 run(s) tagged backtest/batch=queued" in res.output
    manifest = ucs.download_from_gcs_sync(layout.target("results"), layout.batch_path("queued"))
    assert manifest["executor"] == "dagster"
    want = {r["run_id"] for r in manifest["runs"]}
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(tags={"backtest/batch": "queued"}))
        run_ids = [r.dagster_run.run_id for r in records]
        assert len(run_ids) == 2
        assert {r.dagster_run.tags["backtest/trigger"] for r in records} == {"sweep"}
        with local_queue.daemon(instance_home, tmp_path / "daemon.log") as proc:
            statuses = local_queue.wait_for_runs(instance, run_ids, timeout_s=600, proc=proc)
        assert set(statuses.values()) == {DagsterRunStatus.SUCCESS}, statuses
    base = BacktestConfig.from_yaml(DEMO).model_dump(mode="json")
    results = root / layout.bucket_for("results")
    for r in manifest["runs"]:
        summary = json.loads(
            (results / layout.result_path(r["run_id"], "summary.json")).read_text()
        )
        assert summary["status"] == "COMPLETED"
        assert summary["config"]["venues"]["BINANCE-FUTURES"]["latency"]["base_ms"] == float(
            r["overrides"]["venues.BINANCE-FUTURES.latency.base_ms"]
        )
        cfg = BacktestConfig.model_validate(summary["config"])
        assert cfg.run_id(DAY, DAY) == r["run_id"]
        assert {k: v for k, v in summary["config"].items() if k != "venues"} == {
            k: v for k, v in base.items() if k != "venues"
        }
    # the same sweep again: everything is there, nothing is queued
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0 and "nothing to queue" in res.output, res.output
    res = runner.invoke(app, ["compare", "--batch", "queued", "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {r["run_id"] for r in out["runs"]} == want
    assert {r["status"] for r in out["runs"]} == {"COMPLETED"}
