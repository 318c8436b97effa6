"""The plain functions behind the asset checks and the equity plot metadata."""

import base64

import polars as pl
import pyarrow as pa

from backtest_pipeline.results import checks, report

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
PEER = "BYBIT:PERPETUAL:BTC-USDT"


def _intervals() -> dict[str, pa.Table]:
    return {"2024-01-01": pa.table({"instrument_key": [KEY], "start_ns": [100], "end_ns": [200]})}


def test_fills_inside_intervals_matches_router_peers() -> None:
    fills = pa.table({"instrument_key": [KEY, PEER], "ts_event": [100, 200]})
    ok, details = checks.fills_inside_intervals(fills, _intervals())
    assert ok and details["outside"] == 0


def test_fill_outside_an_interval_is_reported() -> None:
    fills = pa.table({"instrument_key": [KEY, KEY], "ts_event": [150, 201]})
    ok, details = checks.fills_inside_intervals(fills, _intervals())
    assert not ok and details["outside"] == 1 and details["examples"][0]["ts"] == 201


def test_orders_without_operation() -> None:
    ok, details = checks.orders_have_operation(pa.table({"operation_id": ["op-1", None, ""]}))
    assert not ok and details["without_operation"] == 2


def test_net_pnl_against_equity() -> None:
    equity = pa.table({"portfolio_value": [100_000.0, 100_050.0]})
    summary = {"starting_balance": 100_000.0, "pnl": {"net_pnl": 50.0}}
    assert checks.net_pnl_matches_equity(summary, equity)[0]
    summary["pnl"]["net_pnl"] = 49.0
    ok, details = checks.net_pnl_matches_equity(summary, equity)
    assert not ok and details["difference"] == 1.0


def test_sorted_timestamps_per_instrument() -> None:
    t = pa.table({"instrument_key": ["a", "a", "b", "b"], "ts_event": [1, 2, 0, 1]})
    assert checks.sorted_timestamps({"d": t}, by="instrument_key")[0]
    bad = pa.table({"instrument_key": ["a", "a"], "ts_event": [2, 1]})
    assert checks.sorted_timestamps({"d": bad}, by="instrument_key") == (
        False,
        {"rows": 2, "unsorted_rows": {"d": 1}},
    )


def test_result_schema_check() -> None:
    ok, details = checks.result_schema(pa.table({"x": [1]}), "fills.parquet")
    assert not ok and details["expected"][0][0] == "fill_id"


def test_equity_markdown_embeds_a_png() -> None:
    equity = pl.DataFrame(
        {
            "ts_event": pl.Series([0, 60_000_000_000], dtype=pl.Int64).cast(
                pl.Datetime("ns", "UTC")
            ),
            "portfolio_value": [100_000.0, 100_010.0],
            "drawdown_pct": [0.0, 0.0],
        }
    )
    md = report.equity_markdown(equity, "run")
    assert md.startswith("![run](data:image/png;base64,")
    png = base64.b64decode(md.split(",", 1)[1].rstrip(")"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_long_equity_curve_is_drawn_as_its_envelope() -> None:
    """A year of minutes is drawn from at most PLOT_POINTS points per line, every extreme kept."""
    import numpy as np

    n = 200_003
    rng = np.random.default_rng(7)
    value = 100_000.0 + np.cumsum(rng.normal(0.0, 5.0, n))
    peak = np.maximum.accumulate(value)
    equity = pl.DataFrame(
        {
            "ts_event": pl.Series(np.arange(n, dtype=np.int64) * 60_000_000_000).cast(
                pl.Datetime("ns", "UTC")
            ),
            "portfolio_value": value,
            "drawdown_pct": (value / peak - 1.0) * 100.0,
        }
    )
    ts, v, dd = report.plot_series(equity)
    assert len(ts) == len(v) == len(dd) <= report.PLOT_POINTS + 2
    assert v.max() == value.max() and v.min() == value.min()
    assert dd.min() == equity["drawdown_pct"].min()
    assert np.all(np.diff(ts.astype(np.int64)) >= 0)
    assert ts[0] == np.datetime64(0, "ns")
    # a short curve is drawn as it is
    short = equity.head(500)
    ts_s, v_s, _ = report.plot_series(short)
    assert np.array_equal(v_s, short["portfolio_value"].to_numpy())
    for frame in (equity, equity.head(0)):
        assert report.equity_png(frame, "run")[:8] == b"\x89PNG\r\n\x1a\n"
