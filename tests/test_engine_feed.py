"""``engine_feed: operations`` gives byte-identical results to ``intervals``, with fewer ticks.

The operations feed hands the engine a market only from a signal until its operation's last
order is final, primed with the rows that fix the venue's state (engine/feed.py). Here whole
runs on the product's sample data (realistic price paths, the sample strategy's MARKET, LIMIT
and TWAP signals, superseded operations, positions held over midnight, funding) are run with
both feeds and every Parquet output is compared byte for byte, across the configurations a
researcher varies: algo knobs, two venues through the router, full days, random fill models,
liquidity consumption, the quotes and 10-level book data types, time shards. Every
``run_engine`` call of the engine unit tests is also run with both feeds (conftest.py).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from _results import comparable_summary, result_digests

from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.engine.feed import clamp_start
from backtest_pipeline.run.runner import BacktestResult, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
START = date(2024, 5, 1)
DAYS = 3
END = START + timedelta(days=DAYS - 1)
BTC = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
BYBIT = "BYBIT:PERPETUAL:BTC-USDT"
#: Figures about the feeding and the clock, not about the results.
FEED_STATS = {
    "wall_time_s", "engine_time_s", "read_time_s", "ticks_per_second", "peak_rss_mb",
    "ticks_processed", "engine_feed",
}  # fmt: skip


def _generate(path: Path, instruments: list[str]) -> Path:
    generate_sample_data(
        UnifiedCloudService(str(path)), START, DAYS, instruments=instruments,
        trades_per_day=40_000, seed=11, book=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One BTC perpetual, trades + quotes + a 10-level book."""
    return _generate(tmp_path_factory.mktemp("feed"), [BTC])


@pytest.fixture(scope="module")
def root2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same asset on two venues (the router's case)."""
    return _generate(tmp_path_factory.mktemp("feed2"), [BTC, BYBIT])


def _config(name: str, **update: Any) -> BacktestConfig:
    cfg = BacktestConfig.from_yaml(CONFIGS / f"{name}.yaml")
    data = cfg.model_dump()
    for dotted, value in update.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return BacktestConfig.model_validate(data)


def _digests(result: BacktestResult) -> dict[str, str]:
    return result_digests(result)


def _results(summary: dict[str, Any]) -> dict[str, Any]:
    # The stored configuration names its feed.
    return comparable_summary(summary, FEED_STATS, drop={"config"})


def _both(
    ucs: UnifiedCloudService, cfg: BacktestConfig, tag: str, shards: int = 1
) -> tuple[BacktestResult, BacktestResult]:
    ints = cfg.model_copy(update={"engine_feed": "intervals"})
    ops = cfg.model_copy(update={"engine_feed": "operations"})
    a = run_backtest(ints, START, END, ucs=ucs, run_id=f"{tag}-intervals")
    b = run_backtest(ops, START, END, ucs=ucs, run_id=f"{tag}-operations", shards=shards)
    return a, b


def _assert_identical(a: BacktestResult, b: BacktestResult) -> None:
    assert _digests(a) == _digests(b)
    assert _results(a.summary) == _results(b.summary)
    sa, sb = a.summary["execution_stats"], b.summary["execution_stats"]
    assert sa["engine_feed"] == "intervals" and sb["engine_feed"] == "operations"
    # The same rows were read; the operations feed handed the engine fewer of them.
    assert sa["ticks_read"] == sb["ticks_read"] == sa["ticks_processed"]
    assert 0 < sb["ticks_processed"] < sa["ticks_processed"]
    assert a.fills.height > 0


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "demo": ("demo", {}),
    "algo-knobs": (
        "demo",
        {"algo.twap_slices": 3, "algo.limit_offset_bps": 1.5, "algo.execution_window_scale": 2.0},
    ),  # fmt: skip
    "limits-at-last": ("demo", {"algo.limit_price_source": "last", "lookback_s": 0.5}),
    "two-venues": ("two_venues", {"market_data": "trades"}),
    "random-fill-model": (
        "demo",
        {"fill_model.prob_fill_on_limit": 0.4, "fill_model.prob_slippage": 0.3},
    ),  # fmt: skip
    "l1-liquidity-consumption": (
        "demo",
        {"fill_model.liquidity_consumption": True, "market_data": "trades"},
    ),  # fmt: skip
    "quotes": ("demo", {"market_data": "quotes"}),
    "depth": ("demo", {"market_data": "depth"}),
    "depth-two-venues": ("two_venues", {"market_data": "depth"}),
}


@pytest.mark.slow  # ~10 s a case: the full suite runs them
@pytest.mark.parametrize("case", list(CASES))
def test_operations_feed_is_byte_identical(
    request: pytest.FixtureRequest, tmp_path: Path, case: str
) -> None:
    name, update = CASES[case]
    cfg = _config(name, **update)
    where = request.getfixturevalue("root2" if name == "two_venues" else "root")
    ucs = UnifiedCloudService(str(where))
    a, b = _both(ucs, cfg, f"feed-{case}")
    _assert_identical(a, b)


def test_long_windows_cover_what_the_feed_must_reproduce(root: Path) -> None:
    """Windows four times as long: every situation the feed's contract names occurs here, all
    algos, superseded operations (a signal arriving while a TWAP works), positions held over
    midnight, funding.
    """
    cfg = _config("demo", **{"market_data": "trades", "algo.execution_window_scale": 4.0})
    ucs = UnifiedCloudService(str(root))
    a, b = _both(ucs, cfg, "feed-coverage")
    _assert_identical(a, b)
    ops = b.operations
    assert set(ops.get_column("algo").unique().to_list()) == {"MARKET", "LIMIT", "TWAP"}
    assert (ops.get_column("status") == "SUPERSEDED").any()
    # A position held over midnight: the last position row of a day is not flat.
    last_of_day = (
        b.positions.with_columns(pl.col("ts_event").dt.date().alias("day"))
        .sort("ts_event")
        .group_by("day", maintain_order=True)
        .last()
    )
    assert (last_of_day.get_column("quantity").abs() > 0).head(DAYS - 1).any()
    assert b.summary["pnl"]["funding_paid"] != 0
    # The engine saw at most half of the ticks inside the signal intervals (docs/targets.md).
    s = b.summary["execution_stats"]
    assert s["ticks_processed"] / s["ticks_read"] <= 0.5


@pytest.mark.slow
def test_full_day(root: Path) -> None:
    """Full days (no pruning): the feed skips most of each day and still agrees exactly.

    Time shards run on the operations feed too: tests/test_shards.py holds them to the
    one-engine run, which this module holds to the intervals feed.
    """
    ucs = UnifiedCloudService(str(root))
    a, b = _both(ucs, _config("demo", full_day=True), "feed-full")
    _assert_identical(a, b)


# -- the L1 core's state, independently of the engine ------------------------------------


def _core_after(prices: np.ndarray, aggressor: np.ndarray, bid: float, ask: float) -> tuple:
    """NautilusTrader 1.231's L1 trade execution on the core, one print at a time (reference)."""
    for p, a in zip(prices, aggressor, strict=True):
        if a == 1:
            bid, ask = max(bid, p), max(ask, p)
        elif a == 2:
            bid, ask = min(bid, p), min(ask, p)
        else:
            bid, ask = p, p
    return bid, ask


@pytest.mark.parametrize("seed", range(40))
def test_clamp_start_is_the_last_row_that_fixes_the_state(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    prices = np.round(100 + rng.normal(0, 0.5, n).cumsum(), 1)
    aggressor = rng.choice([1, 2, 0], size=n, p=[0.48, 0.48, 0.04]).astype(np.uint8)
    starts = [(-1e9, 1e9), (1e9, 1e9), (-1e9, -1e9), (99.0, 101.0), (100.0, 100.0)]

    def fixed_from(r: int) -> bool:
        ends = {_core_after(prices[r:], aggressor[r:], b, a) for b, a in starts}
        return len(ends) == 1

    r = clamp_start(prices, aggressor)
    if r is None:
        assert not any(fixed_from(i) for i in range(n))
    else:
        assert fixed_from(r)
        assert not any(fixed_from(i) for i in range(r + 1, n))


def test_a_jump_replays_the_prints_that_set_the_core_bid() -> None:
    """A jump over a gap whose prints move the L1 core both ways, before a LIMIT at the touch.

    Both feeds must agree on the limit's fills with fewer ticks for the operations feed. (This
    scenario does not by itself tell the last-print-only primer from ``clamp_start``; the
    long-window sample-data case above does: it fails under that primer.)
    """
    from _engine_data import DAY1, config, day_input, instrument_row, instruments_df, t
    from _engine_data import signals as signals_df
    from _engine_data import trades as trades_table

    from backtest_pipeline.engine.driver import run_engine

    key = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
    rows = [
        (t(DAY1, 100 + i), 39_995.0 + (i % 2), 0.5, "buy" if i % 2 else "sell") for i in range(20)
    ]
    rows += [(t(DAY1, 150), 39_990.0, 0.5, "sell"), (t(DAY1, 151), 40_010.0, 0.5, "buy"),
             (t(DAY1, 152), 40_000.0, 0.5, "buy")]  # fmt: skip
    rows += [(t(DAY1, 153 + i), 40_006.0, 0.3, "buy") for i in range(10)]
    tr = trades_table(rows)
    sig = signals_df(
        {"signal_id": "a", "ts_event": t(DAY1, 105), "instrument_key": key, "target_position": 0.1},
        {"signal_id": "b", "ts_event": t(DAY1, 152.5), "instrument_key": key,
         "target_position": -0.1, "algo": "LIMIT", "limit_price": 40_005.0,
         "execution_window_s": 5},
    )  # fmt: skip
    inst = instruments_df(instrument_row(key, taker_fee=0.0005, maker_fee=0.0001))
    cfg = config([key], lookback_s=0.5, grace_s=0.5)
    days = [day_input(DAY1, inst, sig, {key: tr})]
    ops = run_engine(cfg, days)
    ints = run_engine(cfg.model_copy(update={"engine_feed": "intervals"}), days)
    assert ops.fills.equals(ints.fills) and ops.orders.equals(ints.orders)
    limit = ops.fills.filter(pl.col("order_id") == "OP-b-1")
    assert limit.height >= 1
    assert ops.stats["ticks_processed"] < ints.stats["ticks_processed"]
