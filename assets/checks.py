"""Asset checks: what users must trust, each a thin call of ``execution.checks``.

Where the checks run:

* the input assets' checks (``instruments_schema``, ``signals_schema``, ``funding_rates_schema``,
  ``tick_slices_sorted``, ``tick_slices_schema``) in the asset's own step, on the tables it
  stores (``assets.inputs``);
* the result objects' checks in the step that produces them (``assets.backtest``), which reads
  each object once for its metadata and its checks;
* ``fills_inside_signal_intervals`` here, as a step of its own: it needs ``signal_intervals``,
  which is no input of the result objects.

Why not one step per check: a step costs ~40 ms of Dagster events on this machine and reads its
asset back from storage, for checks that compute in a few milliseconds. Every check declares
the daily partitions, so it covers exactly the run's days.
"""

from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetIn, asset_check

from assets.partitions import daily_partitions
from backtest_pipeline.results import checks
from resources.io_manager import DayTables, RunArtifact


def check_spec(name: str, asset: str, description: str) -> AssetCheckSpec:
    """A check of ``asset`` over the run's days (the daily partitions)."""
    return AssetCheckSpec(
        name, asset=asset, partitions_def=daily_partitions, description=description
    )


def check_result(
    name: str | None,
    outcome: checks.CheckOutcome,
    asset: str | None = None,
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> AssetCheckResult:
    """The outcome of an ``execution.checks`` function as a Dagster check result."""
    passed, details = outcome
    kwargs: dict[str, Any] = {"asset_key": asset} if asset else {}
    return AssetCheckResult(
        check_name=name,
        passed=passed,
        severity=severity,
        metadata=checks.jsonable(details),
        **kwargs,
    )


@asset_check(
    asset="fills",
    partitions_def=daily_partitions,
    additional_ins={"signal_intervals": AssetIn("signal_intervals")},
)
def fills_inside_signal_intervals(
    fills: RunArtifact, signal_intervals: DayTables
) -> AssetCheckResult:
    """No fill happens outside a signal interval of its asset: execution stays where data was read."""
    return check_result(None, checks.fills_inside_intervals(fills.data, signal_intervals))


ALL_CHECKS = [fills_inside_signal_intervals]
