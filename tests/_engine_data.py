"""Small crafted inputs for the engine tests (instruments rows, trades, signals, configs)."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.engine.driver import DayInput

DAY1 = date(2024, 1, 1)
DAY2 = date(2024, 1, 2)
S = 1_000_000_000
MS = 1_000_000
BTC = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
BTC_BYBIT = "BYBIT:PERPETUAL:BTC-USDT"


def t(day: date, seconds: float) -> int:
    """ns timestamp `seconds` after the day's midnight."""
    return layout.day_bounds_ns(day)[0] + round(seconds * S)


def instrument_row(key: str, **kw: Any) -> dict[str, Any]:
    venue, itype, base, quote = layout.parse_instrument_key(key)
    row: dict[str, Any] = {
        "instrument_key": key,
        "venue": venue,
        "instrument_type": itype,
        "base_asset": base,
        "quote_asset": quote,
        "settle_asset": quote,
        "venue_symbol": f"{base}{quote}",
        "price_precision": 1,
        "size_precision": 3,
        "tick_size": 0.1,
        "lot_size": 0.001,
        "min_quantity": 0.001,
        "max_quantity": None,
        "min_notional": None,
        "maker_fee": 0.0002,
        "taker_fee": 0.0005,
        "margin_init": 0.1,
        "margin_maint": 0.05,
        "contract_multiplier": 1.0,
        "is_inverse": False,
        "expiry_ts": None,
    }
    row.update(kw)
    return row


def instruments_df(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(
        list(rows),
        schema_overrides={
            "price_precision": pl.Int32,
            "size_precision": pl.Int32,
            "max_quantity": pl.Float64,
            "min_notional": pl.Float64,
            "expiry_ts": pl.Int64,
        },
    )


def trades(rows: list[tuple[int, float, float, str]], prefix: str = "T") -> pa.Table:
    """rows: (ts_ns, price, size, side)."""
    return pa.table(
        {
            "ts_event": pa.array([r[0] for r in rows], pa.int64()),
            "trade_id": [f"{prefix}{i}" for i in range(len(rows))],
            "price": pa.array([r[1] for r in rows], pa.float64()),
            "size": pa.array([r[2] for r in rows], pa.float64()),
            "side": [r[3] for r in rows],
        }
    )


def steady_trades(
    day: date,
    start_s: float,
    end_s: float,
    step_s: float,
    price: float,
    size: float = 5.0,
    prefix: str = "T",
    drift: float = 0.0,
) -> pa.Table:
    rows = []
    i = 0
    s = start_s
    while s <= end_s + 1e-9:
        rows.append((t(day, s), round(price + drift * i, 1), size, "buy" if i % 2 else "sell"))
        i += 1
        s = start_s + i * step_s
    return trades(rows, prefix)


def signals(*rows: dict[str, Any]) -> pl.DataFrame:
    base = {"execution_window_s": 10.0, "algo": "MARKET", "limit_price": None}
    return pl.DataFrame(
        [{**base, **r} for r in rows],
        schema={
            "signal_id": pl.Utf8,
            "ts_event": pl.Int64,
            "instrument_key": pl.Utf8,
            "target_position": pl.Float64,
            "execution_window_s": pl.Float64,
            "algo": pl.Utf8,
            "limit_price": pl.Float64,
        },
    )


def config(instruments: list[str], **kw: Any) -> BacktestConfig:
    return BacktestConfig.model_validate({"strategy_id": "test", "instruments": instruments, **kw})


def day_input(
    day: date,
    inst: pl.DataFrame,
    sigs: pl.DataFrame,
    trade_tables: dict[str, pa.Table],
    funding: dict[str, pl.DataFrame] | None = None,
    bars: dict[str, pl.DataFrame] | None = None,
) -> DayInput:
    return DayInput(day, inst, sigs, trade_tables, funding or {}, bars)


def funding_df(rows: list[tuple[int, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"ts_event": pl.Int64, "funding_rate": pl.Float64, "mark_price": pl.Float64},
        orient="row",
    )
