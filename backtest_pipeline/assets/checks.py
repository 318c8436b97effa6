"""Asset checks: what users must trust, each a thin call of ``execution.checks``.

Every check declares the daily partitions so it loads only the run's days (not the whole
history), and runs in the same run as its asset.
"""

from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetIn, asset_check

from backtest_pipeline.assets.partitions import daily_partitions
from backtest_pipeline.execution import checks
from backtest_pipeline.resources.io_manager import DayTables, RunArtifact


def _result(
    outcome: checks.CheckOutcome, severity: AssetCheckSeverity = AssetCheckSeverity.ERROR
) -> AssetCheckResult:
    passed, details = outcome
    return AssetCheckResult(passed=passed, severity=severity, metadata=_jsonable(details))


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        out[k] = v if isinstance(v, int | float | str | bool) else str(v)[:2000]
    return out


@asset_check(asset="instruments", partitions_def=daily_partitions)
def instruments_schema(instruments: DayTables) -> AssetCheckResult:
    """The day's instruments match the input schema (types, keys, fees, margins)."""
    return _result(checks.validates("instruments", instruments))


@asset_check(asset="signals", partitions_def=daily_partitions)
def signals_schema(signals: DayTables) -> AssetCheckResult:
    """Signals match the schema: unique ids, known algos, valid keys, sorted by ts_event."""
    return _result(checks.validates("signals", signals))


@asset_check(asset="tick_slices", partitions_def=daily_partitions)
def tick_slices_sorted(tick_slices: DayTables) -> AssetCheckResult:
    """Trades are sorted by ts_event within each instrument and day."""
    return _result(checks.sorted_timestamps(tick_slices, by="instrument_key"))


@asset_check(asset="tick_slices", partitions_def=daily_partitions)
def tick_slices_schema(tick_slices: DayTables) -> AssetCheckResult:
    """Every slice validates as trades (positive prices/sizes, buy/sell, unique ids)."""
    return _result(checks.trades_schema(tick_slices))


@asset_check(asset="funding_rates", partitions_def=daily_partitions)
def funding_rates_schema(funding_rates: DayTables) -> AssetCheckResult:
    """Funding events validate per instrument (sorted, one per time, finite rate)."""
    return _result(checks.funding_schema(funding_rates))


@asset_check(asset="orders", partitions_def=daily_partitions)
def orders_schema(orders: RunArtifact) -> AssetCheckResult:
    """orders.parquet has exactly the columns and types of spec/outputs.md."""
    return _result(checks.result_schema(orders.data, "orders.parquet"))


@asset_check(asset="fills", partitions_def=daily_partitions)
def fills_schema(fills: RunArtifact) -> AssetCheckResult:
    """fills.parquet has exactly the columns and types of spec/outputs.md."""
    return _result(checks.result_schema(fills.data, "fills.parquet"))


@asset_check(asset="positions", partitions_def=daily_partitions)
def positions_schema(positions: RunArtifact) -> AssetCheckResult:
    """positions.parquet has exactly the columns and types of spec/outputs.md."""
    return _result(checks.result_schema(positions.data, "positions.parquet"))


@asset_check(asset="equity_curve", partitions_def=daily_partitions)
def equity_curve_schema(equity_curve: RunArtifact) -> AssetCheckResult:
    """equity_curve.parquet has exactly the columns and types of spec/outputs.md."""
    return _result(checks.result_schema(equity_curve.data, "equity_curve.parquet"))


@asset_check(asset="orders", partitions_def=daily_partitions)
def orders_belong_to_operations(orders: RunArtifact) -> AssetCheckResult:
    """Every order carries the operation (signal execution) it belongs to."""
    return _result(checks.orders_have_operation(orders.data))


@asset_check(
    asset="fills",
    partitions_def=daily_partitions,
    additional_ins={"signal_intervals": AssetIn("signal_intervals")},
)
def fills_inside_signal_intervals(
    fills: RunArtifact, signal_intervals: DayTables
) -> AssetCheckResult:
    """No fill happens outside a signal interval of its asset: execution stays where data was read."""
    return _result(checks.fills_inside_intervals(fills.data, signal_intervals))


@asset_check(
    asset="backtest_summary",
    partitions_def=daily_partitions,
    additional_ins={"equity_curve": AssetIn("equity_curve")},
)
def net_pnl_equals_equity_change(
    backtest_summary: RunArtifact, equity_curve: RunArtifact
) -> AssetCheckResult:
    """summary.pnl.net_pnl equals the equity curve's last value minus the starting balance."""
    return _result(checks.net_pnl_matches_equity(backtest_summary.data, equity_curve.data))


ALL_CHECKS = [
    instruments_schema,
    signals_schema,
    tick_slices_sorted,
    tick_slices_schema,
    funding_rates_schema,
    orders_schema,
    fills_schema,
    positions_schema,
    equity_curve_schema,
    orders_belong_to_operations,
    fills_inside_signal_intervals,
    net_pnl_equals_equity_change,
]
