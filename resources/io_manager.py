"""The one IO manager of the code location, built on UCS (local directory or GCS alike).

Why not Dagster's stock UPath/GCS pickle managers: they refuse an output that covers several
partitions, and a range of days materialized in one run is exactly that. This manager

* stores a per-day value (``dict[partition_key, table]``) as one Parquet object per day at
  ``layout.asset_path(asset, f"{scope}.{day}")`` — a range output is split per partition key, and a
  range input is the dict of the days asked for;
* stores a :class:`RunArtifact` (a backtest result object that belongs to a run, not to a day) at
  its exact results path of docs/storage.md (``backtest_results/{run_id}/orders.parquet`` …), then
  writes one small pointer object per day of the run, so that any day of the range leads back to
  the run that covered it;
* writes through UCS only, so every object is atomic (absent or whole), and a pointer is written
  after the object it points to.

``scope`` is the run's configuration name: two configurations materializing the same day keep
separate intermediate objects (their slices differ by strategy and intervals).
"""

import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManager, InputContext, OutputContext

from backtest_pipeline import layout
from backtest_pipeline.data import schemas
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.ucs import UnifiedCloudService
from resources.settings import BacktestSettings
from resources.ucs_resource import UCSResource

POINTER_KEY = b"backtest.pointer"
#: A run object's per-day pointer: which object of which run covers the day.
POINTER_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("path", pa.string()),
        ("start", pa.string()),
        ("end", pa.string()),
        ("days", pa.list_(pa.string())),
        ("config_name", pa.string()),
    ]
)
INPUTS_KEY = b"backtest.inputs"  # read records a stage attaches to its table (run/stages.py)
RUN_OBJECTS = ResultWriter.OBJECTS


@dataclass
class RunArtifact:
    """One object of a backtest run: where it lives is decided by ``run_id`` and ``name``.

    ``data``: an Arrow table / polars frame for ``*.parquet``, a JSON-able dict for ``*.json``,
    a string for ``execution.log``. ``days`` are the UTC days the run covered.
    ``stored``: the object is already at its path (the backtest wrote it), so the IO manager only
    writes the per-day pointers; ``data`` may then be None. Rewriting a result the backtest
    just wrote would cost a decode and an encode per object and could only make it differ.
    """

    run_id: str
    name: str
    data: Any
    days: list[str] = field(default_factory=list)
    stored: bool = False

    def path(self) -> str:
        return artifact_path(self.run_id, self.name)


def artifact_path(run_id: str, name: str) -> str:
    """Where a run's object lives: the library's writer decides, so both agree by construction."""
    return ResultWriter.path_of(run_id, name)


def _format(name: str) -> str:
    if name.endswith(".parquet"):
        return "parquet"
    return "json" if name.endswith(".json") else "text"


def _as_arrow(value: Any, what: str) -> pa.Table:
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pl.DataFrame):
        return value.to_arrow()
    raise TypeError(
        f"{what}: expected a pyarrow Table or polars DataFrame, got {type(value).__name__}"
    )


def _parquet_bytes(table: pa.Table) -> bytes:
    # Written here (not by UCS' encoder) so the schema metadata survives: tick_slices carry
    # their read statistics there. No dictionary pages: a day of tick slices is mostly distinct
    # trade ids and times, for which pyarrow builds a dictionary only to drop it (40 % of the
    # write, on the Dagster run's critical path); zstd alone stores them smaller.
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=False)
    return buf.getvalue()


#: ``{partition_key: pa.Table}`` as asset annotation. Bare ``Mapping`` on purpose: Dagster turns
#: ``Mapping[str, X]`` into a ``Dict`` type whose check refuses a lazy mapping.
DayTables = Mapping


class LazyDays(Mapping[str, Any]):
    """``{partition_key: value}`` whose values are produced on access, one at a time.

    Used both ways: the IO manager loads per-day inputs lazily, and an asset may return one so
    that each day is computed only when the IO manager writes it. Nothing is cached.
    ``locate``: where a stored day lives (its path in the results bucket), for a step that hands
    the object to another process by reference instead of loading it here. ``on_stored``: told
    ``(key, path)`` by the IO manager as soon as a day of an output is stored, so that the step
    can hand that day on by reference before the next one is even produced.
    """

    def __init__(
        self,
        keys: list[str],
        produce: Callable[[str], Any],
        locate: Callable[[str], str] | None = None,
        on_stored: Callable[[str, str], None] | None = None,
    ) -> None:
        self._keys = list(keys)
        self._produce = produce
        self._locate = locate
        self._on_stored = on_stored

    def stored(self, key: str, path: str) -> None:
        """The IO manager has stored day ``key`` of this output at ``path`` (results bucket)."""
        if self._on_stored is not None:
            self._on_stored(key, path)

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        return self._produce(key)

    def location(self, key: str) -> str | None:
        """The stored object of ``key`` (results-bucket path), or None if not a stored value."""
        if key not in self._keys:
            raise KeyError(key)
        return self._locate(key) if self._locate else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"LazyDays({self._keys[:3]}{'…' if len(self._keys) > 3 else ''})"


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
        return day_object_path(self.settings.scope, asset, partition_key)

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
        rows = read = available = 0
        for key in keys:  # one day at a time: a LazyDays output is computed as it is written
            table = _as_arrow(values[key], f"asset {asset} partition {key}")
            rows += table.num_rows
            for rec in read_json_metadata(table, INPUTS_KEY) or []:
                read += int(rec.get("bytes_read", 0))
                available += int(rec.get("bytes_total", 0))
            path = self.day_path(asset, key)
            ucs.upload_to_gcs_sync(target, path, _parquet_bytes(table), format="bytes")
            del table
            if isinstance(obj, LazyDays):
                obj.stored(key, path)
        context.add_output_metadata(
            {
                "dagster/row_count": rows,
                "path": ucs.uri(target, self.day_path(asset, keys[-1])),
                "partitions_written": len(keys),
                **({"bytes_read": read, "bytes_available": available} if available else {}),
            }
        )

    def _store_artifact(
        self, ucs: UnifiedCloudService, asset: str, keys: list[str | None], art: RunArtifact
    ) -> None:
        if art.name not in RUN_OBJECTS:
            raise ValueError(f"{art.name!r} is not a run object; expected one of {RUN_OBJECTS}")
        target = layout.target("results")
        fmt = _format(art.name)
        if art.stored:  # written by the backtest: it must be there before a pointer names it
            if not ucs.exists_sync(target, art.path()):
                raise FileNotFoundError(
                    f"{ucs.uri(target, art.path())} does not exist; run {art.run_id} did not "
                    f"write {art.name}"
                )
        else:
            data = _as_arrow(art.data, art.name) if fmt == "parquet" else art.data
            ucs.upload_to_gcs_sync(target, art.path(), data, format=fmt)  # the object first …
        days = art.days or [k for k in keys if k is not None]
        # Through Polars: ``pa.table`` of Python values would make pyarrow import pandas
        # (~0.3 s) in the Dagster process, right after the backtest step's engine.
        row = pl.DataFrame(
            {
                "run_id": [art.run_id],
                "name": [art.name],
                "path": [art.path()],
                "start": [min(days) if days else None],
                "end": [max(days) if days else None],
                "days": [list(days)],
                "config_name": [self.settings.scope],
            },
            schema=schemas.empty_frame(POINTER_SCHEMA).schema,
        )
        pointer = schemas.to_arrow(row, POINTER_SCHEMA).replace_schema_metadata({POINTER_KEY: b"1"})
        payload = _parquet_bytes(pointer)
        for key in keys:  # … then one pointer per day it covers
            ucs.upload_to_gcs_sync(target, self.day_path(asset, key), payload, format="bytes")

    # ---- input ------------------------------------------------------------------------------

    def load_input(self, context: InputContext) -> Any:
        """A per-day asset loads as a lazy ``{day: table}`` (one day in memory at a time, so a
        five-year range does not hold five years of slices); run objects load as RunArtifact(s)."""
        asset = self._asset_name(context)
        keys = self._partition_keys(context)
        # Pointer or data? The first day's schema says; its data pages are not decoded here (a
        # day of tick slices would be decoded twice: now and when the step reads it).
        first = pq.ParquetFile(io.BytesIO(self._read_day_bytes(asset, keys[0])))
        if (first.schema_arrow.metadata or {}).get(POINTER_KEY):
            pointers = [first.read(), *(self._read_day(asset, k) for k in keys[1:])]
            return self._load_artifacts(self._client(), pointers)
        if not context.has_asset_partitions:
            return first.read()
        return LazyDays(
            [k for k in keys if k is not None],
            lambda k: self._read_day(asset, k),
            locate=lambda k: self.day_path(asset, k),
        )

    def _read_day_bytes(self, asset: str, key: str | None) -> bytes:
        ucs, target = self._client(), layout.target("results")
        path = self.day_path(asset, key)
        try:
            return ucs.download_bytes_sync(target, path)
        except ObjectNotFoundError as exc:
            raise FileNotFoundError(
                f"asset {asset} partition {key} of configuration {self.settings.scope!r} is "
                f"not materialized ({ucs.uri(target, path)} does not exist)"
            ) from exc

    def _read_day(self, asset: str, key: str | None) -> pa.Table:
        return read_parquet_bytes(self._read_day_bytes(asset, key))

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
                data: Any = read_parquet_bytes(ucs.download_bytes_sync(target, row["path"]))
            else:
                data = ucs.download_from_gcs_sync(target, row["path"], format=fmt)  # type: ignore[arg-type]
            seen[k] = RunArtifact(row["run_id"], row["name"], data, list(row["days"] or []))
        arts = list(seen.values())
        return arts[0] if len(arts) == 1 else arts


def day_object_path(scope: str, asset: str, partition_key: str | None) -> str:
    """Where this IO manager stores ``asset``'s value of a day for configuration ``scope``.

    Public so that a step can name a stored input of a later step (the backtest started ahead
    reads the day's ``funding_rates``, which is no input of the step that starts it).
    """
    return layout.asset_path(asset, f"{scope}.{partition_key or 'all'}")


def read_parquet_bytes(data: bytes) -> pa.Table:
    """A whole Parquet object as a table, without ``pq.read_table``.

    ``pq.read_table`` goes through ``pyarrow.dataset``, whose import pulls in pandas (~1 s here
    without cached bytecode) in a process that otherwise never needs it; a single in-memory file
    reads the same through ``ParquetFile``.
    """
    return pq.ParquetFile(io.BytesIO(data)).read()


def read_json_metadata(table: pa.Table, key: bytes) -> Any:
    """A JSON value stored in a table's schema metadata (None when absent)."""
    raw = (table.schema.metadata or {}).get(key)
    return json.loads(raw) if raw else None
