"""The one IO manager of the code location, built on UCS (local directory or GCS alike).

Why not Dagster's stock UPath/GCS pickle managers: they refuse an output that covers several
partitions, and a range of days materialized in one run is exactly that. This manager

* stores a per-day value (``dict[partition_key, table]``) as one Parquet object per day at
  ``layout.asset_path(asset, f"{scope}.{day}")`` — a range output is split per partition key, and a
  range input is the dict of the days asked for;
* stores a :class:`RunArtifact` (a backtest result object that belongs to a run, not to a day) at
  its exact results path of spec/storage.md (``backtest_results/{run_id}/orders.parquet`` …), then
  writes one small pointer object per day of the run, so that any day of the range leads back to
  the run that covered it;
* writes through UCS only, so every object is atomic (absent or whole), and a pointer is written
  after the object it points to.

``scope`` is the run's configuration name: two configurations materializing the same day keep
separate intermediate objects (their slices differ by strategy and intervals).
"""

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, OutputContext

from backtest_pipeline import layout
from backtest_pipeline.resources.settings import BacktestSettings
from backtest_pipeline.resources.ucs_resource import UCSResource
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.ucs import UnifiedCloudService

POINTER_KEY = b"backtest.pointer"
RUN_OBJECTS = (*layout.RESULT_OBJECTS, "backtest_config.json", "execution.log")


@dataclass
class RunArtifact:
    """One object of a backtest run: where it lives is decided by ``run_id`` and ``name``.

    ``data``: an Arrow table / polars frame for ``*.parquet``, a JSON-able dict for ``*.json``,
    a string for ``execution.log``. ``days`` are the UTC days the run covered.
    """

    run_id: str
    name: str
    data: Any
    days: list[str] = field(default_factory=list)

    def path(self) -> str:
        return artifact_path(self.run_id, self.name)


def artifact_path(run_id: str, name: str) -> str:
    if name == "backtest_config.json":
        return layout.config_path(run_id)
    if name == "execution.log":
        return layout.log_path(run_id)
    return layout.result_path(run_id, name)


def _format(name: str) -> str:
    if name.endswith(".parquet"):
        return "parquet"
    return "json" if name.endswith(".json") else "text"


def _as_arrow(value: Any, what: str) -> pa.Table:
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pl.DataFrame):
        return value.to_arrow()
    raise TypeError(f"{what}: expected a pyarrow Table or polars DataFrame, got {type(value).__name__}")


def _parquet_bytes(table: pa.Table) -> bytes:
    # Written here (not by UCS' encoder) so the schema metadata survives: tick_slices carry
    # their read statistics there.
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class UCSIOManager(ConfigurableIOManager):
    """Partition- and range-aware storage of asset values through UCS."""

    ucs: UCSResource
    settings: BacktestSettings

    # ---- paths ------------------------------------------------------------------------------

    def _client(self) -> UnifiedCloudService:
        return self.ucs.client()

    @staticmethod
    def _asset_name(context: OutputContext | InputContext) -> str:
        return "__".join(context.asset_key.path)

    @staticmethod
    def _partition_keys(context: OutputContext | InputContext) -> list[str | None]:
        return list(context.asset_partition_keys) if context.has_asset_partitions else [None]

    def day_path(self, asset: str, partition_key: str | None) -> str:
        """Where a per-day value (or a day's run pointer) of this configuration is stored."""
        scope = self.settings.scope
        return layout.asset_path(asset, f"{scope}.{partition_key or 'all'}")

    # ---- output -----------------------------------------------------------------------------

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        ucs = self._client()
        target = layout.target("results")
        asset = self._asset_name(context)
        keys = self._partition_keys(context)
        if isinstance(obj, RunArtifact):
            self._store_artifact(ucs, asset, keys, obj)
            context.add_output_metadata({"path": ucs.uri(target, obj.path())})
            return
        values: Mapping[str | None, Any]
        if isinstance(obj, Mapping):
            values = obj
            if set(values) != set(keys):
                raise ValueError(
                    f"asset {asset}: the output maps partitions {sorted(map(str, values))} but the "
                    f"run materializes {sorted(map(str, keys))}"
                )
        elif len(keys) == 1:
            values = {keys[0]: obj}
        else:
            raise TypeError(
                f"asset {asset}: a {len(keys)}-partition output must be a dict keyed by partition "
                f"key (one value per day) or a RunArtifact, got {type(obj).__name__}"
            )
        rows = 0
        for key in keys:
            table = _as_arrow(values[key], f"asset {asset} partition {key}")
            rows += table.num_rows
            ucs.upload_to_gcs_sync(target, self.day_path(asset, key), _parquet_bytes(table), format="bytes")
        context.add_output_metadata(
            {
                "dagster/row_count": rows,
                "path": ucs.uri(target, self.day_path(asset, keys[-1])),
                "partitions_written": len(keys),
            }
        )

    def _store_artifact(
        self, ucs: UnifiedCloudService, asset: str, keys: list[str | None], art: RunArtifact
    ) -> None:
        if art.name not in RUN_OBJECTS:
            raise ValueError(f"{art.name!r} is not a run object; expected one of {RUN_OBJECTS}")
        target = layout.target("results")
        fmt = _format(art.name)
        data = _as_arrow(art.data, art.name) if fmt == "parquet" else art.data
        ucs.upload_to_gcs_sync(target, art.path(), data, format=fmt)  # the object first …
        days = art.days or [k for k in keys if k is not None]
        pointer = pa.table(
            {
                "run_id": [art.run_id],
                "name": [art.name],
                "path": [art.path()],
                "start": [min(days) if days else None],
                "end": [max(days) if days else None],
                "days": [days],
                "config_name": [self.settings.scope],
            }
        ).replace_schema_metadata({POINTER_KEY: b"1"})
        payload = _parquet_bytes(pointer)
        for key in keys:  # … then one pointer per day it covers
            ucs.upload_to_gcs_sync(target, self.day_path(asset, key), payload, format="bytes")

    # ---- input ------------------------------------------------------------------------------

    def load_input(self, context: InputContext) -> Any:
        ucs = self._client()
        target = layout.target("results")
        asset = self._asset_name(context)
        keys = self._partition_keys(context)
        tables: dict[str | None, pa.Table] = {}
        for key in keys:
            path = self.day_path(asset, key)
            try:
                data = ucs.download_bytes_sync(target, path)
            except ObjectNotFoundError as exc:
                raise FileNotFoundError(
                    f"asset {asset} partition {key} of configuration {self.settings.scope!r} is "
                    f"not materialized ({ucs.uri(target, path)} does not exist)"
                ) from exc
            tables[key] = pq.read_table(io.BytesIO(data))
        pointers = [t for t in tables.values() if (t.schema.metadata or {}).get(POINTER_KEY)]
        if pointers:
            return self._load_artifacts(ucs, pointers)
        if not context.has_asset_partitions:
            return tables[None]
        return tables

    def _load_artifacts(self, ucs: UnifiedCloudService, pointers: list[pa.Table]) -> Any:
        """The run object(s) the requested days point to: one RunArtifact, or a list if several."""
        target = layout.target("results")
        seen: dict[tuple[str, str], RunArtifact] = {}
        for p in pointers:
            row = p.to_pylist()[0]
            k = (row["run_id"], row["name"])
            if k in seen:
                continue
            fmt = _format(row["name"])
            if fmt == "parquet":
                data: Any = pq.read_table(io.BytesIO(ucs.download_bytes_sync(target, row["path"])))
            else:
                data = ucs.download_from_gcs_sync(target, row["path"], format=fmt)  # type: ignore[arg-type]
            seen[k] = RunArtifact(row["run_id"], row["name"], data, list(row["days"] or []))
        arts = list(seen.values())
        return arts[0] if len(arts) == 1 else arts


def read_json_metadata(table: pa.Table, key: bytes) -> Any:
    """A JSON value stored in a table's schema metadata (None when absent)."""
    raw = (table.schema.metadata or {}).get(key)
    return json.loads(raw) if raw else None
