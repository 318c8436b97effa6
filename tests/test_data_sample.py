"""Sample data: deterministic bytes, counts, ordering, tick grid, coverage, funding times."""

from __future__ import annotations

import math
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import parquet_io, readers, sample, schemas
from backtest_pipeline.storage.ucs import UnifiedCloudService

BTC_PERP = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
KEYS = [BTC_PERP, "BINANCE:SPOT:ETH-USDT"]


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[UnifiedCloudService, dict, Path]:
    root = tmp_path_factory.mktemp("sample")
    ucs = UnifiedCloudService(root=str(root))
    summary = sample.generate_sample_data(
        ucs, date(2024, 1, 1), 2, KEYS, trades_per_day=30_000, seed=7
    )
    return ucs, summary, root


def test_deterministic_bytes(generated: tuple, tmp_path: Path) -> None:
    _, _, root = generated
    ucs2 = UnifiedCloudService(root=str(tmp_path / "again"))
    sample.generate_sample_data(ucs2, date(2024, 1, 1), 2, KEYS, trades_per_day=30_000, seed=7)
    a, b = _all_bytes(root), _all_bytes(tmp_path / "again")
    assert a.keys() == b.keys() and len(a) >= 2 * (1 + 2 + 1 + 1 + 1)
    assert a == b
    # a single later day generated alone is identical to the same day of the range
    ucs3 = UnifiedCloudService(root=str(tmp_path / "one"))
    sample.generate_sample_data(ucs3, date(2024, 1, 2), 1, KEYS, trades_per_day=30_000, seed=7)
    c = _all_bytes(tmp_path / "one")
    assert all(a[k] == v for k, v in c.items())
    # another seed differs
    t1, _ = sample.generate_trades(BTC_PERP, date(2024, 1, 1), 1000, seed=7)
    t2, _ = sample.generate_trades(BTC_PERP, date(2024, 1, 1), 1000, seed=8)
    assert not t1.equals(t2)


def test_trades_content(generated: tuple) -> None:
    ucs, summary, _ = generated
    inst = readers.read_instruments(ucs, "2024-01-01")
    assert len(inst) == 6 and set(KEYS) <= set(inst["instrument_key"].to_list())
    for day in ("2024-01-01", "2024-01-02"):
        for key in KEYS:
            df = readers.read_trades(ucs, day, key)  # validates: sorted, > 0, sides, unique ids
            assert df.height == 30_000
            assert summary["per_day"][0]["trades"][key] == 30_000
            tick = inst.filter(pl.col("instrument_key") == key)["tick_size"][0]
            lot = inst.filter(pl.col("instrument_key") == key)["lot_size"][0]
            ticks = df["price"].to_numpy() / tick
            assert np.abs(ticks - np.round(ticks)).max() < 1e-6
            lots = df["size"].to_numpy() / lot
            assert np.abs(lots - np.round(lots)).max() < 1e-6 and (lots >= 1 - 1e-9).all()
            assert 0.3 < (df["side"] == "buy").mean() < 0.7
            assert (df["ts_init"] >= df["ts_event"]).all()
            # bursty: busiest second far above the mean rate
            per_sec = df.group_by(pl.col("ts_event") // 1_000_000_000).len()["len"]
            assert per_sec.max() > 10 * df.height / 86_400


def test_signals_and_funding(generated: tuple) -> None:
    ucs, _, _ = generated
    for day in ("2024-01-01", "2024-01-02"):
        sig = readers.read_signals(ucs, day, "demo-strategy")
        start, end = layout.day_bounds_ns(day)
        for key in KEYS:
            s = sig.filter(pl.col("instrument_key") == key)
            cov = s["execution_window_s"].sum() / 86_400
            assert 0.07 <= cov <= 0.13
            assert s["execution_window_s"].min() >= 30 and s["execution_window_s"].max() <= 120
            ends = s["ts_event"] + (s["execution_window_s"] * 1e9).cast(pl.Int64)
            assert (ends <= end).all() and (s["ts_event"] >= start).all()
            assert (ends.head(-1) <= s["ts_event"].tail(-1)).all()  # non-overlapping
        assert set(sig["algo"].unique().to_list()) == {"MARKET", "LIMIT", "TWAP"}
        lim = sig.filter(pl.col("algo") == "LIMIT")
        assert lim["limit_price"].null_count() > 0 and lim["limit_price"].is_not_null().any()
        btc = sig.filter(pl.col("instrument_key") == BTC_PERP)
        assert btc["target_position"].abs().max() <= 0.6
        f = readers.read_funding(ucs, day, BTC_PERP)
        assert ((f["ts_event"] - start) // 3_600_000_000_000).to_list() == [0, 8, 16]
        assert (f["mark_price"] > 0).all()
        assert not ucs.exists_sync(
            layout.target("ticks"), layout.funding_path(day, "BINANCE:SPOT:ETH-USDT")
        )


def test_bars_from_trades(generated: tuple) -> None:
    ucs, _, _ = generated
    df = readers.read_trades(ucs, "2024-01-01", BTC_PERP)
    bars = sample.bars_from_trades(df)
    assert bars["ts_event"].is_sorted() and (bars["ts_event"] % 60_000_000_000 == 0).all()
    assert abs(bars["volume"].sum() - df["size"].sum()) < 1e-6
    assert (bars["high"] >= bars["low"]).all()
    assert bars["open"][0] == df["price"][0] and bars["close"][-1] == df["price"][-1]
    if hasattr(layout, "bars_path"):
        stored = ucs.download_from_gcs_sync(
            layout.target("ticks"), layout.bars_path("2024-01-01", BTC_PERP)
        )
        assert stored.equals(schemas.validate_bars(bars, "bars"))


def test_bars_are_each_minutes_own_reduction_every_time() -> None:
    """A 2 M-trade day's bars: every figure is that minute's rows reduced, and two derivations
    give the same bytes (a parallel group-by float sum used to differ in its last bit)."""
    table, _ = sample.generate_trades(BTC_PERP, date(2024, 1, 3), 2_000_000, seed=0)
    df = pl.from_arrow(schemas.validate_trades(table, "gen"))
    assert isinstance(df, pl.DataFrame)
    first, second = sample.bars_from_trades(df), sample.bars_from_trades(df)
    assert first.equals(second)
    assert parquet_io.table_to_parquet_bytes(first) == parquet_io.table_to_parquet_bytes(second)
    minute = df.with_columns(m=pl.col("ts_event") // 60_000_000_000 * 60_000_000_000)
    for row in first.sample(20, seed=1).iter_rows(named=True):
        part = minute.filter(pl.col("m") == row["ts_event"])
        assert row["volume"] == pytest.approx(math.fsum(part["size"].to_list()), rel=1e-12)
        assert (row["open"], row["close"]) == (part["price"][0], part["price"][-1])
        assert (row["high"], row["low"]) == (part["price"].max(), part["price"].min())


def test_generation_speed_2m() -> None:
    """Timing of one 2 M-trade day (printed, not asserted: machines differ)."""
    sample.generate_trades(BTC_PERP, date(2024, 1, 3), 10, seed=0)  # warm the template cache
    t0 = time.perf_counter()
    table, _ = sample.generate_trades(BTC_PERP, date(2024, 1, 3), 2_000_000, seed=0)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    payload = parquet_io.trades_to_parquet_bytes(schemas.validate_trades(table, "gen"))
    t_write = time.perf_counter() - t0
    assert table.num_rows == 2_000_000
    print(
        f"\n2M trades: generate {t_gen:.2f}s, validate+serialise {t_write:.2f}s, {len(payload) / 1e6:.1f} MB"
    )
