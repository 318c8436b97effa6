"""`sample-data --book`: quotes and a 10-level book that agree with the sample trades."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import readers, sample, schemas
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 2)


@pytest.fixture(scope="module")
def day_data() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    trades, log_mid = sample.generate_trades(KEY, DAY, 200_000, seed=3)
    book, quotes = sample.generate_book(KEY, DAY, trades, log_mid, seed=3)
    return (
        schemas.validate_trades_frame(trades, "t"),
        schemas.validate_book_depth10_frame(book, "b"),
        schemas.validate_quotes_frame(quotes, "q"),
    )


def in_force(trades: pl.DataFrame, book: pl.DataFrame) -> pl.DataFrame:
    """Each trade beside the book row in force at its time (the last row at or before it)."""
    return trades.join_asof(
        book.drop("ts_init").rename({"ts_event": "book_ts"}),
        left_on="ts_event",
        right_on="book_ts",
        strategy="backward",
    )


def test_trades_are_at_the_touch_and_walk_real_levels(day_data: tuple) -> None:
    trades, book, _ = day_data
    j = in_force(trades, book)
    assert j["book_ts"].null_count() == 0
    # A sweep is several trades of one aggressor at one timestamp: its first is at the touch.
    first = j.filter(
        (pl.col("ts_event") != pl.col("ts_event").shift(1)).fill_null(True)
        | (pl.col("side") != pl.col("side").shift(1)).fill_null(True)
    )
    buys, sells = first.filter(pl.col("side") == "buy"), first.filter(pl.col("side") == "sell")
    assert (buys["price"] == buys["ask_price_0"]).all()
    assert (sells["price"] == sells["bid_price_0"]).all()
    # Every fill is at a level the book showed (or beyond the 10 levels it stores).
    lv = [f"ask_price_{i}" for i in range(10)]
    bl = [f"bid_price_{i}" for i in range(10)]
    at_ask = pl.any_horizontal(pl.col(c) == pl.col("price") for c in lv)
    at_bid = pl.any_horizontal(pl.col(c) == pl.col("price") for c in bl)
    ok = pl.when(pl.col("side") == "buy").then(at_ask | (pl.col("price") > pl.col("ask_price_9")))
    ok = ok.otherwise(at_bid | (pl.col("price") < pl.col("bid_price_9")))
    assert j.select(ok.all()).item()


def test_levels_hold_what_the_tape_took(day_data: tuple) -> None:
    trades, book, _ = day_data
    j = in_force(trades, book)
    took = j.group_by("book_ts", "side", "price").agg(pl.col("size").sum().alias("took"))
    sides = []
    for side, book_side in (("buy", "ask"), ("sell", "bid")):
        long = book.select(
            pl.col("ts_event").alias("book_ts"),
            pl.concat_list([f"{book_side}_price_{i}" for i in range(10)]).alias("price"),
            pl.concat_list([f"{book_side}_size_{i}" for i in range(10)]).alias("shown"),
        ).explode("price", "shown")
        sides.append(
            took.filter(pl.col("side") == side).join(long, on=["book_ts", "price"], how="inner")
        )
    both = pl.concat(sides)
    assert both.height > 10_000
    assert (both["took"] <= both["shown"] + 1e-9).all()


def test_spread_varies_and_a_large_order_walks(day_data: tuple) -> None:
    _, book, quotes = day_data
    spread_ticks = ((book["ask_price_0"] - book["bid_price_0"]) / 0.1).round().cast(pl.Int64)
    counts = spread_ticks.value_counts().sort("ask_price_0")
    assert counts["ask_price_0"][0] == 1 and counts.height >= 4
    assert (spread_ticks == 1).mean() > 0.5 and (spread_ticks > 1).mean() > 0.1
    # A 2.7 BTC market buy (the demo's size) walks past the touch in most states.
    sizes = np.stack([book[f"ask_size_{i}"].to_numpy() for i in range(10)], axis=1)
    prices = np.stack([book[f"ask_price_{i}"].to_numpy() for i in range(10)], axis=1)
    cum = np.cumsum(sizes, axis=1)
    levels_walked = (cum < 2.7).sum(axis=1) + 1
    assert np.median(levels_walked) >= 2 and (cum[:, -1] >= 2.7).mean() > 0.99
    take = np.clip(2.7 - (cum - sizes), 0, sizes)
    vwap = (take * prices).sum(axis=1) / take.sum(axis=1)
    assert (vwap > prices[:, 0]).mean() > 0.5
    # Quotes are the book's top, one row per change.
    j = quotes.join(book, on="ts_event", how="inner")
    assert j.height == quotes.height
    assert (j["bid_price"] == j["bid_price_0"]).all() and (j["ask_size"] == j["ask_size_0"]).all()


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.parquet"))
        if "bars_1m" not in str(p)
    }


def test_book_option_leaves_other_files_identical(tmp_path: Path) -> None:
    plain, with_book = tmp_path / "a", tmp_path / "b"
    generate_sample_data(UnifiedCloudService(str(plain)), DAY, 1, trades_per_day=20_000)
    rep = generate_sample_data(
        UnifiedCloudService(str(with_book)), DAY, 1, trades_per_day=20_000, book=True
    )
    a, b = digest(plain), digest(with_book)
    assert set(b) - set(a) == {
        f"market-data-tick-cefi-central-element-323112/{layout.quotes_path(DAY, KEY)}",
        f"market-data-tick-cefi-central-element-323112/{layout.book_depth10_path(DAY, KEY)}",
    }
    assert all(b[k] == v for k, v in a.items())
    ucs = UnifiedCloudService(str(with_book))
    assert readers.read_book_depth10(ucs, DAY, KEY).height == rep["per_day"][0]["book_depth10"][KEY]
    again = tmp_path / "c"
    generate_sample_data(UnifiedCloudService(str(again)), DAY, 1, trades_per_day=20_000, book=True)
    assert digest(again) == b  # deterministic
