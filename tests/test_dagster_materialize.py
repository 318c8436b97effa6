"""The whole graph materialized for one day and for a 3-day range, on the local root and on GCS.

The range must be ONE backtest with state carried across days, and give exactly what
``run_backtest`` gives over the same range (same fills, same PnL and metrics).
"""

from typing import Any

import polars as pl
import pytest
from _dagster_helpers import check_results, materialize_graph, write_sample
from dagster import AssetKey, ExecuteInProcessResult

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, load_config
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

pytestmark = pytest.mark.slow

ALL_ASSETS = (
    "instruments",
    "signals",
    "signal_intervals",
    "tick_slices",
    "funding_rates",
    "nautilus_catalog",
    "backtest_run",
    "orders",
    "fills",
    "positions",
    "equity_curve",
    "operations",
    "backtest_summary",
)


def metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The first materialization's metadata of an asset (several assets may share a step)."""
    for e in result.all_events:
        mat = e.event_specific_data if e.event_type_value == "ASSET_MATERIALIZATION" else None
        if mat is not None and mat.materialization.asset_key == AssetKey(asset):
            return {k: v.value for k, v in mat.materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset}")


def _read(ucs: UnifiedCloudService, run_id: str, name: str) -> pl.DataFrame:
    return ucs.download_from_gcs_sync(layout.target("results"), layout.result_path(run_id, name))


def _assert_graph(ucs: UnifiedCloudService, root: str) -> None:
    config: BacktestConfig = load_config("demo")
    write_sample(ucs)

    # one day: a one-day backtest
    one = materialize_graph(root, "2024-01-02")
    assert one.success
    rid_one = config.run_id("2024-01-02", "2024-01-02")
    assert metadata(one, "backtest_run")["run_id"] == rid_one
    assert metadata(one, "backtest_run")["days_covered"] == 1
    assert all(check_results(one).values()), check_results(one)

    # three days in one run: ONE backtest over the range
    rng = materialize_graph(root, "2024-01-01", "2024-01-03")
    assert rng.success
    rid = config.run_id("2024-01-01", "2024-01-03")
    assert rid != rid_one
    meta = metadata(rng, "backtest_run")
    assert (meta["run_id"], meta["start"], meta["end"], meta["days_covered"]) == (
        rid,
        "2024-01-01",
        "2024-01-03",
        3,
    )
    # every asset of the graph, for each of the 3 days, in this one run (checks share the
    # steps of their assets, the result objects one step: fewer steps than assets)
    mats: dict[str, set[str]] = {}
    for m in rng.get_asset_materialization_events():
        mat = m.event_specific_data.materialization
        mats.setdefault(mat.asset_key.to_user_string(), set()).add(mat.partition)
    assert mats == {a: {"2024-01-01", "2024-01-02", "2024-01-03"} for a in ALL_ASSETS}, mats
    runs = {
        metadata(rng, n)["run_id"]
        for n in ("orders", "fills", "positions", "equity_curve", "backtest_summary")
    }
    assert runs == {rid}
    summary_meta = metadata(rng, "backtest_summary")
    assert summary_meta["equity_curve"].startswith("![")
    assert "data:image/png;base64," in summary_meta["equity_curve"]
    assert summary_meta["days_covered"] == 3
    # figures for people: money to the cent with its currency, % and bps in the names, the
    # equity as an inline sparkline that runs from the first to the last portfolio value
    stored = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(rid, "summary.json")
    )
    ccy = stored["config"]["account_currency"]
    assert summary_meta[f"net_pnl ({ccy})"] == round(stored["pnl"]["net_pnl"], 2)
    assert summary_meta["max_drawdown (%)"] == round(stored["metrics"]["max_drawdown_pct"], 2)
    assert summary_meta["avg_slippage (bps)"] == round(
        stored["execution_stats"]["avg_slippage_bps"], 2
    )
    pv = _read(ucs, rid, "equity_curve.parquet")["portfolio_value"]
    spark, first, _, last = summary_meta["equity"].split()
    assert set(spark) <= set("▁▂▃▄▅▆▇█") and len(spark) == min(48, len(pv))
    assert (first, last) == (f"{pv[0]:,.2f}", f"{pv[-1]:,.2f}")
    assert f"| Net PnL | {stored['pnl']['net_pnl']:,.2f} {ccy} |" in summary_meta["headline"]
    assert summary_meta["report"] == ucs.uri(
        layout.target("results"), layout.result_path(rid, "report.html")
    )
    tick_meta = metadata(rng, "tick_slices")
    assert 0 < tick_meta["bytes_read"] < tick_meta["bytes_available"]
    checks = check_results(rng)
    assert len(checks) == 13 and all(checks.values()), checks

    # every result object at its exact path, the log included
    t_res = layout.target("results")
    for path in layout.all_result_paths(rid):
        assert ucs.exists_sync(t_res, path), path
    summary = ucs.download_from_gcs_sync(t_res, layout.result_path(rid, "summary.json"))
    assert summary["days"] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert summary["status"] == "COMPLETED"
    log_text = ucs.download_from_gcs_sync(t_res, layout.log_path(rid))
    assert rid in log_text

    # the catalog of each day is stored under its prefix, manifest included
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        assert ucs.exists_sync(t_res, f"{layout.catalog_prefix(day)}demo/_manifest.json")

    fills = _read(ucs, rid, "fills.parquet")
    orders = _read(ucs, rid, "orders.parquet")
    assert fills.height > 0

    # the same range through run_backtest (reading storage directly) gives the same result
    direct = run_backtest(config, "2024-01-01", "2024-01-03", ucs=ucs, write_results=False)
    assert direct.run_id == rid
    assert direct.summary["pnl"] == summary["pnl"]
    assert direct.summary["metrics"] == summary["metrics"]
    from backtest_pipeline.run.runner import result_tables

    tables = result_tables(direct)
    assert pl.from_arrow(tables["fills.parquet"]).equals(fills)
    assert pl.from_arrow(tables["orders.parquet"]).equals(orders)
    # the same execution quality per operation, and its by-algo table in the asset's metadata
    operations = _read(ucs, rid, "operations.parquet")
    assert operations.height > 0
    assert pl.from_arrow(tables["operations.parquet"]).equals(operations)
    ops_meta = metadata(rng, "operations")
    assert ops_meta["execution_quality"].startswith("| algo |")
    for algo in summary["execution_stats"]["tca"]:
        assert f"| {algo} |" in ops_meta["execution_quality"]
    assert ops_meta["fill_ratio"] == round(
        summary["execution_stats"]["tca"]["ALL"]["fill_ratio"], 4
    )
    assert (
        summary["execution_stats"]["ticks_processed"]
        == direct.summary["execution_stats"]["ticks_processed"]
    )


def test_graph_local(local_ucs: UnifiedCloudService) -> None:
    _assert_graph(local_ucs, local_ucs.root)


def test_graph_gcs_emulator(gcs_ucs: UnifiedCloudService) -> None:
    _assert_graph(gcs_ucs, "gs://")
