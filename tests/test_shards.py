"""Time shards: a run split into parallel processes gives the one-engine run's results exactly.

Each sharded run is compared with the sequential run of the same configuration on the same
inputs: the Parquet outputs (operations.parquet included) byte for byte, and summary.json apart from ids and timings.
The boundaries that cannot be handed over exactly (a position carried with a different entry
price, a leverage check that the true balance would turn, an order resting across midnight,
liquidity our fills consumed on a depth book that no snapshot has re-stated yet) must be
detected and re-run. Runs on quotes and on 10-level books shard as trade runs do.
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
from backtest_pipeline.data import parquet_io
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


@pytest.mark.parametrize("n_days", [60, 61, 62, 122, 365, 1826])
def test_a_long_range_gets_more_shards_than_processes(n_days: int) -> None:
    """No process streams more than MAX_DAYS_PER_SHARD days (warm-up included), so a shard's
    memory does not grow with the run's length; one engine (shards=1) is never split."""
    days = [START + timedelta(days=i) for i in range(n_days)]
    cap = shards.MAX_DAYS_PER_SHARD
    for parallel in (2, 4):
        plans = shards.plan_shards(days, parallel)
        assert [d for p in plans for d in p.own_days] == days
        assert max(len(p.days) for p in plans) <= cap, [len(p.days) for p in plans]
        assert len(plans) >= parallel
        # whole rounds of `parallel` processes, the fewest that keep the cap
        if len(plans) > parallel:
            assert len(plans) % parallel == 0
            fewer = len(plans) - parallel
            assert (n_days + (fewer - 1) * shards.WARMUP_DAYS) / fewer > cap
        assert [p.final for p in plans] == [False] * (len(plans) - 1) + [True]
    assert len(shards.plan_shards(days, 1)) == 1
    assert max(len(p.days) for p in shards.plan_shards(days, 2, max_days=5)) <= 5
    with pytest.raises(ValueError, match="max_days must be at least 3"):
        shards.plan_shards(days, 2, max_days=2)


def test_refuses_runs_whose_course_depends_on_hidden_state(config: BacktestConfig) -> None:
    assert shards.refusal(config) is None
    key = config.instruments[0]
    for md in ("trades", "quotes", "depth"):
        assert shards.refusal(config, {key: md}) is None, md
    fm = config.fill_model.model_copy(update={"prob_fill_on_limit": 0.5})
    assert "random" in (shards.refusal(config.model_copy(update={"fill_model": fm})) or "")
    fm = config.fill_model.model_copy(update={"liquidity_consumption": True})
    l1 = config.model_copy(update={"fill_model": fm})
    assert "liquidity" in (shards.refusal(l1) or "")
    assert key in (shards.refusal(l1, {key: "quotes"}) or "")
    # liquidity_consumption is the L1 knob: a depth book's consumption is checked at the boundary
    assert shards.refusal(l1, {key: "depth"}) is None


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


# ---- quotes and 10-level books ----------------------------------------------------------------

BOOK_DAYS = 7
BOOK_END = START + timedelta(days=BOOK_DAYS - 1)
#: Two shards of the book days meet here (shard 1 warms up on the day before).
BOUNDARY = date(2024, 3, 5)


@pytest.fixture(scope="module")
def book_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shards-book")
    ucs = UnifiedCloudService(str(path))
    generate_sample_data(ucs, START, BOOK_DAYS, trades_per_day=20_000, seed=5, book=True)
    return path


def _book_config(config: BacktestConfig, market_data: str) -> BacktestConfig:
    return config.model_copy(update={"market_data": market_data})


def _position_at(result: BacktestResult, ns: int) -> float:
    before = result.positions.filter(pl.col("ts_event").cast(pl.Int64) < ns)
    return float(before["quantity"][-1]) if before.height else 0.0


def _add_signal(ucs: UnifiedCloudService, config: BacktestConfig, day: date, **row: Any) -> None:
    """One more signal on ``day`` (kept in time order, the schema's order)."""
    t_sig = layout.target("signals")
    path = layout.signals_path(day, config.strategy_id)
    sig = ucs.download_from_gcs_sync(t_sig, path)
    extra = pl.DataFrame([{c: row.get(c) for c in sig.columns}], schema=sig.schema)
    ucs.upload_to_gcs_sync(t_sig, path, pl.concat([sig, extra]).sort("ts_event"), format="parquet")


@pytest.mark.slow  # tens of seconds each: the full suite runs them
@pytest.mark.parametrize("market_data", ["quotes", "depth"])
def test_a_sharded_run_on_a_book_equals_the_one_engine_run(
    book_root: Path, config: BacktestConfig, tmp_path: Path, market_data: str
) -> None:
    """Default fill models (queues on quotes, consumption on depth), a position over the boundary."""
    ucs = _copy(book_root, tmp_path)
    cfg = _book_config(config, market_data)
    seq = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="seq")
    two = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="two", shards=2)
    key = cfg.instruments[0]
    assert seq.summary["execution_stats"]["market_data"] == {key: market_data}
    info = two.summary["execution_stats"]["shards"]
    # Handed over at once, not re-run: the hand-off itself is what the comparison covers...
    assert info["count"] == 2 and info["merged_boundaries"] == [], info
    # ...and the run holds a position across it (opened on the warm-up day, so both sides agree).
    assert _position_at(seq, layout.day_bounds_ns(BOUNDARY)[0]) != 0.0
    _assert_same(seq, two)
    # Both shards read the book objects of their own days, as the one-engine run read them.
    book_type = "book_depth10" if market_data == "depth" else "quotes"
    assert {i["path"] for i in two.summary["inputs"]} == {i["path"] for i in seq.summary["inputs"]}
    assert any(f"data_type-{book_type}/" in i["path"] for i in two.summary["inputs"])


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_a_limit_resting_across_the_boundary_on_quotes_is_re_run(
    book_root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    """A queued limit order working at midnight: its queue position lives in the venue's book."""
    ucs = _copy(book_root, tmp_path)
    cfg = _book_config(config, "quotes")
    eve = BOUNDARY - timedelta(days=1)
    start_ns = layout.day_bounds_ns(BOUNDARY)[0]
    last = ucs.download_from_gcs_sync(
        layout.target("ticks"), layout.tick_path(eve, cfg.instruments[0], "quotes")
    )["bid_price"][-1]
    _add_signal(
        ucs, cfg, eve, signal_id="test-resting-limit", ts_event=start_ns - 20 * 10**9,
        instrument_key=cfg.instruments[0], target_position=0.3, execution_window_s=60.0,
        algo="LIMIT", limit_price=round(float(last) * 0.97, 1),
    )  # fmt: skip
    seq = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="seq")
    resting = seq.orders.filter(pl.col("order_id").str.contains("test-resting-limit"))
    assert resting.height > 0 and (resting["order_type"] == "LIMIT").all()
    # placed before midnight, still working after it
    assert (resting["created_at"].cast(pl.Int64) < start_ns).all()
    assert (resting["updated_at"].cast(pl.Int64) > start_ns).any()
    two = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="two", shards=2)
    merged = two.summary["execution_stats"]["shards"]["merged_boundaries"]
    assert len(merged) == 1 and "working orders 1/" in merged[0], merged
    _assert_same(seq, two)


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_liquidity_consumed_on_a_depth_book_before_the_boundary_is_re_run(
    book_root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    """A market order's fill late on the eve, with no snapshot after it that day.

    The signal's interval goes on for half a minute after it, so prints follow the fill that
    day (an order still in flight when the day's data ends would stop the hand-off anyway).
    """
    ucs = _copy(book_root, tmp_path)
    cfg = _book_config(config, "depth")
    key = cfg.instruments[0]
    eve = BOUNDARY - timedelta(days=1)
    signal_ns = layout.day_bounds_ns(BOUNDARY)[0] - 600 * 10**9
    _add_signal(
        ucs, cfg, eve, signal_id="test-last-market", ts_event=signal_ns, instrument_key=key,
        target_position=0.6, execution_window_s=30.0, algo="MARKET",
    )  # fmt: skip
    t_ticks, path = layout.target("ticks"), layout.tick_path(eve, key, "book_depth10")
    book = ucs.download_from_gcs_sync(t_ticks, path)
    book = book.filter(pl.col("ts_event").cast(pl.Int64) <= signal_ns)
    ucs.upload_to_gcs_sync(
        t_ticks, path, parquet_io.book_depth10_to_parquet_bytes(book), format="bytes"
    )
    seq = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="seq")
    last = seq.fills.filter(pl.col("order_id").str.contains("test-last-market"))
    assert last.height > 0 and (last["ts_event"].cast(pl.Int64) > signal_ns).all()
    assert (last["ts_event"].cast(pl.Int64) < layout.day_bounds_ns(BOUNDARY)[0]).all()
    two = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="two", shards=2)
    merged = two.summary["execution_stats"]["shards"]["merged_boundaries"]
    assert len(merged) == 1 and f"consumed liquidity ['{key}']" in merged[0], merged
    _assert_same(seq, two)


@pytest.mark.slow  # tens of seconds each: the full suite runs them
def test_a_warm_up_day_without_book_rows_is_re_run(
    book_root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    """No signal on the eve: the run holds the quote of the day before, the shard holds none."""
    ucs = _copy(book_root, tmp_path)
    cfg = _book_config(config, "quotes")
    eve = BOUNDARY - timedelta(days=1)
    before = eve - timedelta(days=1)
    # flat from the evening before (the day's last signal, superseding any still working), so
    # the positions agree and only the books differ
    last_ns = ucs.download_from_gcs_sync(
        layout.target("signals"), layout.signals_path(before, cfg.strategy_id)
    )["ts_event"].max()
    assert last_ns + 60 * 10**9 < layout.day_bounds_ns(eve)[0]
    _add_signal(
        ucs, cfg, before, signal_id="test-flat", ts_event=int(last_ns) + 10**9,  # type: ignore[arg-type]
        instrument_key=cfg.instruments[0], target_position=0.0, execution_window_s=30.0,
        algo="MARKET",
    )  # fmt: skip
    ucs.delete_sync(layout.target("signals"), layout.signals_path(eve, cfg.strategy_id))
    seq = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="seq")
    assert _position_at(seq, layout.day_bounds_ns(BOUNDARY)[0]) == 0.0
    two = run_backtest(cfg, START, BOOK_END, ucs=ucs, run_id="two", shards=2)
    merged = two.summary["execution_stats"]["shards"]["merged_boundaries"]
    assert len(merged) == 1 and "book rows in force" in merged[0], merged
    assert "working orders 0/0" in merged[0] and "positions () vs ()" in merged[0], merged
    _assert_same(seq, two)


_MANY_SHARDS = """
import json, sys
from pathlib import Path
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run import shards
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

shards.MAX_DAYS_PER_SHARD = 3  # the 10 days as 6 processes (3 rounds of 2)
root, config, start, end = sys.argv[1:5]
res = run_backtest(
    BacktestConfig.from_yaml(config), start, end, ucs=UnifiedCloudService(root),
    run_id="many", shards=2,
)
print(json.dumps({
    "stats": res.summary["execution_stats"]["shards"],
    "nautilus_imported": sorted(m for m in sys.modules if m.startswith("nautilus_trader"))[:3],
}))
"""


@pytest.mark.slow  # tens of seconds: the full suite runs it
def test_more_shards_than_processes_equal_the_one_engine_run(
    root: Path, config: BacktestConfig, tmp_path: Path
) -> None:
    """A run longer than the processes' day cap: more shards, run two at a time, stitched by a
    process that never imports NautilusTrader, give the one-engine run's bytes."""
    import json
    import subprocess
    import sys

    ucs = _copy(root, tmp_path)
    seq = run_backtest(config, START, END, ucs=ucs, run_id="seq")
    proc = subprocess.run(
        [sys.executable, "-c", _MANY_SHARDS, ucs.root, str(CONFIGS / "demo.yaml"),
         str(START), str(END)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    info = got["stats"]
    assert info["count"] + len(info["merged_boundaries"]) == 6, info
    assert info["count"] >= 3, info  # most boundaries handed over at once
    # the stitching process ran no engine and so never loaded NautilusTrader
    assert got["nautilus_imported"] == [], got
    # at no instant were more than two shard processes running
    spans = info["process_spans_s"]
    assert len(spans) == info["count"] and all(a <= b for a, b in spans)
    for a, _ in spans:
        assert sum(1 for s, e in spans if s <= a < e) <= 2, spans
    results = layout.target("results")
    for name in layout.RESULT_PARQUETS:
        many = ucs.download_bytes_sync(results, layout.result_path("many", name))
        one = ucs.download_bytes_sync(results, layout.result_path("seq", name))
        assert many == one, name
    stored = json.loads(
        ucs.download_from_gcs_sync(results, layout.result_path("many", "summary.json"), "text")
    )
    assert _comparable(stored) == _comparable(seq.summary)
