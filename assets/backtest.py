"""Group ``backtest``: one backtest over the run's days, and its result objects.

``backtest_run`` runs the whole range of the run as ONE backtest (state carried across days) in
a spawned process that reads the ticks (trades, and the quotes or book snapshots the run
replays) from the Nautilus catalogs. The result assets are the
run's objects at their exact results paths (``backtest_results/{run_id}/…``): their values are
:class:`RunArtifact` s that the UCS IO manager stores there, with a pointer per covered day.
"""

from collections.abc import Iterator
from datetime import date
from typing import Any

import polars as pl
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from assets import runtime
from assets.checks import check_result, check_spec
from assets.partitions import daily_partitions, days_of, single_run
from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.results import checks as asset_checks
from backtest_pipeline.results import operations as operations_mod
from backtest_pipeline.results import report
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.run import stages
from backtest_pipeline.run import worker as workers
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import DayTables, LazyDays, RunArtifact, day_object_path
from resources.settings import BacktestSettings, tag_run
from resources.ucs_resource import UCSResource

GROUP = "backtest"
COMMON = {"partitions_def": daily_partitions, "backfill_policy": single_run, "group_name": GROUP}


def _run_metadata(art: RunArtifact) -> dict[str, Any]:
    return {
        "run_id": art.run_id,
        "start": art.days[0] if art.days else "",
        "end": art.days[-1] if art.days else "",
        "days_covered": len(art.days),
    }


@asset(**COMMON, kinds={"nautilus"})
def backtest_run(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest: BacktestSettings,
    nautilus_catalog: DayTables,
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
    funding_rates: DayTables,
) -> RunArtifact:
    """One backtest of the run configuration over all the run's days, in its own process."""
    client, config = ucs.client(), backtest.load()
    tag_run(context, backtest, config.strategy_id)
    days = days_of(context.partition_keys)
    missing = [d for d in days if d.isoformat() not in nautilus_catalog]
    if missing:
        raise RuntimeError(f"nautilus_catalog is missing for {missing}")
    run_id = config.run_id(days[0], days[-1])
    context.log.info(
        f"backtest {run_id}: {backtest.config_name} over {days[0]}..{days[-1]} ({len(days)} days)"
    )
    # The step only waits while the engine runs in its process: import and warm up what
    # backtest_summary's equity plot needs meanwhile (matplotlib, its fonts: ~0.5 s) instead of
    # after the backtest.
    runtime.call_in_background(report.warm_up_plots)
    dagster_run = context.run.run_id
    inputs = bundle_inputs(
        backtest.scope, days, instruments, signals, signal_intervals, funding_rates
    )
    match = None if inputs is None else _ahead_match(client, backtest, config, run_id, inputs)
    started, read = runtime.take_started(
        dagster_run, runtime.BACKTEST_STEP, runtime.WHOLE_RUN, match
    )
    worker = workers.take_worker(dagster_run)
    out: dict[str, Any] | None = None
    if started:
        why = _why_not_collected(client, dagster_run, days, read, worker)
        if why is None and worker is not None:
            context.log.info(f"backtest {run_id}: collecting the engine started ahead")
            collected = workers.collect_backtest(worker, run_id)
            if isinstance(collected, str):
                why = collected
            else:
                out = collected
        if out is None:  # it wrote nothing: stopping its process leaves nothing of it behind
            context.log.warning(
                f"backtest {run_id}: the run started ahead is discarded ({why}); it runs again "
                "in a new process"
            )
            if worker is not None:
                worker.close()
            worker = None
    if out is None:
        bundles = [
            stages.make_bundle(
                client,
                config,
                backtest.scope,
                d,
                instruments[k],
                signals[k],
                signal_intervals[k],
                funding_rates[k],
            )
            for d in days
            for k in [d.isoformat()]
        ]
        out = workers.run_backtest_isolated(client, config, bundles, run_id=run_id, worker=worker)
    summary = out["summary"]
    flat = report.flat_metrics(summary)
    locations = out["locations"]
    context.add_output_metadata(
        {
            "run_id": run_id,
            "config_name": backtest.config_name,
            "strategy_id": config.strategy_id,
            "start": days[0].isoformat(),
            "end": days[-1].isoformat(),
            "days_covered": len(days),
            "status": summary["status"],
            "net_pnl": flat.get("net_pnl"),
            "ticks_per_second": flat.get("ticks_per_second"),
            "ticks_processed": flat.get("ticks_processed"),
            "bytes_read": flat.get("bytes_read"),
            "bytes_available": flat.get("bytes_available"),
            "wall_time_s": flat.get("wall_time_s"),
            "results": MetadataValue.text(locations["summary.json"].rsplit("/", 1)[0] + "/"),
            "execution_log": MetadataValue.text(locations["execution.log"]),
        }
    )
    return RunArtifact(
        run_id,
        "backtest_config.json",
        summary["config"],
        [d.isoformat() for d in days],
        stored=True,  # run_backtest wrote it before the engine started
    )


def bundle_inputs(
    scope: str,
    days: list[date],
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
    funding_rates: DayTables | None = None,
) -> list[tuple[str, dict[str, str]]] | None:
    """Per day, the stored objects the backtest's day bundles are made of (results bucket).

    What a backtest started ahead reads by reference (``workers.BUNDLE_INPUTS``). ``funding_rates``
    is no input of ``tick_slices``, which starts it: its path is the IO manager's. None when
    an input is not a stored value (it cannot be named).
    """
    out: list[tuple[str, dict[str, str]]] = []
    for d in days:
        k = d.isoformat()
        paths: dict[str, str] = {}
        for name, values in (
            ("instruments", instruments),
            ("signals", signals),
            ("signal_intervals", signal_intervals),
            ("funding_rates", funding_rates),
        ):
            if values is None:
                paths[name] = day_object_path(scope, name, k)
                continue
            where = values.location(k) if isinstance(values, LazyDays) else None
            if where is None:
                return None
            paths[name] = where
        out.append((k, paths))
    return out


def _ahead_match(
    client: UnifiedCloudService,
    backtest: BacktestSettings,
    config: BacktestConfig,
    run_id: str,
    inputs: list[tuple[str, dict[str, str]]],
) -> tuple[Any, ...]:
    """The arguments of the backtest started ahead (see :func:`start_backtest_ahead`)."""
    by_day = tuple((k, tuple(sorted(p.items()))) for k, p in inputs)
    return (client.root, backtest.scope, config.model_dump_json(), run_id, by_day)


def start_backtest_ahead(
    context: AssetExecutionContext,
    client: UnifiedCloudService,
    backtest: BacktestSettings,
    config: BacktestConfig,
    days: list[date],
    instruments: DayTables,
    signals: DayTables,
    signal_intervals: DayTables,
) -> bool:
    """Start this run's backtest in its worker now, on the catalogs as they are stored.

    Called by ``tick_slices`` once its first day is stored (the catalogs' days follow it into
    the worker): the engine replays day d while the worker writes day d + 1's catalog, as the
    CLI's prefetch feeds its engine. ``backtest_run`` collects it if it would start the same
    run on the same stored inputs, else stops it (it writes nothing before) and runs its own.
    True if started (``runtime.start_ahead``).
    """
    inputs = bundle_inputs(backtest.scope, days, instruments, signals, signal_intervals)
    if inputs is None:
        return False
    run_id = config.run_id(days[0], days[-1])
    return runtime.start_ahead(
        context,
        runtime.BACKTEST_STEP,
        _ahead_match(client, backtest, config, run_id, inputs),
        lambda worker: workers.start_backtest_ahead(
            worker, client, config, run_id, backtest.scope, inputs
        ),
    )


def _why_not_collected(
    client: UnifiedCloudService,
    dagster_run: str,
    days: list[date],
    read: dict[str, str] | None,
    worker: workers.BacktestWorker | None,
) -> str | None:
    """Why the backtest started ahead is not this step's run (None: it is)."""
    if read is None:
        return "started with other arguments, or it could not start"
    if worker is None or not worker.alive():
        return "its process is gone"
    target = layout.target("results")
    changed = [p for p, gen in read.items() if client.stat_sync(target, p).generation != gen]
    if changed:
        return f"{len(changed)} input object(s) changed since it read them, e.g. {changed[0]}"
    in_worker = runtime.worker_days(dagster_run, runtime.CATALOG_STEP)
    other = [d.isoformat() for d in days if d.isoformat() not in in_worker]
    if other:
        return f"the catalog of {other[0]} was not written by its process"
    return None


#: The run's result objects, each an asset (key → object name and description).
RESULT_ASSETS = {
    "orders": ("orders.parquet", "One row per order of the run (OMS view), with its operation."),
    "fills": ("fills.parquet", "One row per fill of the run."),
    "positions": (
        "positions.parquet",
        "The position timeline: every fill and equity sample while open.",
    ),
    "equity_curve": (
        "equity_curve.parquet",
        "Portfolio value on the equity grid and at every fill.",
    ),
    "operations": (
        "operations.parquet",
        "Execution quality per operation (signal worked by its algo): shortfall, costs, fill ratio.",
    ),
}
SUMMARY_DOC = "``summary.json`` of the run: PnL, metrics and execution stats, with an equity plot."


RESULT_CHECKS = [
    check_spec(
        "orders_schema",
        "orders",
        "orders.parquet has exactly the columns and types of docs/outputs.md.",
    ),
    check_spec(
        "orders_belong_to_operations",
        "orders",
        "Every order carries the operation (signal execution) it belongs to.",
    ),
    check_spec(
        "fills_schema",
        "fills",
        "fills.parquet has exactly the columns and types of docs/outputs.md.",
    ),
    check_spec(
        "positions_schema",
        "positions",
        "positions.parquet has exactly the columns and types of docs/outputs.md.",
    ),
    check_spec(
        "equity_curve_schema",
        "equity_curve",
        "equity_curve.parquet has exactly the columns and types of docs/outputs.md.",
    ),
    check_spec(
        "operations_schema",
        "operations",
        "operations.parquet has exactly the columns and types of docs/outputs.md.",
    ),
    check_spec(
        "net_pnl_equals_equity_change",
        "backtest_summary",
        "summary.pnl.net_pnl equals the equity curve's last value minus the starting balance.",
    ),
]


@multi_asset(
    name="backtest_results",
    outs={
        **{
            key: AssetOut(kinds={"parquet"}, description=doc, is_required=False)
            for key, (_name, doc) in RESULT_ASSETS.items()
        },
        "backtest_summary": AssetOut(kinds={"json"}, description=SUMMARY_DOC, is_required=False),
    },
    ins={"backtest_run": AssetIn("backtest_run")},
    internal_asset_deps={
        **{key: {AssetKey("backtest_run")} for key in RESULT_ASSETS},
        "backtest_summary": {AssetKey("backtest_run"), AssetKey("equity_curve")},
    },
    check_specs=RESULT_CHECKS,
    can_subset=True,
    **COMMON,
)
def backtest_results(
    context: AssetExecutionContext,
    ucs: UCSResource,
    backtest_run: RunArtifact,
) -> Iterator[Output[RunArtifact] | AssetCheckResult]:
    """The run's result objects (written by the backtest) as assets, and the checks on them.

    One step for the six objects and seven of their checks: each object is read once for its
    metadata and its checks (as separate steps they cost ~40 ms of Dagster events each and read
    every object two or three times). Each asset and check can still be materialized alone.
    ``fills_inside_signal_intervals`` stays a check step of its own (``assets.checks``): it needs
    ``signal_intervals``, which is no input of these assets.
    """
    client = ucs.client()
    run_id, days = backtest_run.run_id, backtest_run.days
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    checks_wanted = {k.name for k in context.selected_asset_check_keys}
    tables: dict[str, pa.Table] = {}

    def table(key: str) -> pa.Table:
        if key not in tables:
            tables[key] = ResultWriter(client, run_id).read_table(RESULT_ASSETS[key][0])
        return tables[key]

    for key, (name, _doc) in RESULT_ASSETS.items():
        if key in selected:
            yield Output(
                # The object is the one run_backtest wrote: the IO manager only points each day
                # of the run at it.
                RunArtifact(run_id, name, None, days, stored=True),
                output_name=key,
                metadata={
                    **_run_metadata(backtest_run),
                    "dagster/row_count": table(key).num_rows,
                    **(_operations_metadata(table(key)) if key == "operations" else {}),
                },
            )
        if f"{key}_schema" in checks_wanted:
            yield check_result(
                f"{key}_schema", asset_checks.result_schema(table(key), name), asset=key
            )
    if "orders_belong_to_operations" in checks_wanted:
        yield check_result(
            "orders_belong_to_operations",
            asset_checks.orders_have_operation(table("orders")),
            asset="orders",
        )
    if "backtest_summary" in selected or "net_pnl_equals_equity_change" in checks_wanted:
        summary = ResultWriter(client, run_id).read_summary()
        if "backtest_summary" in selected:
            yield Output(
                RunArtifact(run_id, "summary.json", summary, days, stored=True),
                output_name="backtest_summary",
                metadata=_summary_metadata(client, backtest_run, summary, table("equity_curve")),
            )
        if "net_pnl_equals_equity_change" in checks_wanted:
            yield check_result(
                "net_pnl_equals_equity_change",
                asset_checks.net_pnl_matches_equity(summary, table("equity_curve")),
                asset="backtest_summary",
            )


def _operations_metadata(operations: pa.Table) -> dict[str, Any]:
    """The by-algo execution-quality table (as in summary.json and the CLI) and the headline."""
    tca = operations_mod.tca_by_algo(operations)
    everything = tca["ALL"]
    headline = {
        "shortfall_bps_mean": everything["implementation_shortfall_bps_mean"],
        "shortfall_bps_p90": everything["implementation_shortfall_bps_p90"],
        "fill_ratio": everything["fill_ratio"],
    }
    return {
        "execution_quality": MetadataValue.md(operations_mod.tca_markdown(tca)),
        **{k: round(v, 4) for k, v in headline.items() if v is not None},
    }


def _summary_metadata(
    client: UnifiedCloudService,
    backtest_run: RunArtifact,
    summary: dict[str, Any],
    equity_table: pa.Table,
) -> dict[str, Any]:
    equity = pl.from_arrow(equity_table)
    assert isinstance(equity, pl.DataFrame)
    values = equity["portfolio_value"].to_numpy()
    drawdown = equity["drawdown_pct"].to_numpy()
    return {
        **_run_metadata(backtest_run),
        # Text shows inline on the asset page; the Markdown PNG below needs a click.
        "equity": MetadataValue.text(
            f"{report.sparkline(values)}  {values[0]:,.2f} → {values[-1]:,.2f}"
            if values.size
            else "no equity samples"
        ),
        "drawdown (%)": MetadataValue.text(
            f"{report.sparkline(drawdown)}  worst {drawdown.min():.2f} %"
            if drawdown.size
            else "no equity samples"
        ),
        **report.people_figures(summary),
        "headline": MetadataValue.md(report.headline_markdown(summary)),
        "equity_curve": MetadataValue.md(report.equity_markdown(equity, backtest_run.run_id)),
        "summary": MetadataValue.text(
            ResultWriter(client, backtest_run.run_id).uri("summary.json")
        ),
        # The run's self-contained report (opens with no network), one click from the asset.
        "report": MetadataValue.url(ResultWriter(client, backtest_run.run_id).uri("report.html")),
    }
