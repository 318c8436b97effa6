"""Execution quality per operation: ``operations.parquet`` and ``execution_stats.tca``.

Every column is recomputed here from ``orders.parquet``, ``fills.parquet``, the signals and the
input trade files (read whole, not the slices the run read), with code that does not import the
product's results modules; then the by-algo block of ``summary.json`` from those recomputed
rows. The sample data gets a few crafted signals on its second day so that every status shows:
a TWAP superseded by the next signal, an order the risk limit rejects, a LIMIT far from the
market that cannot fill.
"""

from __future__ import annotations

import io
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run.runner import BacktestResult, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
START, END = date(2024, 1, 1), date(2024, 1, 3)
KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
NS = 1_000_000_000
LOT = 0.001
COLUMNS = {
    "operation_id": "string", "signal_id": "string", "instrument_key": "string",
    "algo": "string", "side": "string", "ts_signal": "timestamp[ns, tz=UTC]",
    "ts_end": "timestamp[ns, tz=UTC]", "target_quantity": "double", "filled_quantity": "double",
    "fill_ratio": "double", "status": "string", "orders": "int64", "market_data": "string",
    "arrival_price": "double", "arrival_spread_bps": "double", "avg_fill_price": "double",
    "end_price": "double", "market_vwap": "double", "execution_cost_bps": "double",
    "fees_bps": "double", "opportunity_cost_bps": "double",
    "implementation_shortfall_bps": "double", "vwap_slippage_bps": "double",
    "duration_s": "double",
}  # fmt: skip
CRAFTED = {
    "twap": "demo-strategy-20240102-x-twap",  # superseded by "next" 35 s later
    "next": "demo-strategy-20240102-x-next",
    "huge": "demo-strategy-20240102-x-huge",  # 9 BTC: over max_order_quantity (5)
    "far": "demo-strategy-20240102-x-far",  # a buy limit 3 % under the market
    "flat": "demo-strategy-20240102-x-flat",
}


def _trades(ucs: UnifiedCloudService) -> pl.DataFrame:
    t = layout.target("ticks")
    parts = [
        ucs.download_from_gcs_sync(t, layout.trades_path(d, KEY)).select(
            pl.col("ts_event").cast(pl.Int64), "price", "size"
        )
        for d in layout.days_between(START, END)
    ]
    return pl.concat(parts).sort("ts_event", maintain_order=True)


def _craft_signals(ucs: UnifiedCloudService, trades: pl.DataFrame) -> None:
    """Five signals in the widest gap of day 2's signals (see the module docstring)."""
    day = START + timedelta(days=1)
    t_sig = layout.target("signals")
    path = layout.signals_path(day, "demo-strategy")
    sig = ucs.download_from_gcs_sync(t_sig, path)
    ts = sig["ts_event"].to_numpy()
    gap = int(np.argmax(np.diff(ts)))
    assert ts[gap + 1] - ts[gap] > 900 * NS  # room for the crafted signals and their windows
    t0 = int(ts[gap]) + 300 * NS
    px = float(trades.filter(pl.col("ts_event") <= t0)["price"][-1])
    far = math.floor(px * 0.97 * 10) / 10
    rows = [
        (CRAFTED["twap"], t0, 0.4, 120.0, "TWAP", None),
        (CRAFTED["next"], t0 + 35 * NS, -0.3, 30.0, "MARKET", None),
        (CRAFTED["huge"], t0 + 120 * NS, 9.0, 30.0, "MARKET", None),
        (CRAFTED["far"], t0 + 200 * NS, 0.2, 60.0, "LIMIT", far),
        (CRAFTED["flat"], t0 + 300 * NS, 0.0, 30.0, "MARKET", None),
    ]
    extra = pl.DataFrame(
        [(r[0], r[1], KEY, r[2], r[3], r[4], r[5]) for r in rows],
        schema=sig.schema,
        orient="row",
    )
    ucs.upload_to_gcs_sync(t_sig, path, pl.concat([sig, extra]).sort("ts_event"), format="parquet")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[UnifiedCloudService, BacktestResult]:
    ucs = UnifiedCloudService(str(tmp_path_factory.mktemp("operations")))
    generate_sample_data(ucs, START, 3, None, trades_per_day=60_000, seed=7)
    _craft_signals(ucs, _trades(ucs))
    config = BacktestConfig.from_yaml(CONFIGS / "demo.yaml")
    return ucs, run_backtest(config, START, END, ucs=ucs)


def _result(ucs: UnifiedCloudService, run_id: str, name: str) -> pl.DataFrame:
    return ucs.download_from_gcs_sync(layout.target("results"), layout.result_path(run_id, name))


def _signals(ucs: UnifiedCloudService) -> pl.DataFrame:
    t = layout.target("signals")
    return pl.concat(
        ucs.download_from_gcs_sync(t, layout.signals_path(d, "demo-strategy"))
        for d in layout.days_between(START, END)
    ).with_columns(pl.col("ts_event").cast(pl.Int64))


def _expected(ucs: UnifiedCloudService, run_id: str) -> pl.DataFrame:
    """operations.parquet recomputed from orders, fills, signals and the whole trade files."""
    orders = _result(ucs, run_id, "orders.parquet").with_columns(
        pl.col("created_at", "updated_at").dt.epoch("ns")
    )
    fills = _result(ucs, run_id, "fills.parquet").with_columns(pl.col("ts_event").dt.epoch("ns"))
    trades = _trades(ucs)
    tr_ts, tr_px, tr_sz = (trades[c].to_numpy() for c in ("ts_event", "price", "size"))
    signals = _signals(ucs).sort("ts_event")
    fill_ts = fills["ts_event"].to_numpy()
    signed = np.where(fills["side"].to_numpy() == "BUY", 1.0, -1.0) * fills["quantity"].to_numpy()
    fills = fills.join(orders.select("order_id", "operation_id"), on="order_id")
    rows = []
    sig_ts = signals["ts_event"].to_numpy()
    for i, s in enumerate(signals.iter_rows(named=True)):
        op_id = f"OP-{s['signal_id']}"
        position = float(signed[fill_ts < s["ts_event"]].sum())
        delta = s["target_position"] - position
        target = math.floor(abs(delta) / LOT + 1e-9) * LOT
        if target < LOT - 1e-12:
            continue  # no work: not an operation row
        o = orders.filter(pl.col("operation_id") == op_id)
        f = fills.filter(pl.col("operation_id") == op_id)
        assert o.height > 0, op_id
        sigma = 1.0 if delta > 0 else -1.0
        ts0, ts1 = s["ts_event"], int(o["updated_at"].max())  # type: ignore[arg-type]
        filled = float(f["quantity"].sum())
        notional = float((f["quantity"] * f["price"]).sum())
        fees = float(f["fee"].sum())
        window_end = ts0 + round(s["execution_window_s"] * NS)
        nxt = sig_ts[i + 1] if i + 1 < len(sig_ts) else None
        if nxt is not None and nxt < window_end and filled < target - 1e-9:
            status = "SUPERSEDED"
        elif filled >= target - 1e-9:
            status = "FILLED"
        elif filled > 0:
            status = "PARTIAL"
        elif (o["status"] == "REJECTED").all():
            status = "REJECTED"
        else:
            status = "UNFILLED"
        arrival = float(tr_px[np.searchsorted(tr_ts, ts0, side="right") - 1])
        end = float(tr_px[np.searchsorted(tr_ts, ts1, side="right") - 1])
        inside = (tr_ts >= ts0) & (tr_ts <= ts1)
        vol = float(tr_sz[inside].sum())
        vwap = float((tr_px[inside] * tr_sz[inside]).sum()) / vol if vol > 0 else None
        ratio = filled / target
        avg = notional / filled if filled > 0 else None
        ec = sigma * (avg - arrival) / arrival * 1e4 if avg is not None else None
        fb = fees / (filled * avg) * 1e4 if avg is not None else None
        opp = sigma * (end - arrival) / arrival * 1e4 * (1 - ratio)
        shortfall = ratio * ((ec or 0.0) + (fb or 0.0)) + opp
        vs = sigma * (avg - vwap) / vwap * 1e4 if avg is not None and vwap is not None else None
        rows.append(
            {
                "operation_id": op_id, "signal_id": s["signal_id"],
                "instrument_key": s["instrument_key"], "algo": s["algo"],
                "side": "BUY" if sigma > 0 else "SELL", "ts_signal": ts0, "ts_end": ts1,
                "target_quantity": target, "filled_quantity": filled, "fill_ratio": ratio,
                "status": status, "orders": o.height, "market_data": "trades",
                "arrival_price": arrival, "arrival_spread_bps": None, "avg_fill_price": avg,
                "end_price": end, "market_vwap": vwap, "execution_cost_bps": ec,
                "fees_bps": fb, "opportunity_cost_bps": opp,
                "implementation_shortfall_bps": shortfall, "vwap_slippage_bps": vs,
                "duration_s": (ts1 - ts0) / NS,
            }
        )  # fmt: skip
    return pl.DataFrame(rows, infer_schema_length=None)


def test_operations_parquet_has_the_documented_schema(run) -> None:  # type: ignore[no-untyped-def]
    ucs, result = run
    raw = ucs.download_from_gcs_sync(
        layout.target("results"),
        layout.result_path(result.run_id, "operations.parquet"),
        format="bytes",
    )
    schema = pq.read_schema(io.BytesIO(raw))
    assert schema.names == list(COLUMNS)
    assert {f.name: str(f.type) for f in schema} == COLUMNS


def test_every_column_recomputed_from_orders_fills_and_the_trade_files(run) -> None:  # type: ignore[no-untyped-def]
    ucs, result = run
    got = _result(ucs, result.run_id, "operations.parquet").with_columns(
        pl.col("ts_signal", "ts_end").dt.epoch("ns")
    )
    want = _expected(ucs, result.run_id)
    assert got["operation_id"].to_list() == want["operation_id"].to_list()
    for col in COLUMNS:
        g, w = got[col].to_list(), want[col].to_list()
        if got[col].dtype == pl.Float64:
            assert [x is None for x in g] == [x is None for x in w], col
            pairs = [(a, b) for a, b in zip(g, w, strict=True) if a is not None]
            assert all(a == pytest.approx(b, rel=1e-9, abs=1e-9) for a, b in pairs), col
        else:
            assert g == w, col
    # the crafted cases and the three algos are all there
    status = dict(zip(got["signal_id"], got["status"], strict=True))
    assert status[CRAFTED["twap"]] == "SUPERSEDED"
    assert status[CRAFTED["huge"]] == "REJECTED"
    assert status[CRAFTED["far"]] == "UNFILLED"
    assert status[CRAFTED["next"]] == status[CRAFTED["flat"]] == "FILLED"
    rejected = got.filter(pl.col("signal_id") == CRAFTED["huge"]).row(0, named=True)
    assert rejected["filled_quantity"] == 0.0 and rejected["avg_fill_price"] is None
    assert rejected["implementation_shortfall_bps"] == pytest.approx(
        rejected["opportunity_cost_bps"]
    )
    twap = got.filter(pl.col("signal_id") == CRAFTED["twap"]).row(0, named=True)
    assert 0 < twap["fill_ratio"] < 1 and twap["orders"] >= 2
    assert set(got["algo"]) == {"MARKET", "LIMIT", "TWAP"}
    limit = got.filter(pl.col("algo") == "LIMIT")
    assert {"FILLED", "PARTIAL", "UNFILLED"} <= set(limit["status"])
    assert (got["status"] == "FILLED").sum() > 0 and got.filter(pl.col("status") == "UNFILLED")[
        "execution_cost_bps"
    ].is_null().all()


def _weighted(values: pl.Series, weights: pl.Series) -> float | None:
    ok = values.is_not_null() & values.is_not_nan()
    v, w = values.filter(ok).to_numpy(), weights.filter(ok).to_numpy()
    return float((v * w).sum() / w.sum()) if w.size and w.sum() else None


def test_tca_block_recomputed_from_the_operation_rows(run) -> None:  # type: ignore[no-untyped-def]
    ucs, result = run
    ops = _expected(ucs, result.run_id).with_columns(
        (pl.col("target_quantity") * pl.col("arrival_price")).alias("intended")
    )
    tca = _result(ucs, result.run_id, "summary.json")["execution_stats"]["tca"]
    assert list(tca) == ["LIMIT", "MARKET", "TWAP", "ALL"]
    for algo, block in tca.items():
        df = ops if algo == "ALL" else ops.filter(pl.col("algo") == algo)
        is_ = df["implementation_shortfall_bps"]
        want = {
            "operations": df.height,
            "intended_notional": float(df["intended"].sum()),
            "fill_ratio": float(df["filled_quantity"].sum() / df["target_quantity"].sum()),
            "implementation_shortfall_bps_mean": _weighted(is_, df["intended"]),
            "implementation_shortfall_bps_median": float(is_.median()),  # type: ignore[arg-type]
            "implementation_shortfall_bps_p90": float(is_.quantile(0.9, "linear")),  # type: ignore[arg-type]
            "execution_cost_bps": _weighted(df["execution_cost_bps"], df["intended"]),
            "fees_bps": _weighted(df["fees_bps"], df["intended"]),
            "opportunity_cost_bps": _weighted(df["opportunity_cost_bps"], df["intended"]),
        }
        assert set(block) == set(want), algo
        for k, v in want.items():
            assert block[k] == pytest.approx(v, rel=1e-9, abs=1e-9), (algo, k)
    assert _result(ucs, result.run_id, "summary.json")["execution_stats"]["market_data"] == {
        KEY: "trades"
    }


def test_quotes_series_give_mid_and_spread_at_arrival() -> None:
    """The market side takes any price series: a mid and spread series as quotes would give."""
    from backtest_pipeline.results.operations import (
        MarketReferences,
        PendingOperation,
        PriceSeries,
        Tape,
    )

    day0 = layout.day_bounds_ns(START)[0]
    ts = np.array([day0 + 1 * NS, day0 + 5 * NS, day0 + 9 * NS], dtype=np.int64)
    mid = np.array([100.0, 101.0, 102.0])
    spread = np.array([2.0, 1.0, 3.0])
    tape_ts = np.array([day0 + 5 * NS, day0 + 7 * NS, day0 + 9 * NS], dtype=np.int64)
    tape = Tape(tape_ts, np.array([101.5, 101.2, 101.0]), np.array([1.0, 2.0, 3.0]))
    refs = MarketReferences()
    refs.add_day(START, KEY, PriceSeries(ts, mid, spread), tape, "quotes")
    refs.resolve([PendingOperation("OP-q", KEY, day0 + 6 * NS, day0 + 9 * NS)])
    row = refs.frame().row(0, named=True)
    assert row["market_data"] == "quotes"
    assert (row["arrival_price"], row["arrival_spread_bps"]) == (101.0, 1.0)
    assert row["end_price"] == 102.0
    assert row["market_vwap"] == pytest.approx((2 * 101.2 + 3 * 101.0) / 5)  # the 5 s trade: before
    with pytest.raises(ValueError, match="market_data"):
        refs.add_day(START, KEY, PriceSeries(ts, mid), tape, "bars")
