"""Group ``inputs``: the day's instruments, signals, signal intervals, tick slices and funding.

Thin by design: each asset loops over the run's days and calls a plain function of
``execution.stages``; values are ``{partition_key: table}`` so that a range run stores one
object per day through the UCS IO manager.
"""

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MetadataValue, asset

from backtest_pipeline import layout
from backtest_pipeline.assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline.execution import stages
from backtest_pipeline.resources.io_manager import DayTables, LazyDays
from backtest_pipeline.resources.settings import BacktestSettings, tag_run
from backtest_pipeline.resources.ucs_resource import UCSResource

GROUP = "inputs"
COMMON = {"partitions_def": daily_partitions, "backfill_policy": single_run, "group_name": GROUP}


@asset(**COMMON, kinds={"parquet"})
def instruments(
    context: AssetExecutionContext, ucs: UCSResource, backtest: BacktestSettings
) -> DayTables:
    """The day's instrument definitions, validated (missing or malformed → the run fails here)."""
    client, days = ucs.client(), days_of(context.partition_keys)
    with stages.failing_run(client, backtest.load(), days):
        out = {d.isoformat(): stages.load_instruments(client, d) for d in days}
    context.add_output_metadata({"instruments": sum(t.num_rows for t in out.values())})
    return out


@asset(**COMMON, kinds={"parquet"})
def signals(
    context: AssetExecutionContext, ucs: UCSResource, backtest: BacktestSettings
) -> DayTables:
    """The day's signals of the run configuration's strategy, validated."""
    client, config = ucs.client(), backtest.load()
    tag_run(context, backtest, config.strategy_id)
    days = days_of(context.partition_keys)
    with stages.failing_run(client, config, days):
        out = {d.isoformat(): stages.load_signals(client, config, d) for d in days}
    context.add_output_metadata(
        {
            "strategy_id": config.strategy_id,
            "config_name": backtest.config_name,
            "signals": sum(t.num_rows for t in out.values()),
        }
    )
    return out


@asset(**COMMON, kinds={"polars"})
def signal_intervals(
    context: AssetExecutionContext, backtest: BacktestSettings, signals: DayTables
) -> DayTables:
    """Per instrument, the merged [ts − lookback, ts + window + grace] intervals the signals need."""
    config = backtest.load()
    out = {
        d.isoformat(): stages.compute_intervals(signals[d.isoformat()], config, d).to_arrow()
        for d in days_of(context.partition_keys)
    }
    covered_ns = sum(
        int(pc.sum(pc.subtract(t["end_ns"], t["start_ns"])).as_py() or 0) for t in out.values()
    )
    context.add_output_metadata(
        {
            "intervals": sum(t.num_rows for t in out.values()),
            "covered_hours": round(covered_ns / 3.6e12, 3),
        }
    )
    return out


@asset(**COMMON, kinds={"parquet"})
def tick_slices(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
) -> LazyDays:
    """The trades inside the signal intervals, fetched by byte-range reads of the ticks objects."""
    client, config = ucs.client(), backtest.load()

    days = days_of(context.partition_keys)

    def produce(key: str) -> pa.Table:
        day = layout.parse_day(key)
        with stages.failing_run(client, config, days):
            return stages.fetch_tick_slices(
                client,
                config,
                day,
                instruments[key],
                signals[key],
                stages.to_polars(signal_intervals[key]),
            )

    # Lazy: each day is fetched when the IO manager stores it, so a long range never holds more
    # than one day of ticks; rows and bytes read vs available are recorded by the IO manager.
    return LazyDays([d.isoformat() for d in days], produce)


@asset(**COMMON, kinds={"parquet"})
def funding_rates(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    instruments: DayTables,
) -> DayTables:
    """The day's funding events of the perpetuals the configuration trades."""
    client, config = ucs.client(), backtest.load()
    days = days_of(context.partition_keys)
    with stages.failing_run(client, config, days):
        out = {
            d.isoformat(): stages.load_funding(client, config, d, instruments[d.isoformat()])
            for d in days
        }
    context.add_output_metadata(
        {
            "events": sum(t.num_rows for t in out.values()),
            "instruments": MetadataValue.text(", ".join(config.instruments)),
        }
    )
    return out
