"""The invariants users must be able to trust, as plain functions returning (passed, details).

Dagster's asset checks call these; so can any notebook or test. Each returns the number of
offending rows and a few examples, so a failing check says what is wrong, not just that it is.
"""

from collections.abc import Mapping
from typing import Any

import polars as pl
import pyarrow as pa

from backtest_pipeline.data import schemas
from backtest_pipeline.results import tables as results_mod

CheckOutcome = tuple[bool, dict[str, Any]]


def jsonable(details: dict[str, Any]) -> dict[str, Any]:
    """Check details as metadata values: scalars as they are, anything else as (short) text."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        out[k] = v if isinstance(v, int | float | str | bool) else str(v)[:2000]
    return out


def _frame(t: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = t if isinstance(t, pl.DataFrame) else pl.from_arrow(t)
    assert isinstance(df, pl.DataFrame)
    return df


def validates(kind: str, tables: Mapping[str, pa.Table]) -> CheckOutcome:
    """Each day's table passes the input schema validator of ``kind``."""
    fn = {
        "instruments": lambda t, n: schemas.validate_instruments(t, n, allow_empty=False),
        "signals": lambda t, n: schemas.validate_signals(t, n, allow_empty=True),
    }[kind]
    errors = {}
    for day in sorted(tables):  # one day at a time (inputs may be lazy)
        t = tables[day]
        try:
            fn(t, f"{kind}[{day}]")
        except schemas.DataValidationError as exc:
            errors[day] = str(exc)
    return not errors, {"days": len(tables), "errors": errors}


def funding_schema(tables: Mapping[str, pa.Table]) -> CheckOutcome:
    """Each instrument's funding events of each day validate (sorted, one per time, finite)."""
    errors = {}
    for day in sorted(tables):  # one day at a time (inputs may be lazy)
        t = tables[day]
        df = _frame(t)
        for key in df["instrument_key"].unique().to_list():
            part = df.filter(pl.col("instrument_key") == key).drop("instrument_key")
            try:
                schemas.validate_funding(part, f"funding_rates[{day}|{key}]", day=day)
            except schemas.DataValidationError as exc:
                errors[f"{day}|{key}"] = str(exc)
    return not errors, {"errors": errors}


def _unsorted_rows(df: pl.DataFrame, by: str | None) -> int:
    if df.height == 0:
        return 0
    ts = pl.col("ts_event").cast(pl.Int64)
    diff = ts.diff().over(by) if by else ts.diff()
    return int(df.select((diff < 0).sum()).item())


def _trade_errors(df: pl.DataFrame, day: str) -> dict[str, str]:
    errors = {}
    for key in df["instrument_key"].unique().to_list():
        try:
            schemas.validate_trades_frame(
                df.filter(pl.col("instrument_key") == key).drop("instrument_key"),
                f"tick_slices[{day}|{key}]",
            )
        except schemas.DataValidationError as exc:
            errors[f"{day}|{key}"] = str(exc)
    return errors


def sorted_timestamps(tables: Mapping[str, pa.Table], by: str | None = None) -> CheckOutcome:
    """``ts_event`` non-decreasing per day (and per ``by`` group, e.g. instrument_key)."""
    bad: dict[str, int] = {}
    rows = 0
    for day in sorted(tables):  # one day at a time (inputs may be lazy)
        df = _frame(tables[day])
        rows += df.height
        n = _unsorted_rows(df, by)
        if n:
            bad[day] = n
    return not bad, {"rows": rows, "unsorted_rows": bad}


def trades_schema(tables: Mapping[str, pa.Table]) -> CheckOutcome:
    """Every tick slice validates as trades (per instrument)."""
    errors = {}
    for day in sorted(tables):  # one day at a time (inputs may be lazy)
        errors.update(_trade_errors(_frame(tables[day]), day))
    return not errors, {"errors": errors}


class TickSliceChecks:
    """:func:`sorted_timestamps` and :func:`trades_schema` of tick slices, fed one day at a time.

    The slices are checked as they are produced (the asset's step checks what it stores), so
    a long range is never held in memory nor read back for its checks.
    """

    def __init__(self, by: str = "instrument_key") -> None:
        self.by = by
        self.rows = 0
        self.unsorted: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def add(self, day: str, table: pa.Table | pl.DataFrame) -> None:
        df = _frame(table)
        self.rows += df.height
        n = _unsorted_rows(df, self.by)
        if n:
            self.unsorted[day] = n
        self.errors.update(_trade_errors(df, day))

    def outcomes(self) -> tuple[CheckOutcome, CheckOutcome]:
        """(sorted timestamps, trades schema), as the two functions would give them."""
        return (
            (not self.unsorted, {"rows": self.rows, "unsorted_rows": dict(self.unsorted)}),
            (not self.errors, {"errors": dict(self.errors)}),
        )


def tick_slices_checks(
    tables: Mapping[str, pa.Table], by: str = "instrument_key"
) -> tuple[CheckOutcome, CheckOutcome]:
    """:func:`sorted_timestamps` and :func:`trades_schema` together, reading each day once."""
    acc = TickSliceChecks(by)
    for day in sorted(tables):  # one day at a time (inputs may be lazy)
        acc.add(day, tables[day])
    return acc.outcomes()


def result_schema(table: pa.Table, name: str) -> CheckOutcome:
    """Column names, order and types are exactly those of docs/outputs.md."""
    expected = results_mod.result_schema(name)
    got = [(f.name, str(f.type)) for f in table.schema]
    want = [(f.name, str(f.type)) for f in expected]
    return got == want, {"expected": want, "got": got}


def fills_inside_intervals(fills: pa.Table, intervals: Mapping[str, pa.Table]) -> CheckOutcome:
    """Every fill lies inside a signal interval of its asset (router peers share intervals).

    Intervals are per signalled instrument; a fill on a peer venue is matched by BASE-QUOTE.
    """
    f = _frame(fills)
    if f.height == 0:
        return True, {"fills": 0, "outside": 0}
    iv = (
        pl.concat([_frame(t) for t in intervals.values()], how="vertical_relaxed")
        if intervals
        else pl.DataFrame()
    )
    if iv.height == 0:
        return False, {"fills": f.height, "outside": f.height, "reason": "fills but no interval"}
    iv = iv.with_columns(pl.col("instrument_key").str.split(":").list.get(2).alias("pair")).select(
        "pair", "start_ns", "end_ns"
    )
    fx = f.with_row_index("_i").select(
        "_i",
        pl.col("ts_event").cast(pl.Int64).alias("ts"),
        pl.col("instrument_key").str.split(":").list.get(2).alias("pair"),
        "instrument_key",
    )
    inside = (
        fx.join(iv, on="pair", how="inner")
        .filter((pl.col("ts") >= pl.col("start_ns")) & (pl.col("ts") <= pl.col("end_ns")))
        .select("_i")
        .unique()
    )
    outside = fx.join(inside, on="_i", how="anti")
    return outside.height == 0, {
        "fills": f.height,
        "outside": outside.height,
        "examples": outside.head(5).select("instrument_key", "ts").to_dicts(),
    }


def orders_have_operation(orders: pa.Table) -> CheckOutcome:
    """Every order carries the id of the operation (signal execution) it belongs to."""
    o = _frame(orders)
    bad = o.filter(pl.col("operation_id").is_null() | (pl.col("operation_id").str.len_bytes() == 0))
    return bad.height == 0, {
        "orders": o.height,
        "without_operation": bad.height,
        "operations": o["operation_id"].n_unique() if o.height else 0,
    }


def net_pnl_matches_equity(
    summary: dict[str, Any], equity: pa.Table, tol: float = 1e-6
) -> CheckOutcome:
    """``net_pnl`` equals the last portfolio_value minus the starting balance (docs/outputs.md)."""
    e = _frame(equity)
    start = float(summary["starting_balance"])
    last = float(e["portfolio_value"][-1]) if e.height else start
    net = float(summary["pnl"]["net_pnl"])
    diff = abs(net - (last - start))
    return diff <= tol * max(1.0, abs(start)), {
        "net_pnl": net,
        "equity_change": last - start,
        "difference": diff,
    }
