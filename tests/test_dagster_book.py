"""The Dagster graph on days with quotes and a 10-level book: `backtest run`'s objects exactly.

``nautilus_catalog`` writes each day's trades with the quotes or snapshots the run replays (the
row in force before each interval included, as ``load_day`` reads them), ``backtest_run`` reads
them back from the catalog, and ``market_data`` (``auto`` too) resolves as `backtest run`
resolves it: the result Parquet objects are byte-identical and the summaries equal apart from
timings.
"""

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from _dagster_helpers import START
from _results import comparable_summary, result_digests
from dagster import DagsterInstance, load_assets_from_modules, materialize

from assets import backtest, catalog, inputs
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.engine import catalog as catalog_mod
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import UCSIOManager
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource

pytestmark = pytest.mark.slow

END = "2024-01-03"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TIMING = {"wall_time_s", "engine_time_s", "read_time_s", "ticks_per_second", "peak_rss_mb"}


@pytest.fixture(scope="module")
def book_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dagster-book")
    generate_sample_data(
        UnifiedCloudService(str(path)), START, 3, trades_per_day=15_000, seed=2, book=True
    )
    return path


def _configs(tmp: Path, market_data: str) -> tuple[str, str]:
    """A configs dir holding the demo configuration with ``market_data`` set."""
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    cfg["market_data"] = market_data
    name = f"demo-{market_data}"
    cfg["name"] = name
    d = tmp / "configs"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return str(d), name


def _materialize(root: str, configs_dir: str, name: str) -> Any:
    ucs = UCSResource(root=root)
    settings = BacktestSettings(config_name=name, configs_dir=configs_dir)
    return materialize(
        load_assets_from_modules([inputs, catalog, backtest]),
        resources={
            "ucs": ucs,
            "backtest": settings,
            "io_manager": UCSIOManager(ucs=ucs, settings=settings),
        },
        instance=DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": START,
            "dagster/asset_partition_range_end": END,
        },
    )


@pytest.mark.parametrize(("market_data", "replayed"), [("auto", "depth"), ("quotes", "quotes")])
def test_dagster_on_a_book_equals_backtest_run(
    book_data: Path, tmp_path: Path, market_data: str, replayed: str
) -> None:
    root = tmp_path / "root"
    shutil.copytree(book_data, root)
    ucs = UnifiedCloudService(str(root))
    configs_dir, name = _configs(tmp_path, market_data)
    config = load_config(name, configs_dir)
    key = config.instruments[0]
    direct = run_backtest(config, START, END, ucs=ucs, run_id="direct")
    assert direct.summary["execution_stats"]["market_data"] == {key: replayed}

    result = _materialize(str(root), configs_dir, name)
    assert result.success
    rid = config.run_id(START, END)
    t_res = layout.target("results")
    got = {
        n: hashlib.sha256(ucs.download_bytes_sync(t_res, layout.result_path(rid, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }
    assert got == result_digests(direct)
    summary = ucs.download_from_gcs_sync(t_res, layout.result_path(rid, "summary.json"))
    assert comparable_summary(summary, TIMING) == comparable_summary(direct.summary, TIMING)
    assert summary["execution_stats"]["market_data"] == {key: replayed}
    # the catalog of each day holds the book slices the run replayed, in Nautilus's layout
    data_type = "book_depth10" if replayed == "depth" else "quotes"
    book_dir = catalog_mod.BOOK_DIRS[data_type]
    for day in layout.days_between(START, END):
        prefix = catalog_mod.catalog_prefix(day, name)
        manifest = ucs.download_from_gcs_sync(t_res, prefix + catalog_mod.MANIFEST)
        entry = manifest["instruments"][key]
        assert set(entry["books"]) == {data_type} and entry["books"][data_type]["rows"] > 0
        assert entry["books"][data_type]["file"].startswith(book_dir + "/")
        # the book's read record follows its trades' in summary.inputs, as `backtest run` has it
        assert any(f"data_type-{data_type}/" in r["path"] for r in manifest["inputs"])


def _stored_digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    t_res = layout.target("results")
    return {
        n: hashlib.sha256(ucs.download_bytes_sync(t_res, layout.result_path(run_id, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }


def test_dagster_on_a_book_on_the_gcs_emulator(
    gcs_ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    """The same on ``gs://``: the catalog (book files included) is uploaded and downloaded."""
    generate_sample_data(gcs_ucs, START, 2, trades_per_day=8_000, seed=4, book=True)
    end = "2024-01-02"
    configs_dir, name = _configs(tmp_path, "auto")
    config = load_config(name, configs_dir)
    direct = run_backtest(config, START, end, ucs=gcs_ucs, run_id="direct")
    assert direct.summary["execution_stats"]["market_data"] == {config.instruments[0]: "depth"}
    ucs = UCSResource(root="gs://")
    settings = BacktestSettings(config_name=name, configs_dir=configs_dir)
    result = materialize(
        load_assets_from_modules([inputs, catalog, backtest]),
        resources={"ucs": ucs, "backtest": settings,
                   "io_manager": UCSIOManager(ucs=ucs, settings=settings)},
        instance=DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": START,
              "dagster/asset_partition_range_end": end},
    )  # fmt: skip
    assert result.success
    rid = config.run_id(START, end)
    assert _stored_digests(gcs_ucs, rid) == _stored_digests(gcs_ucs, "direct")
    t_res = layout.target("results")
    names = gcs_ucs.list_files_sync(t_res, catalog_mod.catalog_prefix(START, name))
    assert any(f"/{catalog_mod.DEPTH10_DIR}/" in n for n in names), names
