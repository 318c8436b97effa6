"""The one partitioning of the code location: UTC days, start configurable by environment.

Every asset uses it with a single-run backfill policy, so a backfill of N days is one run — one
backtest carrying its state across the days — instead of N one-day backtests.
"""

import os
import warnings
from datetime import date

from dagster import BackfillPolicy, BetaWarning, DailyPartitionsDefinition

from backtest_pipeline import layout

PARTITIONS_START = os.environ.get("BACKTEST_PARTITIONS_START", "2020-01-01")

daily_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
single_run = BackfillPolicy.single_run()
# Dagster 1.13 marks `@asset(backfill_policy=...)` as beta and warns once per asset: seven
# warnings on every command that loads this code location, about a choice made on purpose.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `backfill_policy` of function `asset` is currently in beta",
    category=BetaWarning,
)


def days_of(partition_keys: list[str]) -> list[date]:
    """The run's partition keys as dates, sorted (a range run covers consecutive days)."""
    return sorted(layout.parse_day(k) for k in partition_keys)
