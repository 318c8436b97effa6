"""``sharded_backtest_job`` on days with quotes and a 10-level book: the one-engine run exactly.

``market_data: auto`` resolves to the book as `backtest run` resolves it, every shard step
replays that book, and the stitched objects are the one-engine run's byte for byte.
"""

import hashlib
import shutil
from datetime import date, timedelta

import pytest
from dagster import DagsterInstance

from assets import shards as shard_assets
from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.settings import BacktestSettings
from resources.step_io import UCSPickleIOManager
from resources.ucs_resource import UCSResource

START = date(2024, 3, 1)
DAYS = 6
END = START + timedelta(days=DAYS - 1)


def _digests(ucs: UnifiedCloudService, run_id: str) -> dict[str, str]:
    t = layout.target("results")
    return {
        n: hashlib.sha256(ucs.download_bytes_sync(t, layout.result_path(run_id, n))).hexdigest()
        for n in layout.RESULT_PARQUETS
    }


@pytest.mark.slow  # one-engine run + a 2-shard run of engine processes
def test_sharded_job_on_a_book_equals_the_one_engine_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("sharded-book")
    gen = UnifiedCloudService(str(data))
    generate_sample_data(gen, START, DAYS, trades_per_day=8_000, seed=3, book=True)
    root = tmp_path_factory.mktemp("sharded-book-run") / "root"
    shutil.copytree(data, root)
    ucs = UnifiedCloudService(str(root))
    config = load_config("demo")
    assert config.market_data == "auto"
    run_id = config.run_id(START, END)
    seq = run_backtest(config, START, END, ucs=ucs)
    key = config.instruments[0]
    assert seq.summary["execution_stats"]["market_data"] == {key: "depth"}
    want = _digests(ucs, run_id)
    ucs.delete_sync(layout.target("results"), layout.result_path(run_id, "fills.parquet"))
    client = UCSResource(root=str(root))
    result = shard_assets.sharded_backtest_job.execute_in_process(
        run_config={
            "ops": {"plan_shards": {"config": {"start": str(START), "end": str(END), "shards": 2}}}
        },
        resources={
            "ucs": client,
            "backtest": BacktestSettings(config_name="demo"),
            shard_assets.IO_MANAGER_KEY: UCSPickleIOManager(ucs=client),
        },
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    plans = [p for p, _ in result.output_for_node("run_shard").values()]
    assert len(plans) == 2 and all(dict(p.market_data) == {key: "depth"} for p in plans)
    assert _digests(ucs, run_id) == want
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(run_id, "summary.json")
    )
    stats = summary["execution_stats"]
    assert stats["market_data"] == {key: "depth"}
    assert stats["shards"]["count"] + len(stats["shards"]["merged_boundaries"]) == 2
    assert (
        summary["pnl"] == seq.summary["pnl"]
        and stats["tca"] == seq.summary["execution_stats"]["tca"]
    )
