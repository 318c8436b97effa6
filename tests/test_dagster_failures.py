"""Bad inputs through Dagster: a failed step with the message, a FAILED summary, no results.

The same cases as the CLI/`run_backtest` reliability tests (issue 6), driven through the asset
graph as a user materializes it, on the local root and on the GCS emulator.
"""

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
from _dagster_helpers import materialize_graph, write_sample

from backtest_pipeline import layout
from backtest_pipeline.config import load_config
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY2 = "2024-01-02"


def _nan_price(ucs: UnifiedCloudService) -> tuple[str, str]:
    t, p = layout.target("ticks"), layout.trades_path(DAY2, KEY)
    df = ucs.download_from_gcs_sync(t, p)
    sig = ucs.download_from_gcs_sync(
        layout.target("signals"), layout.signals_path(DAY2, "demo-strategy")
    )
    # The first trade the day's first signal needs.
    idx = int(np.searchsorted(df["ts_event"].to_numpy(), int(sig["ts_event"][0])))
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == idx)
        .then(float("nan"))
        .otherwise(pl.col("price"))
        .alias("price")
    )
    ucs.upload_to_gcs_sync(t, p, df)
    return ucs.uri(t, p), "price"


def _missing_ticks(ucs: UnifiedCloudService) -> tuple[str, str]:
    t, p = layout.target("ticks"), layout.trades_path(DAY2, KEY)
    ucs.delete_sync(t, p)
    return ucs.uri(t, p), "does not exist"


def _unsorted_signals(ucs: UnifiedCloudService) -> tuple[str, str]:
    t, p = layout.target("signals"), layout.signals_path(DAY2, "demo-strategy")
    ucs.upload_to_gcs_sync(t, p, ucs.download_from_gcs_sync(t, p).reverse())
    return ucs.uri(t, p), "sorted"


def _instrument_absent(ucs: UnifiedCloudService) -> tuple[str, str]:
    t, p = layout.target("instruments"), layout.instruments_path(DAY2)
    ucs.upload_to_gcs_sync(
        t, p, ucs.download_from_gcs_sync(t, p).filter(pl.col("instrument_key") != KEY)
    )
    return layout.signals_path(DAY2, "demo-strategy"), "not available that day"


CASES: dict[str, Callable[[UnifiedCloudService], tuple[str, str]]] = {
    "nan-price": _nan_price,
    "missing-ticks": _missing_ticks,
    "unsorted-signals": _unsorted_signals,
    "instrument-absent": _instrument_absent,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_the_step_and_the_run(ucs: UnifiedCloudService, case: str) -> None:
    write_sample(ucs)
    obj, problem = CASES[case](ucs)
    result = materialize_graph(ucs.root, "2024-01-01", "2024-01-03", raise_on_error=False)
    assert not result.success
    failures = result.get_step_failure_events()
    assert failures, "no step failed"
    message = " ".join(
        (f.step_failure_data.error.message if f.step_failure_data.error else "")
        + " ".join(c.message for c in (f.step_failure_data.error.cause,) if c)
        for f in failures
    )
    assert obj in message and problem in message, message
    run_id = load_config("demo").run_id("2024-01-01", "2024-01-03")
    t_res = layout.target("results")
    summary = ucs.download_from_gcs_sync(t_res, layout.result_path(run_id, "summary.json"))
    assert summary["status"] == "FAILED" and obj in summary["error"] and problem in summary["error"]
    for name in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t_res, layout.result_path(run_id, name)), name
    assert ucs.exists_sync(t_res, layout.log_path(run_id))
