"""Time shards: a run split into parallel processes gives the one-engine run's results exactly.

Each sharded run is compared with the sequential run of the same configuration on the same
inputs: the Parquet outputs (operations.parquet included) byte for byte, and summary.json apart from ids and timings.
The boundaries that cannot be handed over exactly (a position carried with a different entry
price, a leverage check that the true balance would turn) must be detected and re-run.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from _results import comparable_summary, result_digests

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run import shards
from backtest_pipeline.run.runner import BacktestFailed, BacktestResult, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
START = date(2024, 3, 1)
DAYS = 10
END = START + timedelta(days=DAYS - 1)
TIMING_STATS = {
    "wall_time_s", "engine_time_s", "read_time_s", "ticks_per_second", "peak_rss_mb", "shards",
}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shards")
    generate_sample_data(UnifiedCloudService(str(path)), START, DAYS, trades_per_day=30_000, seed=5)
    return path


@pytest.fixture(scope="module")
def config() -> BacktestConfig:
    return BacktestConfig.from_yaml(CONFIGS / "demo.yaml")


def _copy(root: Path, tmp_path: Path) -> UnifiedCloudService:
    dst = tmp_path / "root"
    shutil.copytree(root, dst)
    return UnifiedCloudService(str(dst))


def _digests(result: BacktestResult) -> dict[str, str]:
    return result_digests(result)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    return comparable_summary(summary, TIMING_STATS)


def _assert_same(seq: BacktestResult, sharded: BacktestResult) -> None:
    assert _digests(sharded) == _digests(seq)
    assert _comparable(sharded.summary) == _comparable(seq.summary)
    assert sharded.fills.height > 0
    # execution quality too: operations.parquet (in the digests) and the tca block (in the
    # summary); an operation priced from the warm-up day's ticks or spanning midnight is no
    # exception, since its references read only the ticks of its own days and the day before
    assert "operations.parquet" in _digests(seq)
    assert sharded.operations.equals(seq.operations) and seq.operations.height > 0
    assert sharded.summary["execution_stats"]["tca"] == seq.summary["execution_stats"]["tca"]


def test_plan_covers_every_day_once_with_a_warm_up_day() -> None:
    days = [START + timedelta(days=i) for i in range(23)]
    plans = shards.plan_shards(days, 3)
    own = [d for p in plans for d in p.own_days]
    assert own == days
    assert [p.warmup for p in plans] == [0, 1, 1]
    assert [p.final for p in plans] == [False, False, True]
    for prev, cur in zip(plans, plans[1:], strict=False):
        assert cur.days[0] == prev.own_days[-1]  # the warm-up day is the predecessor's last
    assert len(shards.plan_shards(days[:5], 4)) == 1  # too short to be worth a process


def test_refuses_runs_whose_course_depends_on_hidden_state(config: BacktestConfig) -> None:
    assert shards.refusal(config) is None
    fm = config.fill_model.model_copy(update={"prob_fill_on_limit": 0.5})
    assert "random" in (shards.refusal(config.model_copy(update={"fill_model": fm})) or "")
    fm = config.fill_model.model_copy(update={"liquidity_consumption": True})
    assert "liquidity" in (shards.refusal(config.model_copy(update={"fill_model": fm})) or "")


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_sharded_run_equals_the_one_engine_run(
    root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    ucs = _copy(root, tmp_path)
    seq = run_backtest(config, START, END, ucs=ucs, run_id="seq")
    two = run_backtest(config, START, END, ucs=ucs, run_id="two", shards=2)
    three = run_backtest(config, START, END, ucs=ucs, run_id="three", shards=3)
    assert "shards" not in seq.summary["execution_stats"]
    # Whatever boundary had an operation working across midnight was re-run with its
    # predecessor; the others handed over at once.
    pair = two.summary["execution_stats"]["shards"]
    info = three.summary["execution_stats"]["shards"]
    assert pair["count"] + len(pair["merged_boundaries"]) == 2, pair
    assert info["count"] + len(info["merged_boundaries"]) == 3, info
    # The sample strategy goes flat often: of the three boundaries, one at least hands over
    # exactly, so the comparison below covers the hand-off and not only the fallback.
    assert (pair["count"] - 1) + (info["count"] - 1) >= 1, (pair, info)
    _assert_same(seq, two)
    _assert_same(seq, three)
    log = ucs.download_from_gcs_sync(
        layout.target("results"), layout.log_path("three"), format="text"
    )
    assert log.count("===== shard ") == info["count"]


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_a_boundary_with_another_position_is_re_run(
    root: Path, config: BacktestConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never-flat signals and no warm-up: the shard starts flat, the one-engine run does not."""
    ucs = _copy(root, tmp_path)
    t_sig = layout.target("signals")
    for i in range(DAYS):
        day = START + timedelta(days=i)
        path = layout.signals_path(day, config.strategy_id)
        sig = ucs.download_from_gcs_sync(t_sig, path)
        sig = sig.with_columns((pl.col("target_position").abs() + 0.1).round(3))
        ucs.upload_to_gcs_sync(t_sig, path, sig, format="parquet")
    seq = run_backtest(config, START, END, ucs=ucs, run_id="seq")
    assert seq.positions.filter(pl.col("quantity") <= 0).height == 0  # never flat, never short
    warm = run_backtest(config, START, END, ucs=ucs, run_id="warm", shards=2)
    _assert_same(seq, warm)
    monkeypatch.setattr(shards, "WARMUP_DAYS", 0)
    cold = run_backtest(config, START, END, ucs=ucs, run_id="cold", shards=2)
    merged = cold.summary["execution_stats"]["shards"]["merged_boundaries"]
    assert len(merged) == 1 and "positions" in merged[0], merged
    _assert_same(seq, cold)


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_a_leverage_check_the_true_balance_would_turn_is_re_run(
    root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    """Rejection reasons quote the leverage computed from the balance, which shards offset."""
    ucs = _copy(root, tmp_path)
    risk = config.risk.model_copy(update={"max_gross_leverage": 0.05})
    tight = config.model_copy(update={"risk": risk})
    end = END - timedelta(days=1)  # nine days: two shards meet on 03-06, flat in this data
    seq = run_backtest(tight, START, end, ucs=ucs, run_id="seq")
    rejected = seq.orders.filter(pl.col("rejection_reason").str.starts_with("max_gross_leverage"))
    assert rejected.height > 0
    two = run_backtest(tight, START, end, ucs=ucs, run_id="two", shards=2)
    merged = two.summary["execution_stats"]["shards"]["merged_boundaries"]
    assert len(merged) == 1 and "leverage" in merged[0], merged
    _assert_same(seq, two)


def test_a_failing_shard_fails_the_run_with_nothing_half_written(
    root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    ucs = _copy(root, tmp_path)
    bad_day = END - timedelta(days=1)  # inside the last shard
    key = config.instruments[0]
    t_ticks = layout.target("ticks")
    path = layout.trades_path(bad_day, key)
    ucs.upload_to_gcs_sync(t_ticks, path, b"PAR1 truncated", format="bytes")
    with pytest.raises(BacktestFailed) as err:
        run_backtest(config, START, END, ucs=ucs, run_id="bad", shards=2)
    assert path in str(err.value)
    t_res = layout.target("results")
    summary = ucs.download_from_gcs_sync(t_res, layout.result_path("bad", "summary.json"))
    assert summary["status"] == "FAILED" and path in summary["error"]
    for name in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t_res, layout.result_path("bad", name))
