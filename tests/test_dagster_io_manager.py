"""The UCS IO manager: per-day and range load/store, result paths, pointers, atomicity."""

import warnings

import polars as pl
import pyarrow as pa
import pytest
from dagster import (
    DailyPartitionsDefinition,
    PartitionKeyRange,
    build_input_context,
    build_output_context,
)

from backtest_pipeline import layout
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.io_manager import RunArtifact, UCSIOManager
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource

warnings.filterwarnings("ignore", category=DeprecationWarning)
PARTS = DailyPartitionsDefinition(start_date="2024-01-01")
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]


def _iom(ucs: UnifiedCloudService, config: str = "demo") -> UCSIOManager:
    return UCSIOManager(
        ucs=UCSResource(root=ucs.root), settings=BacktestSettings(config_name=config)
    )


def _out(asset: str, key: str | None = None, rng: tuple[str, str] | None = None):  # type: ignore[no-untyped-def]
    kw = (
        {"partition_key": key}
        if key
        else {"asset_partition_key_range": PartitionKeyRange(*rng)}
        if rng
        else {}
    )
    return build_output_context(asset_key=asset, asset_partitions_def=PARTS, **kw)


def _in(asset: str, key: str | None = None, rng: tuple[str, str] | None = None):  # type: ignore[no-untyped-def]
    kw = (
        {"partition_key": key}
        if key
        else {"asset_partition_key_range": PartitionKeyRange(*rng)}
        if rng
        else {}
    )
    return build_input_context(asset_key=asset, asset_partitions_def=PARTS, **kw)


def _table(n: int) -> pa.Table:
    return pa.table({"ts_event": list(range(n)), "x": [float(i) for i in range(n)]})


def test_single_partition_roundtrip_and_path(ucs: UnifiedCloudService) -> None:
    iom = _iom(ucs)
    iom.handle_output(_out("signals", "2024-01-02"), {"2024-01-02": _table(3)})
    path = layout.asset_path("signals", "demo.2024-01-02")
    assert ucs.exists_sync(layout.target("results"), path)
    loaded = iom.load_input(_in("signals", "2024-01-02"))
    assert list(loaded) == ["2024-01-02"] and loaded["2024-01-02"].equals(_table(3))
    # a bare table is accepted for a single partition
    iom.handle_output(_out("signals", "2024-01-03"), pl.from_arrow(_table(2)))
    assert iom.load_input(_in("signals", "2024-01-03"))["2024-01-03"].num_rows == 2


def test_range_is_split_per_day_and_loaded_back(ucs: UnifiedCloudService) -> None:
    iom = _iom(ucs)
    iom.handle_output(
        _out("tick_slices", rng=("2024-01-01", "2024-01-03")),
        {d: _table(i + 1) for i, d in enumerate(DAYS)},
    )
    for i, d in enumerate(DAYS):
        one = iom.load_input(_in("tick_slices", d))
        assert one[d].num_rows == i + 1
    both = iom.load_input(_in("tick_slices", rng=("2024-01-02", "2024-01-03")))
    assert {k: v.num_rows for k, v in both.items()} == {"2024-01-02": 2, "2024-01-03": 3}


def test_range_output_must_cover_the_run(ucs: UnifiedCloudService) -> None:
    iom = _iom(ucs)
    with pytest.raises(ValueError, match="materializes"):
        iom.handle_output(
            _out("tick_slices", rng=("2024-01-01", "2024-01-03")), {"2024-01-01": _table(1)}
        )
    with pytest.raises(TypeError, match="dict keyed by partition"):
        iom.handle_output(_out("tick_slices", rng=("2024-01-01", "2024-01-03")), _table(1))


def test_configurations_are_isolated(local_ucs: UnifiedCloudService) -> None:
    _iom(local_ucs, "demo").handle_output(_out("signals", "2024-01-01"), {"2024-01-01": _table(1)})
    _iom(local_ucs, "two_venues").handle_output(
        _out("signals", "2024-01-01"), {"2024-01-01": _table(5)}
    )
    assert (
        _iom(local_ucs, "demo").load_input(_in("signals", "2024-01-01"))["2024-01-01"].num_rows == 1
    )
    assert (
        _iom(local_ucs, "two_venues")
        .load_input(_in("signals", "2024-01-01"))["2024-01-01"]
        .num_rows
        == 5
    )


def test_missing_partition_is_a_clear_error(local_ucs: UnifiedCloudService) -> None:
    with pytest.raises(
        FileNotFoundError, match="signals partition 2024-01-05 of configuration 'demo'"
    ):
        _iom(local_ucs).load_input(_in("signals", "2024-01-05"))


def test_run_artifacts_land_at_result_paths(ucs: UnifiedCloudService) -> None:
    iom = _iom(ucs)
    rid = "BT-20240101-20240103-abcdef12"
    fills = pa.table({"fill_id": ["a", "b"], "price": [1.0, 2.0]})
    iom.handle_output(
        _out("fills", rng=("2024-01-01", "2024-01-03")),
        RunArtifact(rid, "fills.parquet", fills, DAYS),
    )
    iom.handle_output(
        _out("backtest_summary", rng=("2024-01-01", "2024-01-03")),
        RunArtifact(rid, "summary.json", {"run_id": rid}, DAYS),
    )
    t = layout.target("results")
    assert ucs.exists_sync(t, f"backtest_results/{rid}/fills.parquet")
    assert ucs.download_from_gcs_sync(t, f"backtest_results/{rid}/summary.json") == {"run_id": rid}
    # any day of the range leads back to the run; a range load gives the one artifact
    for d in DAYS:
        art = iom.load_input(_in("fills", d))
        assert isinstance(art, RunArtifact) and art.run_id == rid and art.days == DAYS
        assert art.data.equals(fills)
    art = iom.load_input(_in("backtest_summary", rng=("2024-01-02", "2024-01-03")))
    assert art.data == {"run_id": rid}


def test_days_of_different_runs_load_as_a_list(local_ucs: UnifiedCloudService) -> None:
    iom = _iom(local_ucs)
    for d in ("2024-01-01", "2024-01-02"):
        rid = f"BT-{d.replace('-', '')}-{d.replace('-', '')}-00000000"
        iom.handle_output(_out("orders", d), RunArtifact(rid, "orders.parquet", _table(1), [d]))
    arts = iom.load_input(_in("orders", rng=("2024-01-01", "2024-01-02")))
    assert isinstance(arts, list) and len({a.run_id for a in arts}) == 2


def test_unknown_run_object_is_refused(local_ucs: UnifiedCloudService) -> None:
    with pytest.raises(ValueError, match="not a run object"):
        _iom(local_ucs).handle_output(
            _out("orders", "2024-01-01"), RunArtifact("BT-x", "../evil.parquet", _table(1))
        )
    with pytest.raises(layout.LayoutError):
        _iom(local_ucs).handle_output(
            _out("orders", "2024-01-01"), RunArtifact("../x", "orders.parquet", _table(1))
        )


def test_failed_object_write_leaves_no_pointer(
    local_ucs: UnifiedCloudService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer is written after the object: a failed upload never leaves a dangling pointer."""
    iom = _iom(local_ucs)
    real = UnifiedCloudService.upload_to_gcs_sync

    def failing(self, target, path, data, format=None, **kw):  # type: ignore[no-untyped-def]
        if path.startswith("backtest_results/"):
            raise OSError("disk full")
        return real(self, target, path, data, format, **kw)

    monkeypatch.setattr(UnifiedCloudService, "upload_to_gcs_sync", failing)
    with pytest.raises(OSError):
        iom.handle_output(
            _out("fills", "2024-01-01"),
            RunArtifact("BT-1", "fills.parquet", _table(1), ["2024-01-01"]),
        )
    monkeypatch.undo()
    assert not local_ucs.exists_sync(
        layout.target("results"), layout.asset_path("fills", "demo.2024-01-01")
    )


def test_local_writes_are_atomic(local_ucs: UnifiedCloudService) -> None:
    """Objects appear whole (temp name + rename): no partial or temporary file is left behind."""
    iom = _iom(local_ucs)
    iom.handle_output(
        _out("signals", rng=("2024-01-01", "2024-01-03")), {d: _table(10_000) for d in DAYS}
    )
    bucket_dir = local_ucs.backend.root / layout.target("results").gcs_bucket  # type: ignore[attr-defined]
    files = sorted(p.name for p in bucket_dir.rglob("*") if p.is_file())
    assert files == [f"demo.{d}.parquet" for d in DAYS]
