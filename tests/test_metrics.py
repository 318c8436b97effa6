"""Result tables and metrics: hand-computed cases plus an independent re-computation.

The random scenario is checked against a second implementation written differently on purpose:
cash-flow accounting (no average entry price) for the equity curve, and explicit loops for the
metrics grid, so a shared misconception between the two would have to be made twice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from backtest_pipeline.results.metrics import compute_metrics
from backtest_pipeline.results.tables import (
    build_equity_curve,
    build_pnl,
    build_positions,
    conform,
    position_events,
    result_schema,
    round_trips,
)

S = 1_000_000_000
MINUTE = 60 * S
HOUR = 3600 * S
DAY = 86_400 * S
START = int(datetime(2023, 5, 23, tzinfo=UTC).timestamp()) * S


def make_fills(rows: list[tuple[str, str, float, float, float, int]]) -> pl.DataFrame:
    """rows: (instrument_key, side, quantity, price, fee, ts_event)."""
    return pl.DataFrame(
        {
            "fill_id": [f"F{i}" for i in range(len(rows))],
            "order_id": [f"O{i}" for i in range(len(rows))],
            "instrument_key": [r[0] for r in rows],
            "side": [r[1] for r in rows],
            "quantity": [float(r[2]) for r in rows],
            "price": [float(r[3]) for r in rows],
            "fee": [float(r[4]) for r in rows],
            "fee_currency": ["USDT"] * len(rows),
            "ts_event": [int(r[5]) for r in rows],
            "venue": ["BINANCE-FUTURES"] * len(rows),
        },
        schema={
            "fill_id": pl.String,
            "order_id": pl.String,
            "instrument_key": pl.String,
            "side": pl.String,
            "quantity": pl.Float64,
            "price": pl.Float64,
            "fee": pl.Float64,
            "fee_currency": pl.String,
            "ts_event": pl.Int64,
            "venue": pl.String,
        },
    )


def make_marks(rows: list[tuple[str, float, int]]) -> pl.DataFrame:
    """rows: (instrument_key, price, ts_event)."""
    return pl.DataFrame(
        {
            "ts_event": [int(r[2]) for r in rows],
            "instrument_key": [r[0] for r in rows],
            "price": [float(r[1]) for r in rows],
        },
        schema={"ts_event": pl.Int64, "instrument_key": pl.String, "price": pl.Float64},
    )


def make_funding(rows: list[tuple[str, float, float, float, int]]) -> pl.DataFrame:
    """rows: (instrument_key, position, mark_price, funding_rate, ts_event)."""
    return pl.DataFrame(
        {
            "ts_event": [int(r[4]) for r in rows],
            "instrument_key": [r[0] for r in rows],
            "position": [float(r[1]) for r in rows],
            "mark_price": [float(r[2]) for r in rows],
            "funding_rate": [float(r[3]) for r in rows],
            "payment": [float(r[1] * r[2] * r[3]) for r in rows],
        },
        schema={
            "ts_event": pl.Int64,
            "instrument_key": pl.String,
            "position": pl.Float64,
            "mark_price": pl.Float64,
            "funding_rate": pl.Float64,
            "payment": pl.Float64,
        },
    )


def row_at(curve: pl.DataFrame, ts: int) -> dict[str, float]:
    """The last equity row at instant ``ts`` (the grid sample when there is one)."""
    rows = curve.filter(pl.col("ts_event").dt.epoch("ns") == ts)
    assert rows.height >= 1, f"no equity row at {ts}"
    return rows.row(-1, named=True)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_simple_round_trip() -> None:
    fills = make_fills(
        [("X", "BUY", 1, 100, 0.1, START + HOUR), ("X", "SELL", 1, 110, 0.11, START + 2 * HOUR)]
    )
    ev = position_events(fills)
    assert ev["quantity"].to_list() == [1.0, 0.0]
    assert ev["avg_entry_price"][0] == 100.0
    assert math.isnan(ev["avg_entry_price"][1])
    assert ev["realized_pnl"].to_list() == pytest.approx([0.0, 10.0])
    assert ev["cum_fees"].to_list() == pytest.approx([0.1, 0.21])

    trips = round_trips(fills, None)
    assert trips.height == 1
    trip = trips.row(0, named=True)
    assert (trip["direction"], trip["open_ts"], trip["close_ts"]) == (
        "LONG",
        START + HOUR,
        START + 2 * HOUR,
    )
    assert trip["net_pnl"] == pytest.approx(9.79)

    curve = build_equity_curve(fills, None, None, 1000.0, START, START + DAY)
    assert curve["portfolio_value"][-1] == pytest.approx(1009.79)
    pnl = build_pnl(fills, None, curve, 1000.0)
    assert pnl == pytest.approx(
        {"gross_pnl": 10.0, "net_pnl": 9.79, "total_fees": 0.21, "funding_paid": 0.0}
    )

    m = compute_metrics(curve, trips, HOUR, START, START + DAY)
    assert m["total_trades"] == 1
    assert m["win_rate"] == 1.0
    assert m["profit_factor"] is None  # no losing trade
    # Hourly values: 1000, 999.9 (fee), 1009.79, then flat for 22 hours -> 24 returns.
    r = np.array([999.9 / 1000 - 1, 1009.79 / 999.9 - 1] + [0.0] * 22)
    assert m["sharpe_ratio"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(8760))
    assert m["sortino_ratio"] == pytest.approx(
        r.mean() / math.sqrt(r[0] ** 2 / 24) * math.sqrt(8760)
    )
    # Only the first fill's fee dents the curve: 1000 -> 999.9 is the whole drawdown.
    assert m["max_drawdown_pct"] == pytest.approx(100 * (999.9 / 1000 - 1))


def test_flip_splits_fee_pro_rata_and_resets_entry() -> None:
    fills = make_fills(
        [
            ("X", "BUY", 1, 100, 0.1, START + 10 * S),
            ("X", "SELL", 3, 110, 0.3, START + HOUR),  # closes 1 long, opens 2 short
            ("X", "BUY", 2, 105, 0.2, START + 2 * HOUR),
        ]
    )
    ev = position_events(fills)
    assert ev["quantity"].to_list() == [1.0, -2.0, 0.0]
    assert ev["avg_entry_price"][1] == 110.0
    assert ev["realized_pnl"].to_list() == pytest.approx([0.0, 10.0, 20.0])
    assert ev["closed_trip_id"].to_list() == [None, 0, 1]
    assert ev["trip_id"].to_list() == [0, 1, None]

    trips = round_trips(fills)
    assert trips["direction"].to_list() == ["LONG", "SHORT"]
    assert trips["fees"].to_list() == pytest.approx([0.1 + 0.1, 0.2 + 0.2])
    assert trips["net_pnl"].to_list() == pytest.approx([9.8, 9.6])
    assert trips["open_ts"][1] == START + HOUR == trips["close_ts"][0]


def test_weighted_average_and_partial_reduce() -> None:
    fills = make_fills(
        [
            ("X", "BUY", 1, 100, 0.0, START + 1 * S),
            ("X", "BUY", 3, 104, 0.0, START + 2 * S),
            ("X", "SELL", 2, 110, 0.0, START + 3 * S),
        ]
    )
    ev = position_events(fills)
    assert ev["avg_entry_price"].to_list() == pytest.approx([100.0, 103.0, 103.0])
    assert ev["realized_pnl"].to_list() == pytest.approx([0.0, 0.0, 14.0])
    assert ev["quantity"].to_list() == [1.0, 4.0, 2.0]
    assert round_trips(fills).height == 0  # still open: not a trade yet


def test_float_dust_counts_as_flat() -> None:
    fills = make_fills(
        [
            ("X", "BUY", 0.1, 100, 0.0, START + 1 * S),
            ("X", "BUY", 0.2, 100, 0.0, START + 2 * S),
            ("X", "SELL", 0.3, 101, 0.0, START + 3 * S),
        ]
    )
    assert 0.1 + 0.2 - 0.3 != 0.0  # the dust this guards against
    ev = position_events(fills)
    assert ev["quantity"][-1] == 0.0
    assert math.isnan(ev["avg_entry_price"][-1])
    assert round_trips(fills)["price_pnl"].to_list() == pytest.approx([0.3])


def test_ties_keep_engine_order_and_unsorted_input_is_sorted_stably() -> None:
    t = START + HOUR
    close_then_open = make_fills(
        [
            ("X", "BUY", 1, 100, 0.0, START),
            ("X", "SELL", 1, 101, 0.0, t),
            ("X", "BUY", 1, 102, 0.0, t),
        ]
    )
    assert round_trips(close_then_open).height == 1
    open_then_close = make_fills(
        [
            ("X", "BUY", 1, 100, 0.0, START),
            ("X", "BUY", 1, 102, 0.0, t),
            ("X", "SELL", 1, 101, 0.0, t),
        ]
    )
    assert round_trips(open_then_close).height == 0
    shuffled = make_fills(
        [
            ("X", "SELL", 1, 101, 0.0, t),
            ("X", "BUY", 1, 100, 0.0, START),
            ("X", "BUY", 1, 102, 0.0, t),
        ]
    )
    assert position_events(shuffled)["fill_id"].to_list() == ["F1", "F0", "F2"]


def test_funding_long_pays_short_receives_and_is_attributed() -> None:
    t_fund = START + 8 * HOUR
    fills = make_fills(
        [
            ("A", "BUY", 2, 100, 0.0, START + HOUR),
            ("B", "SELL", 2, 100, 0.0, START + HOUR),
            ("A", "SELL", 2, 100, 0.0, START + 10 * HOUR),
            ("B", "BUY", 2, 100, 0.0, START + 10 * HOUR),
        ]
    )
    funding = make_funding([("A", 2, 100, 0.0001, t_fund), ("B", -2, 100, 0.0001, t_fund)])
    assert funding["payment"].to_list() == pytest.approx([0.02, -0.02])

    trips = round_trips(fills, funding)
    by_inst = dict(zip(trips["instrument_key"], trips["net_pnl"], strict=True))
    assert by_inst == pytest.approx({"A": -0.02, "B": 0.02})

    marks = make_marks([("A", 100, START), ("B", 100, START)])
    one_side = fills.filter(pl.col("instrument_key") == "A")
    curve = build_equity_curve(
        one_side, funding.filter(pl.col("instrument_key") == "A"), marks, 1000.0, START, START + DAY
    )
    assert row_at(curve, t_fund - MINUTE)["cash_balance"] == 1000.0
    assert row_at(curve, t_fund)["cash_balance"] == pytest.approx(999.98)  # inclusive at t
    pnl = build_pnl(one_side, funding.filter(pl.col("instrument_key") == "A"), curve, 1000.0)
    assert pnl["funding_paid"] == pytest.approx(0.02)
    assert pnl["gross_pnl"] == pytest.approx(-0.02)
    assert pnl["net_pnl"] == pytest.approx(curve["portfolio_value"][-1] - 1000.0)

    both = build_equity_curve(fills, funding, marks, 1000.0, START, START + DAY)
    assert row_at(both, t_fund)["cash_balance"] == pytest.approx(1000.0)  # they cancel


def test_funding_settled_before_a_same_instant_close_goes_to_the_closed_trip() -> None:
    t = START + 8 * HOUR
    fills = make_fills([("A", "BUY", 1, 100, 0.0, START), ("A", "SELL", 1, 100, 0.0, t)])
    trips = round_trips(fills, make_funding([("A", 1, 100, 0.001, t)]))
    assert trips["funding"].to_list() == pytest.approx([0.1])
    with pytest.raises(ValueError, match="match no open position"):
        round_trips(fills, make_funding([("A", -1, 100, 0.001, t)]))  # wrong side


def test_equity_curve_marks_margin_and_drawdown() -> None:
    fills = make_fills(
        [("X", "BUY", 2, 100, 0.5, START + 30 * S), ("Y", "SELL", 1, 50, 0.0, START + 30 * S)]
    )
    marks = make_marks(
        [
            ("X", 99, START),
            ("X", 97, START + 30 * S),  # same instant as the fill: the fill is more recent
            ("X", 90, START + 2 * MINUTE),
            ("Y", 55, START + 2 * MINUTE + 1),
            ("X", 120, START + 3 * MINUTE),
        ]
    )
    curve = build_equity_curve(
        fills, None, marks, 1000.0, START, START + 5 * MINUTE, MINUTE, {"X": 0.1, "Y": 0.2}
    )
    ts = curve["ts_event"].dt.epoch("ns").to_list()
    # grid 0..5 min plus two fill rows at +30 s, fills before nothing else at that instant
    assert ts == [START, START + 30 * S, START + 30 * S] + [START + k * MINUTE for k in range(1, 6)]
    # 1 min: both fills newer than any mark -> valued at fill prices
    r1 = row_at(curve, START + MINUTE)
    assert (r1["unrealized_pnl"], r1["cash_balance"]) == (0.0, 999.5)
    assert r1["margin_used"] == pytest.approx(2 * 100 * 0.1 + 1 * 50 * 0.2)
    # 2 min: X marked at 90 (-20); Y's mark comes 1 ns later
    r2 = row_at(curve, START + 2 * MINUTE)
    assert r2["unrealized_pnl"] == pytest.approx(-20.0)
    assert r2["portfolio_value"] == pytest.approx(979.5)
    assert r2["drawdown_pct"] == pytest.approx(100 * (979.5 / 1000.0 - 1))
    # 3 min: X at 120 (+40), Y at 55 (-5)
    r3 = row_at(curve, START + 3 * MINUTE)
    assert r3["unrealized_pnl"] == pytest.approx(35.0)
    assert r3["margin_used"] == pytest.approx(2 * 120 * 0.1 + 55 * 0.2)
    assert r3["drawdown_pct"] == 0.0

    positions = build_positions(fills, marks, START, START + 5 * MINUTE, MINUTE)
    assert positions.columns == result_schema("positions").names
    at3 = positions.filter(pl.col("ts_event").dt.epoch("ns") == START + 3 * MINUTE)
    assert at3["instrument_key"].to_list() == ["X", "Y"]
    assert at3["current_price"].to_list() == [120.0, 55.0]
    assert at3["unrealized_pnl"].to_list() == pytest.approx([40.0, -5.0])
    fill_rows = positions.filter(pl.col("ts_event").dt.epoch("ns") == START + 30 * S)
    assert fill_rows["current_price"].to_list() == [100.0, 50.0]

    with pytest.raises(ValueError, match="margin_init has no entry"):
        build_equity_curve(fills, None, marks, 1000.0, START, START + DAY, MINUTE, {"X": 0.1})


def test_fill_on_a_grid_instant_comes_before_the_sample() -> None:
    fills = make_fills([("X", "BUY", 1, 100, 1.0, START + MINUTE)])
    curve = build_equity_curve(fills, None, None, 1000.0, START, START + 2 * MINUTE, MINUTE)
    assert curve["ts_event"].dt.epoch("ns").to_list() == [
        START,
        START + MINUTE,
        START + MINUTE,
        START + 2 * MINUTE,
    ]
    assert curve["cash_balance"].to_list() == [1000.0, 999.0, 999.0, 999.0]


def test_positions_row_at_closing_fill_and_none_while_flat() -> None:
    fills = make_fills(
        [("X", "BUY", 1, 100, 0.0, START + 30 * S), ("X", "SELL", 1, 101, 0.0, START + 90 * S)]
    )
    pos = build_positions(fills, None, START, START + 10 * MINUTE, MINUTE)
    assert pos["ts_event"].dt.epoch("ns").to_list() == [
        START + 30 * S,
        START + MINUTE,
        START + 90 * S,
    ]
    assert pos["quantity"].to_list() == [1.0, 1.0, 0.0]
    assert pos["realized_pnl"].to_list() == pytest.approx([0.0, 0.0, 1.0])


def test_build_pnl_rejects_an_inconsistent_curve() -> None:
    fills = make_fills([("X", "BUY", 1, 100, 0.1, START), ("X", "SELL", 1, 110, 0.1, START + S)])
    curve = build_equity_curve(fills, None, None, 1000.0, START, START + HOUR)
    tampered = curve.with_columns(pl.col("portfolio_value") + 0.5)
    with pytest.raises(ValueError, match="does not reconcile"):
        build_pnl(fills, None, tampered, 1000.0)


def test_metrics_nulls_and_break_even_is_a_loss() -> None:
    flat = build_equity_curve(make_fills([]), None, None, 1000.0, START, START + DAY)
    no_trips = pl.DataFrame({"net_pnl": []}, schema={"net_pnl": pl.Float64})
    m = compute_metrics(flat, no_trips, HOUR, START, START + DAY)
    assert m == {
        "sharpe_ratio": None,
        "sortino_ratio": None,
        "max_drawdown_pct": 0.0,
        "win_rate": None,
        "profit_factor": None,
        "total_trades": 0,
    }
    trips = pl.DataFrame({"net_pnl": [3.0, 0.0, -1.0, 1.0]})
    m = compute_metrics(flat, trips, HOUR, START, START + DAY)
    assert m["win_rate"] == 0.5
    assert m["profit_factor"] == pytest.approx(4.0)
    only_break_even = compute_metrics(
        flat, pl.DataFrame({"net_pnl": [2.0, 0.0]}), HOUR, START, START + DAY
    )
    assert only_break_even["win_rate"] == 0.5
    assert only_break_even["profit_factor"] is None


def test_hand_computed_sharpe_and_sortino() -> None:
    # Values at 00:00, 01:00, 02:00, 03:00 -> returns +10 %, -10 %, +20 %.
    curve = pl.DataFrame(
        {
            "ts_event": [
                START,
                START + 30 * MINUTE,
                START + HOUR,
                START + 2 * HOUR,
                START + 3 * HOUR,
            ],
            "portfolio_value": [100.0, 500.0, 110.0, 99.0, 118.8],
        }
    )
    m = compute_metrics(curve, pl.DataFrame({"net_pnl": [1.0]}), HOUR, START, START + 3 * HOUR)
    r = np.array([0.1, -0.1, 0.2])
    assert m["sharpe_ratio"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(8760))
    assert m["sortino_ratio"] == pytest.approx(r.mean() / math.sqrt(0.01 / 3) * math.sqrt(8760))
    assert m["max_drawdown_pct"] == pytest.approx(100 * (99.0 / 500.0 - 1))


def test_conform_casts_orders_and_names_missing_columns() -> None:
    fills = make_fills([("X", "BUY", 1, 100, 0.1, START)]).with_columns(pl.lit(7).alias("extra"))
    table = conform(fills.select(list(reversed(fills.columns))), "fills.parquet")
    assert table.schema.equals(result_schema("fills"))
    assert table.column("ts_event").type == pa.timestamp("ns", tz="UTC")
    assert table.column("ts_event")[0].value == START
    with pytest.raises(ValueError, match="'fee_currency'"):
        conform(fills.drop("fee_currency"), "fills")
    with pytest.raises(ValueError, match="'venue' has 1 null"):
        conform(fills.with_columns(pl.lit(None, dtype=pl.String).alias("venue")), "fills")
    orders = result_schema("orders")
    assert orders.names[-1] == "rejection_reason" and orders.field("price").nullable
    assert not orders.field("status").nullable
    with pytest.raises(ValueError, match="unknown result table"):
        result_schema("trades")


# ---------------------------------------------------------------------------------------------
# Independent re-computation on a random scenario
# ---------------------------------------------------------------------------------------------


def random_scenario(
    seed: int,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, int, int]:
    rng = np.random.default_rng(seed)
    end = START + 3 * DAY
    instruments = {
        "BINANCE-FUTURES:PERPETUAL:BTC-USDT": 27_000.0,
        "BYBIT:PERPETUAL:ETH-USDT": 1_800.0,
    }
    mark_rows: list[tuple[str, float, int]] = []
    for inst, p0 in instruments.items():
        ts = np.sort(rng.integers(START, end, size=4000))
        prices = p0 * np.exp(np.cumsum(rng.normal(0, 0.002, size=ts.size)))
        mark_rows += [(inst, float(p), int(t)) for p, t in zip(prices, ts, strict=True)]
    marks = make_marks(mark_rows).sort("ts_event", maintain_order=True)

    fill_ts = np.sort(rng.integers(START, end, size=70))
    fill_ts[10] = fill_ts[11] = START + DAY + 5 * HOUR  # exactly on the grid, tied
    fill_ts = np.sort(fill_ts)
    fill_rows: list[tuple[str, str, float, float, float, int]] = []
    held = dict.fromkeys(instruments, 0.0)
    names = list(instruments)
    for t in fill_ts:
        inst = names[int(rng.integers(0, 2))]
        target = float(rng.integers(-3, 4)) * 0.5  # multiples of 0.5: exact flats and flips
        if target == held[inst]:
            target = -held[inst] if held[inst] != 0 else 0.5
        qty = target - held[inst]
        last = marks.filter((pl.col("instrument_key") == inst) & (pl.col("ts_event") <= t))
        ref = last["price"][-1] if last.height else instruments[inst]
        price = float(ref) * (1 + rng.normal(0, 0.0005))
        fee = abs(qty) * price * 0.0004 * (1 if rng.random() > 0.2 else -0.25)
        fill_rows.append((inst, "BUY" if qty > 0 else "SELL", abs(qty), price, fee, int(t)))
        held[inst] = target
    for inst in names:  # end flat, so every trip (and every funding payment) is closed out
        if held[inst] != 0:
            price = float(marks.filter(pl.col("instrument_key") == inst)["price"][-1])
            side = "SELL" if held[inst] > 0 else "BUY"
            fill_rows.append((inst, side, abs(held[inst]), price, 0.0, end - 1))
    fills = make_fills(fill_rows)

    funding_rows: list[tuple[str, float, float, float, int]] = []
    for k in range(9):
        t = START + k * 8 * HOUR
        for inst in names:
            pos = sum(
                (q if side == "BUY" else -q)
                for i, side, q, _, _, ft in fill_rows
                if i == inst and ft <= t
            )
            if pos != 0:
                funding_rows.append(
                    (inst, pos, instruments[inst], float(rng.normal(1e-4, 2e-4)), t)
                )
    return fills, marks, make_funding(funding_rows), START, end


def independent_portfolio_values(
    fills: pl.DataFrame,
    funding: pl.DataFrame,
    marks: pl.DataFrame,
    starting_balance: float,
    times: list[int],
) -> list[float]:
    """Cash-flow accounting: cash = start - Σ signed qty × price - fees - funding, plus the
    value of holdings at the most recent price (mark or fill, fill wins a tie). No entry prices."""
    f = fills.rows(named=True)
    fu = funding.rows(named=True)
    mk = marks.rows(named=True)
    out: list[float] = []
    for t in times:
        cash = starting_balance
        held: dict[str, float] = {}
        last_price: dict[str, tuple[int, int, float]] = {}
        for m in mk:
            if m["ts_event"] <= t:
                key = (m["ts_event"], 0, m["price"])
                if (
                    m["instrument_key"] not in last_price
                    or key[:2] >= last_price[m["instrument_key"]][:2]
                ):
                    last_price[m["instrument_key"]] = key
        for x in f:
            if x["ts_event"] <= t:
                signed = x["quantity"] if x["side"] == "BUY" else -x["quantity"]
                cash -= signed * x["price"] + x["fee"]
                held[x["instrument_key"]] = held.get(x["instrument_key"], 0.0) + signed
                key = (x["ts_event"], 1, x["price"])
                if key[:2] >= last_price.get(x["instrument_key"], (-1, -1, 0.0))[:2]:
                    last_price[x["instrument_key"]] = key
        cash -= sum(r["payment"] for r in fu if r["ts_event"] <= t)
        out.append(cash + sum(q * last_price[i][2] for i, q in held.items() if abs(q) > 1e-12))
    return out


def independent_trip_pnls(fills: pl.DataFrame, funding: pl.DataFrame) -> list[float]:
    """Each closed trip's cash flows (-signed qty x price - fee) minus the funding charged while
    it was open (position at the funding instant, after fills at or before it)."""
    events: list[tuple[int, int, dict[str, object]]] = [
        (int(r["ts_event"]), 0, r) for r in fills.rows(named=True)
    ] + [(int(r["ts_event"]), 1, r) for r in funding.rows(named=True)]
    events.sort(key=lambda e: (e[0], e[1]))  # stable: fills keep their order, funding after
    held: dict[str, float] = {}
    running: dict[str, float] = {}
    closed: list[float] = []
    for _, kind, r in events:
        inst = str(r["instrument_key"])
        if kind == 1:
            running[inst] = running.get(inst, 0.0) - float(r["payment"])  # type: ignore[arg-type]
            continue
        q, price, fee = float(r["quantity"]), float(r["price"]), float(r["fee"])  # type: ignore[arg-type]
        signed = q if r["side"] == "BUY" else -q
        before = held.get(inst, 0.0)
        after = before + signed
        if before != 0 and (after == 0 or (after > 0) != (before > 0)):  # flat or flip
            closing = abs(before)
            running[inst] = running.get(inst, 0.0) + (
                -np.sign(signed) * closing * price - fee * closing / q
            )
            closed.append(running[inst])
            running[inst] = -np.sign(signed) * (q - closing) * price - fee * (q - closing) / q
        else:
            running[inst] = running.get(inst, 0.0) - signed * price - fee
        held[inst] = after
    return [float(x) for x in closed]


def independent_metrics(
    ts: list[int], pv: list[float], start: int, end: int, interval: int
) -> dict[str, float | None]:
    """Walk the hours one by one and scan the curve for the last value at or before each."""
    samples: list[float] = []
    point = start
    while True:
        value = None
        for t, v in zip(ts, pv, strict=True):
            if t <= point:
                value = v
            else:
                break
        samples.append(value)  # type: ignore[arg-type]
        if point == end:
            break
        point = min(point + interval, end)
    r = [samples[k] / samples[k - 1] - 1 for k in range(1, len(samples))]
    n = len(r)
    mean = sum(r) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))
    downside = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / n)
    periods = 365 * 24 * HOUR / interval
    peak = -math.inf
    worst = 0.0
    for v in pv:
        peak = max(peak, v)
        worst = min(worst, v / peak - 1)
    return {
        "sharpe_ratio": mean / sd * math.sqrt(periods),
        "sortino_ratio": mean / downside * math.sqrt(periods),
        "max_drawdown_pct": 100 * worst,
        "n_returns": n,
    }


def test_independent_recomputation_on_random_scenario() -> None:
    fills, marks, funding, start, end = random_scenario(seed=20230523)
    assert fills.height >= 50 and fills["instrument_key"].n_unique() == 2
    assert end - start == 3 * DAY
    balance = 100_000.0

    curve = build_equity_curve(fills, funding, marks, balance, start, end)
    trips = round_trips(fills, funding)
    pnl = build_pnl(fills, funding, curve, balance)
    metrics = compute_metrics(curve, trips, HOUR, start, end)

    # Equity curve: every 7th grid sample and the last row, recomputed by cash flows.
    grid = curve.filter(pl.col("ts_event").dt.epoch("ns") % MINUTE == 0)
    grid = grid.unique(subset="ts_event", keep="last", maintain_order=True)
    probe = grid.gather_every(37)["ts_event"].dt.epoch("ns").to_list()
    probe = sorted(set(probe + fills["ts_event"].to_list()[::3] + [end]))
    expected_pv = independent_portfolio_values(fills, funding, marks, balance, probe)
    got_pv = [row_at(curve, t)["portfolio_value"] for t in probe]
    assert got_pv == pytest.approx(expected_pv, rel=1e-12, abs=1e-7)
    assert pnl["net_pnl"] == pytest.approx(expected_pv[-1] - balance, abs=1e-7)
    assert pnl["funding_paid"] == pytest.approx(float(funding["payment"].sum()))
    assert pnl["total_fees"] == pytest.approx(float(fills["fee"].sum()))

    # Trades: per-trip net PnL by cash flows (no entry prices), split at flips by quantity.
    expected_trips = independent_trip_pnls(fills, funding)
    assert len(expected_trips) >= 10
    assert metrics["total_trades"] == len(expected_trips) == trips.height
    assert sorted(trips["net_pnl"].to_list()) == pytest.approx(sorted(expected_trips), abs=1e-8)
    wins = [p for p in expected_trips if p > 0]
    losses = [p for p in expected_trips if p <= 0]
    assert metrics["win_rate"] == pytest.approx(len(wins) / len(expected_trips))
    assert metrics["profit_factor"] == pytest.approx(sum(wins) / abs(sum(losses)))
    # The run ends flat, so the closed trips hold the whole net PnL.
    assert sum(expected_trips) == pytest.approx(pnl["net_pnl"], abs=1e-7)

    ts = curve["ts_event"].dt.epoch("ns").to_list()
    indep = independent_metrics(ts, curve["portfolio_value"].to_list(), start, end, HOUR)
    assert indep["n_returns"] == 72
    for key in ("sharpe_ratio", "sortino_ratio", "max_drawdown_pct"):
        assert metrics[key] == pytest.approx(indep[key], rel=1e-9), key
    assert metrics["max_drawdown_pct"] < 0


def test_results_are_deterministic() -> None:
    fills, marks, funding, start, end = random_scenario(seed=7)
    a = build_equity_curve(fills, funding, marks, 1e5, start, end)
    b = build_equity_curve(fills, funding, marks, 1e5, start, end)
    assert a.equals(b)
    assert conform(a, "equity_curve").equals(conform(b, "equity_curve"))


@pytest.mark.parametrize("rows_per_pass", [1, 2, 97, 4_000])
def test_valuing_in_passes_gives_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, rows_per_pass: int
) -> None:
    """A year's timeline is valued a pass of rows at a time to bound memory: the positions and
    the equity curve (with margin) must be the bytes of one pass over all rows."""
    import io

    from backtest_pipeline.results import tables

    fills, marks, funding, start, end = random_scenario(seed=11)
    margin = {k: 0.1 for k in fills["instrument_key"].unique().to_list()}

    def outputs() -> dict[str, bytes]:
        frames = {
            "positions": build_positions(fills, marks, start, end),
            "equity_curve": build_equity_curve(
                fills, funding, marks, 1e5, start, end, margin_init=margin
            ),
        }
        out = {}
        for name, df in frames.items():
            buf = io.BytesIO()
            pa.parquet.write_table(conform(df, name), buf)  # type: ignore[attr-defined]
            out[name] = buf.getvalue()
        return out

    whole = outputs()  # ~4,300 grid rows and the fills: one pass at the default size
    assert tables.ROWS_PER_PASS > 5_000
    monkeypatch.setattr(tables, "ROWS_PER_PASS", rows_per_pass)
    assert outputs() == whole
    # The positions hold both instruments and open stretches, so the passes had work to split.
    positions = build_positions(fills, marks, start, end)
    assert positions["instrument_key"].n_unique() == 2 and positions.height > 1_000
    # A short valued at its entry price is +0.0 in either case, never -0.0.
    u = positions["unrealized_pnl"].to_numpy()
    assert ((u == 0) & (positions["quantity"].to_numpy() < 0)).any()
    assert not np.signbit(u[u == 0]).any()


def test_timeline_rows_are_the_sorted_merge_of_fills_and_grid() -> None:
    """The rows are placed by a merge (no sort): they must be the order of sorting fills and
    grid samples on (time, fill before sample, seq), ties on grid instants and between fills
    included."""
    from backtest_pipeline.results import tables

    rng = np.random.default_rng(3)
    grid = tables._grid(START, START + HOUR, MINUTE)
    on_grid = rng.choice(grid, 40)
    off_grid = rng.integers(START, START + HOUR, 60)
    ts = np.sort(np.concatenate([on_grid, off_grid, on_grid[:10]]))  # equal times too
    key = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
    sides = ["BUY" if i % 2 else "SELL" for i in range(ts.size)]
    fills = make_fills(
        [(key, side, 0.001, 100.0, 0.0, int(t)) for side, t in zip(sides, ts, strict=True)]
    )
    events = position_events(fills)
    got = tables._rows(events, grid)
    fill_rows = events.select(
        "ts_event", pl.lit(0, dtype=pl.Int8).alias("kind"), "seq",
        pl.col("instrument_key").alias("fill_instrument"),
    )  # fmt: skip
    grid_rows = pl.DataFrame(
        {"ts_event": grid, "kind": np.ones(grid.size, dtype=np.int8),
         "seq": np.arange(grid.size, dtype=np.int64),
         "fill_instrument": pl.Series([None] * grid.size, dtype=pl.String)}
    )  # fmt: skip
    expected = (
        pl.concat([fill_rows, grid_rows])
        .sort(["ts_event", "kind", "seq"], maintain_order=True)
        .with_row_index("pos")
        .with_columns(pl.col("pos").cast(pl.Int64))
    )
    assert int(np.isin(ts, grid).sum()) >= 40
    assert got.equals(expected)
