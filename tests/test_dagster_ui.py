"""The Dagster UI in a real browser: `dagster dev` serves the graph and the backtest metadata.

Starts `dagster dev` on 127.0.0.1 (free port, temporary DAGSTER_HOME with the repository's
dagster.yaml), materializes one day of the whole graph into that instance, then opens the asset
graph and the backtest_summary asset page in headless Chromium: the DOM must show the assets and
the run's metadata, and screenshots are saved under artifacts/.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import _dagster_helpers as h
import pytest
from dagster import DagsterInstance

from backtest_pipeline.config import load_config
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
ALL_ASSETS = (
    "instruments",
    "signals",
    "signal_intervals",
    "tick_slices",
    "funding_rates",
    "nautilus_catalog",
    "backtest_run",
    "orders",
    "fills",
    "positions",
    "equity_curve",
    "operations",
    "backtest_summary",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait_for_location(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}")
        try:
            last = _graphql(port, query)
            entries = last["data"]["workspaceOrError"]["locationEntries"]
            kinds = {
                e["name"]: e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"]
                for e in entries
            }
            if kinds.get("backtest_pipeline") == "RepositoryLocation":
                return
            if kinds.get("backtest_pipeline") == "PythonError":
                raise RuntimeError(f"code location failed to load: {last}")
        except (OSError, KeyError, TypeError):
            pass
        time.sleep(1)
    raise TimeoutError(f"dagster dev did not load the code location in {timeout} s: {last}")


def _chromium(args: list[str], timeout: float = 90) -> str:
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ]
    out = subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)
    return out.stdout


@pytest.fixture
def dagster_dev(tmp_path: Path, local_ucs: UnifiedCloudService) -> Iterator[int]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); the browser test needs it")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    h.write_sample(local_ucs, days=1)
    # one day of the whole graph, recorded in the instance the UI will read
    with DagsterInstance.from_config(str(home)) as instance:
        from dagster import load_assets_from_modules, materialize

        from assets import backtest, catalog, inputs

        res = materialize(
            load_assets_from_modules([inputs, catalog, backtest]),
            resources=h.resources(local_ucs.root),
            instance=instance,
            partition_key=h.START,
        )
        assert res.success
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BACKTEST_STORAGE_ROOT": local_ucs.root}
    proc = subprocess.Popen(
        [
            "uv",
            "run",
            "dagster",
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_location(port, proc)
        _graphql(port, "mutation { setNuxSeen }")
        yield port
    finally:
        try:  # dagster dev may sit on SIGTERM for a minute: interrupt, then kill its group
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_ui_shows_graph_and_backtest_metadata(dagster_dev: int) -> None:
    port = dagster_dev
    ARTIFACTS.mkdir(exist_ok=True)
    run_id = load_config("demo").run_id(h.START, h.START)
    budget = "--virtual-time-budget=20000"
    size = "--window-size=1600,1400"

    # the asset graph of the backtest group (with its upstream assets), and the catalog of all 13
    graph_url = f"http://127.0.0.1:{port}/locations/backtest_pipeline/asset-groups/backtest"
    dom = _chromium([budget, "--dump-dom", graph_url])
    for key in (
        "instruments",
        "signals",
        "nautilus_catalog",
        "backtest_run",
        "orders",
        "backtest_summary",
    ):
        assert key in dom, f"asset {key} not in the graph page"
    _chromium([budget, size, f"--screenshot={ARTIFACTS / 'dagster_asset_graph.png'}", graph_url])
    # the catalog is a virtualized list: a tall window renders every row of it
    dom = _chromium(
        [budget, "--window-size=1600,2400", "--dump-dom", f"http://127.0.0.1:{port}/assets"]
    )
    for key in ALL_ASSETS:
        assert key in dom, f"asset {key} not in the catalog page"

    page = f"http://127.0.0.1:{port}/assets/backtest_summary?partition={h.START}"
    dom = _chromium([budget, "--dump-dom", page])
    assert "backtest_summary" in dom
    assert run_id in dom, "the run_id metadata is not shown on the asset page"
    assert "net_pnl (USDT)" in dom and "ticks_per_second" in dom
    # the equity curve is visible on the page itself, as the sparkline text metadata
    assert any(block * 3 in dom for block in "▁▂▃▄▅▆▇█"), "no equity sparkline on the page"
    assert "report.html" in dom, "the link to the run's report is not shown on the asset page"
    _chromium([budget, size, f"--screenshot={ARTIFACTS / 'dagster_backtest_summary.png'}", page])
    assert (ARTIFACTS / "dagster_asset_graph.png").stat().st_size > 10_000
    assert (ARTIFACTS / "dagster_backtest_summary.png").stat().st_size > 10_000
