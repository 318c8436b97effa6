"""The `backtest` command as a user runs it: sample data, imports, run, demo, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.storage.ucs import UnifiedCloudService

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
TARDIS = "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"


def test_sample_data_writes_the_full_layout(tmp_path: Path) -> None:
    root = tmp_path / "x"
    res = runner.invoke(
        app,
        [
            "sample-data",
            "--root",
            str(root),
            "--start",
            "2024-01-01",
            "--days",
            "3",
            "--trades-per-day",
            "5000",
        ],
    )
    assert res.exit_code == 0, res.output
    ucs = UnifiedCloudService(str(root))
    key = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
    for day in layout.days_between("2024-01-01", "2024-01-03"):
        assert ucs.exists_sync(layout.target("instruments"), layout.instruments_path(day))
        assert ucs.exists_sync(layout.target("ticks"), layout.trades_path(day, key))
        assert ucs.exists_sync(layout.target("ticks"), layout.funding_path(day, key))
        assert ucs.exists_sync(layout.target("ticks"), layout.bars_path(day, key))
        assert ucs.exists_sync(layout.target("signals"), layout.signals_path(day, "demo-strategy"))
    instruments = ucs.download_from_gcs_sync(
        layout.target("instruments"), layout.instruments_path("2024-01-02")
    )
    assert {
        "BINANCE-FUTURES:PERPETUAL:BTC-USDT",
        "BYBIT:PERPETUAL:BTC-USDT",
        "BINANCE:SPOT:BTC-USDT",
    } <= set(instruments["instrument_key"])


def test_run_prints_summary_and_locations_and_json(tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert (
        runner.invoke(
            app, ["sample-data", "--root", str(root), "--days", "2", "--trades-per-day", "5000"]
        ).exit_code
        == 0
    )
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(REPO / "configs/demo.yaml"),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--root",
            str(root),
            "--run-id",
            "cli-run-1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "net_pnl" in res.output and "summary.json" in res.output and "cli-run-1" in res.output
    # the by-algo execution quality and the path of the run's report
    assert "execution quality by algo" in res.output and "ALL" in res.output
    report_line = next(ln for ln in res.output.splitlines() if ln.startswith("report:"))
    report = Path(report_line.split(maxsplit=1)[1].removeprefix("file://"))
    assert report.name == "report.html" and report.is_file() and "cli-run-1" in str(report)
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(REPO / "configs/demo.yaml"),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--root",
            str(root),
            "--run-id",
            "cli-run-2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["status"] == "COMPLETED" and summary["run_id"] == "cli-run-2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2024-01-02", "--end", "2024-01-01"], "before"),
        (["--start", "2024-13-01", "--end", "2024-01-01"], "YYYY-MM-DD"),
        (["--start", "2024-01-01", "--end", "2024-01-01", "--run-id", "../escape"], "run_id"),
    ],
)
def test_run_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(
        app, ["run", "--config", str(REPO / "configs/demo.yaml"), "--root", str(tmp_path), *args]
    )
    assert res.exit_code != 0
    assert message in res.output
    assert not (tmp_path / "execution-store-cefi-central-element-323112").exists()


def test_run_with_missing_data_exits_nonzero(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(REPO / "configs/demo.yaml"),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-01",
            "--root",
            str(tmp_path),
            "--run-id",
            "nodata",
        ],
    )
    assert res.exit_code == 1
    assert "FAILED" in res.output and "instruments.parquet" in res.output
    ucs = UnifiedCloudService(str(tmp_path))
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path("nodata", "summary.json")
    )
    assert summary["status"] == "FAILED"


def test_bad_config_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy_id: x\ninstruments: ['NOT-A-KEY']\n")
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(bad),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-01",
            "--root",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "NOT-A-KEY" in res.output


def test_real_tardis_trades_imported_and_backtested(tmp_path: Path, shared_data: Path) -> None:
    """The real Binance USD-M tape of 2020-02-22 through `import tardis`, own signals, one run."""
    root = tmp_path / "real"
    res = runner.invoke(app, ["import", "tardis", str(shared_data / TARDIS), "--root", str(root)])
    assert res.exit_code == 0, res.output
    ucs = UnifiedCloudService(str(root))
    key = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
    trades = ucs.download_from_gcs_sync(
        layout.target("ticks"), layout.trades_path("2020-02-22", key)
    )
    assert trades.height == 9_999
    t0 = int(trades["ts_event"][0])
    # A researcher's signals: long, flat, short, flat, every 15 minutes, mixed algos.
    sigs = pl.DataFrame(
        {
            "signal_id": [f"s{i}" for i in range(6)],
            "ts_event": [t0 + (i + 1) * 15 * 60 * 10**9 for i in range(6)],
            "instrument_key": [key] * 6,
            "target_position": [0.5, 0.0, -0.3, 0.0, 0.2, 0.0],
            "execution_window_s": [30.0, 30.0, 60.0, 30.0, 60.0, 30.0],
            "algo": ["MARKET", "MARKET", "TWAP", "MARKET", "LIMIT", "MARKET"],
            "limit_price": [None, None, None, None, None, None],
        },
        schema_overrides={"limit_price": pl.Float64},
    )
    sig_file = tmp_path / "my_signals.csv"
    sigs.write_csv(sig_file)
    res = runner.invoke(
        app, ["import", "signals", str(sig_file), "--strategy", "my-strategy", "--root", str(root)]
    )
    assert res.exit_code == 0, res.output
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(
        "name: tardis-real\nstrategy_id: my-strategy\ninstruments: ['BINANCE-FUTURES:PERPETUAL:BTC-USDT']\n"
        "lookback_s: 5\ngrace_s: 5\n"
    )
    res = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(cfg),
            "--start",
            "2020-02-22",
            "--end",
            "2020-02-22",
            "--root",
            str(root),
            "--run-id",
            "tardis-real",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["execution_stats"]["operations"] == 6
    fills = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path("tardis-real", "fills.parquet")
    )
    assert fills.height >= 4
    # Every fill price traded on the real tape at that time (last second, or the last trade).
    tts = trades["ts_event"].to_numpy()
    tpx = trades["price"].to_numpy()
    for t, p in zip(
        fills["ts_event"].dt.epoch("ns").to_numpy(), fills["price"].to_numpy(), strict=True
    ):
        b = np.searchsorted(tts, t, side="right")
        a = min(np.searchsorted(tts, t - 10**9), b - 1)
        assert b > 0 and np.min(np.abs(tpx[a:b] - p)) <= 0.03 + 1e-9


@pytest.mark.slow
def test_demo_trades_in_a_fresh_process_has_its_own_root_and_no_book(tmp_path: Path) -> None:
    """`backtest demo --trades` in its own process as a user runs it (small data, clean cwd)."""
    env = {k: v for k, v in os.environ.items() if k != "BACKTEST_STORAGE_ROOT"}
    proc = subprocess.run(
        [sys.executable, "-m", "backtest_pipeline.cli", "demo", "--trades"]
        + ["--trades-per-day", "20000"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "net_pnl" in proc.stdout and "equity_curve.parquet" in proc.stdout
    assert "market data" in proc.stdout and f"{KEY}: trades" in proc.stdout
    assert "trades read / stored" in proc.stdout and "book_depth10" not in proc.stdout
    # Its own root: the book demo's ./data is untouched, and no book was generated.
    assert not (tmp_path / "data").exists()
    ucs = UnifiedCloudService(str(tmp_path / "data-trades"))
    ticks = ucs.list_files_sync(layout.target("ticks"), "")
    assert any("/data_type-trades/" in p for p in ticks)
    assert not any("/data_type-quotes/" in p or "/data_type-book_depth10/" in p for p in ticks)
    results = ucs.list_files_sync(layout.target("results"), "")
    assert sorted(r.rsplit("/", 1)[-1] for r in results if r.endswith(".parquet")) == sorted(
        n for n in layout.RESULT_OBJECTS if n.endswith(".parquet")
    )
    assert any(r.endswith("execution.log") for r in results)
    summary_path = next(r for r in results if r.endswith("/summary.json"))
    summary = json.loads(
        ucs.download_from_gcs_sync(layout.target("results"), summary_path, "bytes")
    )
    assert summary["execution_stats"]["market_data"] == {KEY: "trades"}
    # The configuration is demo.yaml unchanged (`auto`): the run id is the plain demo's.
    assert summary["config"]["market_data"] == "auto"


def test_demo_trades_refuses_a_root_holding_a_book(tmp_path: Path) -> None:
    """With a book in the root, `auto` would run on depth: --trades says so instead."""
    ucs = UnifiedCloudService(str(tmp_path))
    ucs.upload_to_gcs_sync(
        layout.target("ticks"), layout.quotes_path("2024-01-02", KEY), b"not read", "bytes"
    )
    res = runner.invoke(app, ["demo", "--trades", "--root", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "demo --trades" in res.output and "2024-01-02" in res.output
    assert "market_data: auto" in res.output and KEY in res.output
    # Nothing generated, nothing run.
    assert ucs.list_files_sync(layout.target("results"), "") == []
    assert not ucs.exists_sync(layout.target("instruments"), layout.instruments_path("2024-01-01"))


def _touch_in_force(book: pl.DataFrame, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best ask and best bid of the last stored snapshot at or before each time."""
    idx = np.searchsorted(book["ts_event"].cast(pl.Int64).to_numpy(), ts, side="right") - 1
    assert (idx >= 0).all(), "a fill before the day's first snapshot"
    return book["ask_price_0"].to_numpy()[idx], book["bid_price_0"].to_numpy()[idx]


@pytest.mark.slow
def test_demo_runs_on_the_book_in_data_and_never_fills_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backtest demo` (the README's command) on small data, from a clean cwd: `auto` → depth."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BACKTEST_STORAGE_ROOT", raising=False)
    res = runner.invoke(app, ["demo", "--trades-per-day", "20000"])
    assert res.exit_code == 0, res.output
    assert "net_pnl" in res.output and "execution quality by algo" in res.output
    assert f"{KEY}: depth (10-level book" in res.output
    assert "book_depth10 read / stored" in res.output and "trades read / stored" in res.output
    assert not (tmp_path / "data-trades").exists()
    ucs = UnifiedCloudService(str(tmp_path / "data"))
    key = KEY
    days = layout.days_between("2024-01-01", "2024-01-03")
    t_res = layout.target("results")
    summaries = [p for p in ucs.list_files_sync(t_res, "") if p.endswith("/summary.json")]
    assert len(summaries) == 1
    summary = json.loads(ucs.download_from_gcs_sync(t_res, summaries[0], format="bytes"))
    assert summary["status"] == "COMPLETED"
    # demo.yaml as it is (`auto`): the run a user gets with `backtest run --config` on ./data.
    assert summary["config"]["market_data"] == "auto"
    assert summary["execution_stats"]["market_data"] == {key: "depth"}
    assert summary["execution_stats"]["venue_books"]["BINANCE-FUTURES"]["book_type"] == "L2_MBP"
    run_id = summary["run_id"]
    # Every day's book was read, by byte ranges like the trades.
    book_inputs = [i for i in summary["inputs"] if "/data_type-book_depth10/" in i["path"]]
    assert len(book_inputs) == len(days)
    assert all(0 < i["bytes_read"] < i["bytes_total"] for i in book_inputs)

    def result(name: str) -> pl.DataFrame:
        df = ucs.download_from_gcs_sync(t_res, layout.result_path(run_id, name))
        return df if isinstance(df, pl.DataFrame) else pl.from_arrow(df)  # type: ignore[return-value]

    fills = result("fills.parquet").join(
        result("orders.parquet").select("order_id", "order_type"), on="order_id"
    )
    market = fills.filter(pl.col("order_type") == "MARKET")
    assert market.height > 0
    through = 0
    for d in days:
        raw = ucs.download_from_gcs_sync(layout.target("ticks"), layout.book_depth10_path(d, key))
        book = raw if isinstance(raw, pl.DataFrame) else pl.from_arrow(raw)
        assert isinstance(book, pl.DataFrame)
        lo, hi = layout.day_bounds_ns(d)
        day = market.filter(pl.col("ts_event").cast(pl.Int64).is_between(lo, hi - 1))
        ask, bid = _touch_in_force(book, day["ts_event"].cast(pl.Int64).to_numpy())
        buy = day["side"].to_numpy() == "BUY"
        px = day["price"].to_numpy()
        # A market buy never fills below the best ask in force, a sell never above the best bid.
        assert (px[buy] >= ask[buy]).all() and (px[~buy] <= bid[~buy]).all()
        through += int((px[buy] > ask[buy]).sum() + (px[~buy] < bid[~buy]).sum())
    # And some orders walked past the touch: the fills came from the levels, not the last print.
    assert through > 0
