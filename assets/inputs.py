"""Group ``inputs``: the day's instruments, signals, signal intervals, tick slices and funding.

Thin by design: each asset loops over the run's days and calls a plain function of
``backtest_pipeline.run.stages``; values are ``{partition_key: table}`` so that a range run stores one
object per day through the UCS IO manager.

The checks of an input asset (schemas, sorted timestamps) run in the asset's own step, on the
tables it stores (``check_specs``): as steps of their own they cost ~40 ms of Dagster events each
and read every day back from storage — the tick slices, the largest input, twice.
"""

from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetCheckResult, AssetExecutionContext, MetadataValue, Output, asset

from assets import backtest as backtest_assets
from assets import catalog, runtime
from assets.checks import check_result, check_spec
from assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.results import checks
from backtest_pipeline.run import runner, stages
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import DayTables, LazyDays
from resources.settings import BacktestSettings, tag_run
from resources.ucs_resource import UCSResource

GROUP = "inputs"
COMMON = {"partitions_def": daily_partitions, "backfill_policy": single_run, "group_name": GROUP}


#: The schema check of each validated input asset (its name: ``<asset>_schema``).
SCHEMA_CHECKS = {
    "instruments": "The day's instruments match the input schema (types, keys, fees, margins).",
    "signals": "Signals match the schema: unique ids, known algos, valid keys, sorted by ts_event.",
    "funding_rates": "Funding events validate per instrument (sorted, one per time, finite rate).",
}


def validated_day_asset(asset_name: str) -> dict[str, Any]:
    """An input asset's decorator arguments: daily, one run per range, and its schema check."""
    return {
        **COMMON,
        "kinds": {"parquet"},
        "check_specs": [check_spec(f"{asset_name}_schema", asset_name, SCHEMA_CHECKS[asset_name])],
    }


def load_days(
    context: AssetExecutionContext,
    client: UnifiedCloudService,
    config: BacktestConfig,
    load: Callable[[date], pa.Table],
) -> DayTables:
    """Each day of the run's partitions loaded; a failure marks the run FAILED in storage first."""
    days = days_of(context.partition_keys)
    with stages.failing_run(client, config, days):
        return {d.isoformat(): load(d) for d in days}


@asset(**validated_day_asset("instruments"))
def instruments(
    context: AssetExecutionContext, ucs: UCSResource, backtest: BacktestSettings
) -> Iterator[Output[DayTables] | AssetCheckResult]:
    """The day's instrument definitions, validated (missing or malformed → the run fails here)."""
    runtime.prewarm_backtest(context)
    client = ucs.client()
    out = load_days(context, client, backtest.load(), lambda d: stages.load_instruments(client, d))
    yield Output(out, metadata={"instruments": sum(t.num_rows for t in out.values())})
    yield check_result("instruments_schema", checks.validates("instruments", out))


@asset(**validated_day_asset("signals"))
def signals(
    context: AssetExecutionContext, ucs: UCSResource, backtest: BacktestSettings
) -> Iterator[Output[DayTables] | AssetCheckResult]:
    """The day's signals of the run configuration's strategy, validated."""
    runtime.prewarm_backtest(context)
    client, config = ucs.client(), backtest.load()
    tag_run(context, backtest, config.strategy_id)
    out = load_days(context, client, config, lambda d: stages.load_signals(client, config, d))
    yield Output(
        out,
        metadata={
            "strategy_id": config.strategy_id,
            "config_name": backtest.config_name,
            "signals": sum(t.num_rows for t in out.values()),
        },
    )
    yield check_result("signals_schema", checks.validates("signals", out))


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


@asset(
    **COMMON,
    kinds={"parquet"},
    check_specs=[
        check_spec(
            "tick_slices_sorted",
            "tick_slices",
            "Trades are sorted by ts_event within each instrument and day.",
        ),
        check_spec(
            "tick_slices_schema",
            "tick_slices",
            "Every slice validates as trades (positive prices/sizes, buy/sell, unique ids).",
        ),
    ],
)
def tick_slices(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
) -> Iterator[Output[LazyDays] | AssetCheckResult]:
    """The trades inside the signal intervals, fetched by byte-range reads of the ticks objects."""
    client, config = ucs.client(), backtest.load()

    days = days_of(context.partition_keys)
    slice_checks = checks.TickSliceChecks()
    # The catalog of each day starts in the run's backtest process as soon as the day is stored
    # (assets/catalog.py), if nautilus_catalog follows in this process and that process exists:
    # it reads the stored object itself, while this step fetches the next day.
    prebuild = runtime.step_runs_in_this_process(
        context, runtime.CATALOG_STEP
    ) and runtime.has_worker(context)
    market_data: dict[str, Any] | None = None
    # The day fetched and not yet stored: its instruments, intervals and slices. Its checks come
    # after the IO manager has stored it and its catalog is handed on (~0.06 s a day sooner).
    fetched: dict[str, tuple[pa.Table, pa.Table, pa.Table]] = {}
    ahead = False  # the backtest started in the worker

    def check_fetched() -> None:
        for k in list(fetched):  # a day stored without on_stored (another IO manager)
            slice_checks.add(k, fetched.pop(k)[2])

    def produce(key: str) -> pa.Table:
        nonlocal ahead
        check_fetched()
        if prebuild and not ahead:
            # The backtest itself, on the catalogs as they follow (assets/backtest.py): started
            # now, its worker reads the run's stored inputs while this step fetches day 1.
            ahead = True
            backtest_assets.start_backtest_ahead(
                context, client, backtest, config, days, instruments, signals, signal_intervals
            )
        day = layout.parse_day(key)
        inst, intervals = instruments[key], signal_intervals[key]
        with stages.failing_run(client, config, days):
            table = stages.fetch_tick_slices(
                client, config, day, inst, signals[key], stages.to_polars(intervals)
            )
        fetched[key] = (inst, intervals, table)
        return table

    def on_stored(key: str, path: str) -> None:
        nonlocal market_data
        if key not in fetched:
            return
        inst, intervals, table = fetched.pop(key)
        if prebuild:
            if market_data is None:
                market_data = dict(runner.market_data_for(client, config, days))
            day = layout.parse_day(key)
            catalog.prebuild_day(
                context, client, backtest, config, market_data, day, path, inst, intervals, table
            )
        slice_checks.add(key, table)  # the day as it is stored: checked without a read back

    # Lazy: each day is fetched when the IO manager stores it, so a long range never holds more
    # than one day of ticks; rows and bytes read vs available are recorded by the IO manager.
    # Dagster stores a yielded output before resuming this generator: every day has been
    # fetched, checked and written when the check results below are computed.
    yield Output(LazyDays([d.isoformat() for d in days], produce, on_stored=on_stored))
    check_fetched()
    sorted_ok, schema_ok = slice_checks.outcomes()
    yield check_result("tick_slices_sorted", sorted_ok)
    yield check_result("tick_slices_schema", schema_ok)


@asset(**validated_day_asset("funding_rates"))
def funding_rates(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    instruments: DayTables,
) -> Iterator[Output[DayTables] | AssetCheckResult]:
    """The day's funding events of the perpetuals the configuration trades."""
    client, config = ucs.client(), backtest.load()
    out = load_days(
        context,
        client,
        config,
        lambda d: stages.load_funding(client, config, d, instruments[d.isoformat()]),
    )
    yield Output(
        out,
        metadata={
            "events": sum(t.num_rows for t in out.values()),
            "instruments": MetadataValue.text(", ".join(config.instruments)),
        },
    )
    yield check_result("funding_rates_schema", checks.funding_schema(out))
