"""End-to-end `run_backtest` on generated sample data: outputs, invariants, metrics, determinism.

Every PnL and metric of summary.json is recomputed here from the output Parquet files with code
that does not import the product's results/metrics modules.
"""

from __future__ import annotations

import io
import math
from datetime import date
from pathlib import Path

import google_crc32c
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run.runner import BacktestFailed, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
START, END = date(2024, 1, 1), date(2024, 1, 3)
NS = 1_000_000_000
KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> UnifiedCloudService:
    root = tmp_path_factory.mktemp("sample")
    ucs = UnifiedCloudService(str(root))
    generate_sample_data(ucs, START, 3, None, trades_per_day=60_000, seed=7)
    return ucs


@pytest.fixture(scope="module")
def demo_config() -> BacktestConfig:
    return BacktestConfig.from_yaml(CONFIGS / "demo.yaml")


@pytest.fixture(scope="module")
def demo_run(sample_root: UnifiedCloudService, demo_config: BacktestConfig):  # type: ignore[no-untyped-def]
    return run_backtest(demo_config, START, END, ucs=sample_root)


def _read_result(ucs: UnifiedCloudService, run_id: str, name: str) -> pl.DataFrame:
    return ucs.download_from_gcs_sync(layout.target("results"), layout.result_path(run_id, name))


def test_writes_the_seven_objects_with_exact_schemas(sample_root, demo_run) -> None:  # type: ignore[no-untyped-def]
    t = layout.target("results")
    for path in layout.all_result_paths(demo_run.run_id):
        assert sample_root.exists_sync(t, path), path
    expected = {
        "orders.parquet": [
            "order_id",
            "operation_id",
            "instrument_key",
            "side",
            "order_type",
            "quantity",
            "price",
            "status",
            "created_at",
            "updated_at",
            "rejection_reason",
        ],
        "fills.parquet": [
            "fill_id",
            "order_id",
            "instrument_key",
            "side",
            "quantity",
            "price",
            "fee",
            "fee_currency",
            "ts_event",
            "venue",
        ],
        "positions.parquet": [
            "ts_event",
            "instrument_key",
            "quantity",
            "avg_entry_price",
            "current_price",
            "unrealized_pnl",
            "realized_pnl",
        ],
        "equity_curve.parquet": [
            "ts_event",
            "portfolio_value",
            "cash_balance",
            "margin_used",
            "unrealized_pnl",
            "drawdown_pct",
        ],
    }
    for name, cols in expected.items():
        raw = sample_root.download_from_gcs_sync(
            t, layout.result_path(demo_run.run_id, name), format="bytes"
        )
        schema = pq.read_schema(io.BytesIO(raw))
        assert schema.names == cols, name
        for c in cols:
            if c in ("ts_event", "created_at", "updated_at"):
                assert str(schema.field(c).type) == "timestamp[ns, tz=UTC]", (name, c)
    summary = sample_root.download_from_gcs_sync(
        t, layout.result_path(demo_run.run_id, "summary.json")
    )
    assert summary["status"] == "COMPLETED" and summary["run_id"] == demo_run.run_id
    assert set(summary["pnl"]) == {"gross_pnl", "net_pnl", "total_fees", "funding_paid"}
    assert set(summary["metrics"]) == {
        "sharpe_ratio",
        "sortino_ratio",
        "max_drawdown_pct",
        "win_rate",
        "profit_factor",
        "total_trades",
    }
    for k in (
        "signals",
        "operations",
        "orders_submitted",
        "orders_filled",
        "orders_canceled",
        "orders_rejected",
        "fills",
        "avg_slippage_bps",
        "ticks_processed",
        "days",
        "bytes_read",
        "bytes_available",
        "wall_time_s",
        "engine_time_s",
        "ticks_per_second",
        "peak_rss_mb",
    ):
        assert k in summary["execution_stats"], k
    assert summary["execution_stats"]["days"] == 3
    assert summary["execution_stats"]["bytes_read"] > 0
    tick_inputs = [i for i in summary["inputs"] if "data_type-trades" in i["path"]]
    assert len(tick_inputs) == 3
    for i in tick_inputs:  # the local root's generation is the object's CRC32C, as GCS reports
        data = (sample_root.backend.root / i["bucket"] / i["path"]).read_bytes()
        assert i["generation"] == f"crc32c:{google_crc32c.value(data):08x}"
    assert all(0 < i["bytes_read"] <= i["bytes_total"] for i in tick_inputs)
    cfg = sample_root.download_from_gcs_sync(t, layout.config_path(demo_run.run_id))
    assert BacktestConfig.model_validate(cfg).run_id(START, END) == demo_run.run_id
    logtext = sample_root.download_from_gcs_sync(t, layout.log_path(demo_run.run_id))
    assert demo_run.run_id in logtext


def test_pnl_and_metrics_recomputed_from_output_files(sample_root, demo_run, demo_config) -> None:  # type: ignore[no-untyped-def]
    run_id = demo_run.run_id
    summary = sample_root.download_from_gcs_sync(
        layout.target("results"), layout.result_path(run_id, "summary.json")
    )
    fills = _read_result(sample_root, run_id, "fills.parquet")
    equity = _read_result(sample_root, run_id, "equity_curve.parquet")
    start_balance = demo_config.venue("BINANCE-FUTURES").starting_balance
    assert fills.height > 10

    # Fees.
    total_fees = float(fills["fee"].sum())
    assert summary["pnl"]["total_fees"] == pytest.approx(total_fees, rel=1e-9, abs=1e-9)

    # net = last portfolio value − start, and = gross − fees.
    pv = equity["portfolio_value"].to_numpy()
    assert summary["pnl"]["net_pnl"] == pytest.approx(pv[-1] - start_balance, rel=1e-9, abs=1e-6)
    assert summary["pnl"]["net_pnl"] == pytest.approx(
        summary["pnl"]["gross_pnl"] - summary["pnl"]["total_fees"], abs=1e-6
    )

    # Gross price PnL from cash flows alone: −Σ signed notional + final position × final mark.
    signed_qty = (
        np.where(fills["side"].to_numpy() == "BUY", 1.0, -1.0) * fills["quantity"].to_numpy()
    )
    cash_flow = -(signed_qty * fills["price"].to_numpy()).sum()
    final_pos = signed_qty.sum()
    positions = _read_result(sample_root, run_id, "positions.parquet")
    last_price = positions["current_price"][-1] if positions.height else 0.0
    price_pnl = cash_flow + final_pos * last_price
    assert summary["pnl"]["gross_pnl"] == pytest.approx(
        price_pnl - summary["pnl"]["funding_paid"], abs=1e-4
    )

    # Max drawdown from the curve.
    mdd = 100 * float(np.min(pv / np.maximum.accumulate(pv) - 1))
    assert summary["metrics"]["max_drawdown_pct"] == pytest.approx(mdd, abs=1e-9)

    # Sharpe / Sortino on an hourly grid: last value at or before each hour mark, start included.
    ts = equity["ts_event"].dt.epoch("ns").to_numpy()
    start_ns, end_ns = layout.day_bounds_ns(START)[0], layout.day_bounds_ns(END)[1]
    marks = list(range(start_ns, end_ns + 1, 3600 * NS))
    values = [start_balance]
    for m in marks[1:]:
        idx = np.searchsorted(ts, m, side="right") - 1
        values.append(pv[idx])
    r = np.diff(values) / np.asarray(values[:-1])
    periods = 365 * 24
    sharpe = r.mean() / r.std(ddof=1) * math.sqrt(periods)
    assert summary["metrics"]["sharpe_ratio"] == pytest.approx(sharpe, rel=1e-6)
    downside = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert summary["metrics"]["sortino_ratio"] == pytest.approx(
        r.mean() / downside * math.sqrt(periods), rel=1e-6
    )

    # Round trips from the fills: flat → flat with fees, funding included via the summary's funding.
    pos, trip_pnl, trips = 0.0, 0.0, []
    for q, p, fee in zip(
        signed_qty, fills["price"].to_numpy(), fills["fee"].to_numpy(), strict=True
    ):
        new = pos + q
        if pos != 0 and np.sign(new) != np.sign(pos) and abs(new) > 1e-9:
            # flip: the closing part ends a trip, the rest opens the next
            close_frac = abs(pos) / abs(q)
            trip_pnl += -q * close_frac * p - fee * close_frac
            trips.append(trip_pnl)
            trip_pnl = -q * (1 - close_frac) * p - fee * (1 - close_frac)
            pos = new
            continue
        trip_pnl += -q * p - fee
        pos = new if abs(new) > 1e-9 else 0.0
        if pos == 0.0:
            trips.append(trip_pnl)
            trip_pnl = 0.0
    assert summary["metrics"]["total_trades"] == len(trips)
    # Funding shifts individual trips by cents at most here; the win count is checked loosely.
    wins = sum(1 for t in trips if t > 0)
    assert abs(summary["metrics"]["win_rate"] * len(trips) - wins) <= max(2, 0.05 * len(trips))


def test_invariants_on_generated_data(sample_root, demo_run, demo_config) -> None:  # type: ignore[no-untyped-def]
    run_id = demo_run.run_id
    fills = _read_result(sample_root, run_id, "fills.parquet")
    orders = _read_result(sample_root, run_id, "orders.parquet")
    assert set(orders["status"].unique()) <= {
        "FILLED",
        "PARTIALLY_FILLED",
        "CANCELED",
        "REJECTED",
        "EXPIRED",
    }
    # Every order belongs to an operation of a real signal.
    assert orders["operation_id"].null_count() == 0
    assert set(orders["operation_id"]) <= set(demo_run.operations["operation_id"])
    assert set(fills["order_id"]) <= set(orders["order_id"])

    # No fill outside a signal interval (signal ts .. + window + grace + latency).
    sigs = pl.concat(
        [
            sample_root.download_from_gcs_sync(
                layout.target("signals"), layout.signals_path(d, "demo-strategy")
            )
            for d in layout.days_between(START, END)
        ]
    )
    lat = int(demo_config.venue("BINANCE-FUTURES").latency.base_ms * 1e6)
    starts = sigs["ts_event"].cast(pl.Int64).to_numpy()
    ends = (
        starts
        + (sigs["execution_window_s"].to_numpy() * NS).astype(np.int64)
        + lat
        + int(demo_config.grace_s * NS)
    )
    fts = fills["ts_event"].dt.epoch("ns").to_numpy()
    inside = np.array([np.any((starts <= t) & (t <= ends)) for t in fts])
    assert inside.all(), fills.filter(~pl.Series(inside)).head()

    # Fill prices within a few ticks of the trades printed during the order's life: from a
    # second before it was created to the fill (a resting limit traded through fills at its own
    # price, inside that range), plus the last buyer- and seller-initiated prints before the fill
    # (Nautilus's L1 ask and bid from trades).
    tick = 0.1
    trades = pl.concat(
        [
            sample_root.download_from_gcs_sync(layout.target("ticks"), layout.trades_path(d, KEY))
            for d in layout.days_between(START, END)
        ]
    )
    tts = trades["ts_event"].cast(pl.Int64).to_numpy()
    tpx = trades["price"].to_numpy()
    tside = trades["side"].to_numpy()
    created = dict(
        zip(orders["order_id"], orders["created_at"].dt.epoch("ns").to_numpy(), strict=True)
    )
    checked = 0
    for oid, t, p in zip(
        fills["order_id"],
        fills["ts_event"].dt.epoch("ns").to_numpy(),
        fills["price"].to_numpy(),
        strict=True,
    ):
        b = np.searchsorted(tts, t, side="right")
        # ... including the price in force when the order was created (the last print before).
        a = max(
            0,
            min(
                np.searchsorted(tts, created[oid] - NS),
                np.searchsorted(tts, created[oid], side="right") - 1,
                b - 1,
            ),
        )
        assert b > 0, f"fill at {t} before any trade"
        seen = list(tpx[a:b])
        for side in ("buy", "sell"):
            idx = np.nonzero(tside[:b] == side)[0]
            if idx.size:
                seen.append(tpx[idx[-1]])
        assert min(seen) - 3 * tick - 1e-9 <= p <= max(seen) + 3 * tick + 1e-9, (
            oid,
            t,
            p,
            min(seen),
            max(seen),
        )
        checked += 1
    assert checked == fills.height

    # Equity curve covers the grid of the whole range.
    equity = _read_result(sample_root, run_id, "equity_curve.parquet")
    grid = 3 * 1440 + 1
    assert equity.height >= grid
    assert (equity["drawdown_pct"] <= 0).all()


def test_two_runs_give_identical_parquet_bytes(sample_root, demo_run, demo_config) -> None:  # type: ignore[no-untyped-def]
    t = layout.target("results")
    before = {
        n: sample_root.download_from_gcs_sync(
            t, layout.result_path(demo_run.run_id, n), format="bytes"
        )
        for n in layout.RESULT_PARQUETS
    }
    s1 = sample_root.download_from_gcs_sync(t, layout.result_path(demo_run.run_id, "summary.json"))
    again = run_backtest(demo_config, START, END, ucs=sample_root)
    assert again.run_id == demo_run.run_id
    for n in layout.RESULT_PARQUETS:
        assert (
            sample_root.download_from_gcs_sync(
                t, layout.result_path(demo_run.run_id, n), format="bytes"
            )
            == before[n]
        ), n
    s2 = sample_root.download_from_gcs_sync(t, layout.result_path(demo_run.run_id, "summary.json"))
    assert (
        s1["pnl"] == s2["pnl"] and s1["metrics"] == s2["metrics"] and s1["inputs"] == s2["inputs"]
    )


def test_a_run_held_by_wait_to_write_writes_nothing_before_it_returns(
    sample_root, demo_run, demo_config
) -> None:  # type: ignore[no-untyped-def]
    """The Dagster path starts its backtest before its step asks for it: until the step lets it
    write, an earlier attempt's results stay as they are (not even removed), and afterwards the
    results are the very bytes of a run that wrote as it went."""
    t = layout.target("results")
    paths = layout.all_result_paths(demo_run.run_id)
    before = {p: sample_root.download_bytes_sync(t, p) for p in paths}
    held: list[dict[str, bytes]] = []

    def wait_to_write() -> None:
        held.append({p: sample_root.download_bytes_sync(t, p) for p in paths})

    again = run_backtest(demo_config, START, END, ucs=sample_root, wait_to_write=wait_to_write)
    assert again.run_id == demo_run.run_id and held == [before]
    for n in (*layout.RESULT_PARQUETS, "backtest_config.json"):
        path = next(p for p in paths if p.endswith("/" + n))
        assert sample_root.download_bytes_sync(t, path) == before[path], n
    summary = sample_root.download_from_gcs_sync(
        t, layout.result_path(again.run_id, "summary.json")
    )
    assert summary["status"] == "COMPLETED"


def test_a_held_run_that_fails_writes_its_failure_once_let_write(
    tmp_path: Path, demo_config: BacktestConfig
) -> None:
    ucs = UnifiedCloudService(str(tmp_path))
    generate_sample_data(ucs, START, 2, None, trades_per_day=5_000, seed=1)
    t = layout.target("results")
    missing = layout.trades_path(date(2024, 1, 2), KEY)
    ucs.delete_sync(layout.target("ticks"), missing)
    seen: list[bool] = []

    def wait_to_write() -> None:
        seen.append(ucs.exists_sync(t, layout.result_path("held-run", "summary.json")))

    with pytest.raises(BacktestFailed):
        run_backtest(
            demo_config,
            START,
            date(2024, 1, 2),
            ucs=ucs,
            run_id="held-run",
            wait_to_write=wait_to_write,
        )
    assert seen and not any(seen)  # nothing written before it returned
    summary = ucs.download_from_gcs_sync(t, layout.result_path("held-run", "summary.json"))
    assert summary["status"] == "FAILED" and missing in summary["error"]
    assert ucs.exists_sync(t, layout.config_path("held-run"))
    assert ucs.exists_sync(t, layout.log_path("held-run"))
    for n in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t, layout.result_path("held-run", n))


def test_missing_tick_file_fails_the_run_cleanly(
    tmp_path: Path, demo_config: BacktestConfig
) -> None:
    ucs = UnifiedCloudService(str(tmp_path))
    generate_sample_data(ucs, START, 2, None, trades_per_day=5_000, seed=1)
    missing = layout.trades_path(date(2024, 1, 2), KEY)
    ucs.delete_sync(layout.target("ticks"), missing)
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(demo_config, START, date(2024, 1, 2), ucs=ucs, run_id="broken-run")
    assert missing in str(ei.value)
    t = layout.target("results")
    summary = ucs.download_from_gcs_sync(t, layout.result_path("broken-run", "summary.json"))
    assert summary["status"] == "FAILED" and missing in summary["error"]
    for n in layout.RESULT_PARQUETS:
        assert not ucs.exists_sync(t, layout.result_path("broken-run", n))
    assert ucs.exists_sync(t, layout.log_path("broken-run"))


def test_full_day_reads_whole_files(sample_root, demo_config) -> None:  # type: ignore[no-untyped-def]
    cfg = demo_config.model_copy(update={"full_day": True})
    res = run_backtest(cfg, START, START, ucs=sample_root, run_id="full-day-test")
    st = res.summary["execution_stats"]
    trades = sample_root.download_from_gcs_sync(
        layout.target("ticks"), layout.trades_path(START, KEY)
    )
    assert st["ticks_read"] == trades.height  # every row read; the engine got fewer
    assert 0 < st["ticks_processed"] < st["ticks_read"]
    # Every row group of the columns the engine needs (ts_init is not read), plus the footer.
    raw = sample_root.download_from_gcs_sync(
        layout.target("ticks"), layout.trades_path(START, KEY), format="bytes"
    )
    md = pq.read_metadata(io.BytesIO(raw))
    needed = {"ts_event", "trade_id", "price", "size", "side"}
    chunk_bytes = sum(
        md.row_group(g).column(c).total_compressed_size
        for g in range(md.num_row_groups)
        for c in range(md.num_columns)
        if md.row_group(g).column(c).path_in_schema in needed
    )
    assert chunk_bytes <= st["tick_bytes_read"] <= chunk_bytes + md.serialized_size + 70_000
