"""Shared helpers of the Dagster tests: sample data and one-call materialization of the graph."""

import warnings
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult, load_assets_from_modules, materialize

from assets import backtest, catalog, inputs
from assets.checks import ALL_CHECKS
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import UCSIOManager
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource

warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")

START = "2024-01-01"
DAYS = 3
TRADES_PER_DAY = 20_000


def write_sample(ucs: UnifiedCloudService, days: int = DAYS) -> None:
    generate_sample_data(ucs, START, days, trades_per_day=TRADES_PER_DAY)


def resources(root: str, config_name: str = "demo") -> dict[str, Any]:
    ucs = UCSResource(root=root)
    settings = BacktestSettings(config_name=config_name)
    return {
        "ucs": ucs,
        "backtest": settings,
        "io_manager": UCSIOManager(ucs=ucs, settings=settings),
    }


def materialize_graph(
    root: str,
    start: str,
    end: str | None = None,
    config_name: str = "demo",
    with_checks: bool = True,
    raise_on_error: bool = True,
    instance: DagsterInstance | None = None,
) -> ExecuteInProcessResult:
    """Every asset (and check) for one day, or for the range [start, end] in ONE run."""
    assets = [
        *load_assets_from_modules([inputs, catalog, backtest]),
        *(ALL_CHECKS if with_checks else []),
    ]
    kwargs: dict[str, Any] = {}
    if end is None or end == start:
        kwargs["partition_key"] = start
    else:
        kwargs["tags"] = {
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        }
    return materialize(
        assets,
        resources=resources(root, config_name),
        instance=instance or DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
        **kwargs,
    )


def metadata(result: ExecuteInProcessResult, node: str) -> dict[str, Any]:
    mats = result.asset_materializations_for_node(node)
    assert mats, f"no materialization of {node}"
    return {k: v.value for k, v in mats[0].metadata.items()}


def check_results(result: ExecuteInProcessResult) -> dict[str, bool]:
    out = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_CHECK_EVALUATION":
            out[e.event_specific_data.check_name] = e.event_specific_data.passed
    return out
