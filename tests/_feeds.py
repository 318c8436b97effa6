"""Both engine feeds on the same inputs, and the check that their outputs are identical.

``engine_feed: operations`` hands the engine a market only while an order works there;
``intervals`` hands it every tick read. Every output must be the same (engine/feed.py): the
engine tests run each of their runs through both (``conftest._both_engine_feeds``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.engine.output import EngineOutput

FRAMES = (
    "orders",
    "order_status_history",
    "fills",
    "funding",
    "marks",
    "operations",
    "market_refs",
)
#: Statistics that describe the feeding itself, not the run's results.
FEED_STATS = {"ticks_processed", "engine_time_s", "engine_feed"}


def _same_number(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_outputs(a: EngineOutput, b: EngineOutput) -> None:
    for name in FRAMES:
        x, y = getattr(a, name), getattr(b, name)
        assert x.equals(y), f"{name} differs between the feeds:\n{x}\n{y}"
    assert a.final_balances.keys() == b.final_balances.keys()
    for k in a.final_balances:
        assert _same_number(a.final_balances[k], b.final_balances[k]), k
    sa = {k: v for k, v in a.stats.items() if k not in FEED_STATS}
    sb = {k: v for k, v in b.stats.items() if k not in FEED_STATS}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert _same_number(sa[k], sb[k]), (k, sa[k], sb[k])
    assert a.engine_order_ids == b.engine_order_ids
    assert a.start_state == b.start_state and a.end_state == b.end_state
    assert a.market_data == b.market_data
    assert len(a.risk_log) == len(b.risk_log)


def other_feed(config: BacktestConfig) -> BacktestConfig:
    feed = "intervals" if config.engine_feed == "operations" else "operations"
    return config.model_copy(update={"engine_feed": feed})


def run_both(run_engine: Callable[..., EngineOutput]) -> Callable[..., EngineOutput]:
    """``run_engine`` that also runs the other feed and fails unless both agree exactly."""

    def both(
        config: BacktestConfig, days: Iterable[Any], *args: Any, **kwargs: Any
    ) -> EngineOutput:
        days = list(days)
        try:
            out = run_engine(config, days, *args, **kwargs)
        except Exception as exc:
            try:
                run_engine(other_feed(config), days, *args, **kwargs)
            except type(exc) as twin_exc:
                assert str(twin_exc) == str(exc)
            else:
                raise AssertionError(f"only the {config.engine_feed} feed raised {exc!r}") from exc
            raise
        twin = run_engine(other_feed(config), days, *args, **kwargs)
        assert_same_outputs(out, twin)
        if config.engine_feed == "operations" and out.stats["ticks_read"]:
            assert out.stats["ticks_processed"] <= twin.stats["ticks_processed"]
        return out

    return both
