"""The one partitioning of the code location: UTC days, start configurable by environment.

Every asset uses it with a single-run backfill policy, so a backfill of N days is one run — one
backtest carrying its state across the days — instead of N one-day backtests.
"""

import os
from datetime import date

from dagster import BackfillPolicy, DailyPartitionsDefinition

from backtest_pipeline import layout

PARTITIONS_START = os.environ.get("BACKTEST_PARTITIONS_START", "2020-01-01")

daily_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
single_run = BackfillPolicy.single_run()


def days_of(partition_keys: list[str]) -> list[date]:
    """The run's partition keys as dates, sorted (a range run covers consecutive days)."""
    return sorted(layout.parse_day(k) for k in partition_keys)
