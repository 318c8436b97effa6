"""UCS — Unified Cloud Services: the one storage interface of the product (docs/storage.md).

Everything that touches storage goes through :class:`UnifiedCloudService`: readers, the backtest,
the CLI and the Dagster IO manager. The root decides the backend (`gs://` → GCS or its emulator;
a local directory otherwise), so the same code runs on a laptop and against a bucket.

Methods are async (for callers that overlap I/O) with ``*_sync`` twins; the async versions run
the blocking client in a worker thread, which is what google-cloud-storage needs anyway.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backtest_pipeline.layout import CloudTarget
from backtest_pipeline.storage.base import (
    Backend,
    ObjectInfo,
    ObjectNotFoundError,
    RetryPolicy,
    StorageError,
)
from backtest_pipeline.storage.footer_index import INDEX_KEY
from backtest_pipeline.storage.local import LocalBackend
from backtest_pipeline.storage.parquet_ranges import (
    Footer,
    ParquetRangeError,
    RangeReadResult,
    mask_array,
    merge_ranges,
    prior_state_ranges,
    range_mask,
    read_footer,
    read_footer_for_ranges,
    read_ranges,
)

__all__ = [
    "CloudTarget",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ParquetRangeError",
    "StorageError",
    "StreamingResult",
    "UnifiedCloudService",
    "resolve_root",
]

DEFAULT_ROOT = "./data"
FOOTER_CACHE_SIZE = 2  # a run reads a day file twice at most (rows + metadata), one day ahead
Format = Literal["json", "parquet", "text", "html", "bytes"]

CONTENT_TYPES = {
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
    "text": "text/plain; charset=utf-8",
    "html": "text/html; charset=utf-8",  # a run's report opens in the browser, not as a download
    "bytes": "application/octet-stream",
}


@dataclass
class StreamingResult(RangeReadResult):
    """A byte-range read: the rows, and what it cost.

    `bytes_read` is what the read needs from the object — its Parquet footer plus the column
    chunks of the selected row groups — whether or not the footer was already cached: it depends
    only on the object and the request, so a re-run reports the same figures (summary.json must
    not change between identical runs). `bytes_fetched` is what this call actually moved (the
    footer only when it was not cached).
    """

    generation: str = ""
    uri: str = ""
    bytes_fetched: int = 0

    def to_polars(self) -> pl.DataFrame:
        return pl.from_arrow(self.table)  # type: ignore[return-value]


def resolve_root(root: str | os.PathLike[str] | None = None) -> str:
    """`--root` beats `BACKTEST_STORAGE_ROOT` beats `./data`."""
    value = (
        str(root) if root is not None else os.environ.get("BACKTEST_STORAGE_ROOT") or DEFAULT_ROOT
    )
    return value


def _is_gcs(backend: Backend) -> bool:
    """``backend`` is a GCSBackend (if its module was never imported, none exists)."""
    gcs = sys.modules.get("backtest_pipeline.storage.gcs")
    return gcs is not None and isinstance(backend, gcs.GCSBackend)


def _backend_for(root: str) -> Backend:
    if root.startswith("gs://"):
        rest = root[len("gs://") :].strip("/")
        if rest:
            raise StorageError(
                f"storage root {root!r}: a gs:// root names no bucket (buckets come from the "
                "*_GCS_BUCKET variables); use plain 'gs://'"
            )
        # Imported here: google-cloud-storage and requests cost ~0.2 s of imports, which a
        # process on a local root (the CLI, a local Dagster run) never needs.
        from backtest_pipeline.storage.gcs import GCSBackend

        return GCSBackend()
    if root.startswith("file://"):
        path = root[len("file://") :]
        if not path.startswith("/"):
            raise StorageError(
                f"storage root {root!r}: file:// roots must be absolute (file:///abs/path)"
            )
        return LocalBackend(Path(path))
    if "://" in root:
        raise StorageError(
            f"storage root {root!r}: unsupported scheme (use gs://, file:///abs or a path)"
        )
    return LocalBackend(Path(root))


def _to_parquet_bytes(data: Any, **write_options: Any) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, pl.DataFrame):
        table = data.to_arrow()
    elif isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    else:
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            pd = None  # type: ignore[assignment]
        if pd is not None and isinstance(data, pd.DataFrame):
            table = pa.Table.from_pandas(data, preserve_index=False)
        else:
            raise TypeError(f"cannot write {type(data).__name__} as parquet")
    # The bytes must depend on the rows alone, not on how memory happens to hold them: Parquet
    # pages (and where a dictionary falls back to plain) follow the Arrow chunks, which differ
    # between a one-engine run and the same run stitched from time shards.
    table = table.combine_chunks()
    buf = io.BytesIO()
    opts = {"compression": "zstd", "write_page_checksum": True, **write_options}
    pq.write_table(table, buf, **opts)
    return buf.getvalue()


def _encode(data: Any, fmt: Format, write_options: dict[str, Any]) -> bytes:
    if fmt == "parquet":
        return _to_parquet_bytes(data, **write_options)
    if fmt == "json":
        if isinstance(data, bytes | str):
            json.loads(data)  # refuse to store something that is not JSON under a .json name
            return data.encode() if isinstance(data, str) else data
        return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()
    if fmt in ("text", "html"):
        return data.encode() if isinstance(data, str) else bytes(data)
    if fmt == "bytes":
        return bytes(data)
    raise ValueError(f"unknown format {fmt!r}; expected json, parquet, text, html or bytes")


def _in_thread[**P, R](fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The async form of a blocking method, with its signature and docstring."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return run


class UnifiedCloudService:
    """The storage interface. One instance per process is enough; it is thread-safe."""

    def __init__(
        self, root: str | os.PathLike[str] | None = None, retry: RetryPolicy | None = None
    ) -> None:
        self.root = resolve_root(root)
        self.backend: Backend = _backend_for(self.root)
        self.retry = retry or RetryPolicy()
        # LRU of parsed footers. Small on purpose: a run reads each day file once or twice, and a
        # decoded footer of a 2 M-row day holds several MB of native memory; an unbounded cache
        # made a 30-day run's peak RSS grow with its length (measured: 1.51× the 3-day peak).
        self._footers: OrderedDict[tuple[str, str, str], Footer] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UnifiedCloudService(root={self.root!r}, backend={self.backend.name})"

    @property
    def is_gcs(self) -> bool:
        return self.backend.name == "gcs"

    def uri(self, target: CloudTarget, gcs_path: str) -> str:
        return self.backend.uri(target.gcs_bucket, gcs_path)

    # ---- sync API ---------------------------------------------------------------------------

    def stat_sync(self, target: CloudTarget, gcs_path: str) -> ObjectInfo:
        b = target.gcs_bucket
        return self.retry.call(lambda: self.backend.stat(b, gcs_path), self.uri(target, gcs_path))

    def exists_sync(self, target: CloudTarget, gcs_path: str) -> bool:
        b = target.gcs_bucket
        return self.retry.call(lambda: self.backend.exists(b, gcs_path), self.uri(target, gcs_path))

    def download_bytes_sync(self, target: CloudTarget, gcs_path: str) -> bytes:
        b = target.gcs_bucket
        return self.retry.call(lambda: self.backend.read(b, gcs_path), self.uri(target, gcs_path))

    def download_from_gcs_sync(
        self, target: CloudTarget, gcs_path: str, format: Format | None = None
    ) -> Any:
        """Whole object: Parquet → polars DataFrame, JSON → object, text → str, else bytes."""
        fmt = format or _format_of(gcs_path)
        data = self.download_bytes_sync(target, gcs_path)
        where = self.uri(target, gcs_path)
        if fmt == "parquet":
            if not data:
                raise ParquetRangeError(
                    f"{where}: the object is empty (0 bytes), not a Parquet file"
                )
            try:
                return pl.from_arrow(
                    pq.read_table(io.BytesIO(data), page_checksum_verification=True)
                )
            except Exception as exc:
                raise ParquetRangeError(f"{where}: not a readable Parquet file: {exc}") from exc
        if fmt == "json":
            try:
                return json.loads(data)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON: {exc}") from exc
        if fmt in ("text", "html"):
            return data.decode()
        return data

    def _footer(
        self, target: CloudTarget, gcs_path: str, info: ObjectInfo, ts_col: str
    ) -> tuple[Footer, bool]:
        key = (target.gcs_bucket, gcs_path, info.generation)
        with self._lock:
            cached = self._footers.get(key)
            if cached is not None:
                self._footers.move_to_end(key)
        if cached is not None:
            return cached, False
        footer = read_footer(
            info.size, self._fetcher(target, gcs_path, info), self.uri(target, gcs_path), ts_col
        )
        with self._lock:
            self._footers[key] = footer
            while len(self._footers) > FOOTER_CACHE_SIZE:
                self._footers.popitem(last=False)
        return footer, True

    def _fetch_many(
        self, target: CloudTarget, gcs_path: str
    ) -> Callable[[Sequence[tuple[int, int]]], list[bytes]] | None:
        """All ranges of a read in one backend call where the backend offers it (local root).

        GCS keeps one request per range, issued concurrently by the range reader (and retried
        each on its own): there, latency per request dominates, not Python time.
        """
        backend = self.backend
        if not isinstance(backend, LocalBackend):
            return None
        b, where = target.gcs_bucket, self.uri(target, gcs_path)

        def fetch_many(spans: Sequence[tuple[int, int]]) -> list[bytes]:
            return self.retry.call(lambda: backend.read_ranges(b, gcs_path, spans), where)

        return fetch_many

    def _fetcher(self, target: CloudTarget, gcs_path: str, info: ObjectInfo):  # type: ignore[no-untyped-def]
        b, where = target.gcs_bucket, self.uri(target, gcs_path)
        backend = self.backend
        if _is_gcs(backend):
            gen = info.generation

            def fetch(start: int, end: int) -> bytes:
                return self.retry.call(
                    lambda: backend.read_range(b, gcs_path, start, end, gen), where
                )
        else:

            def fetch(start: int, end: int) -> bytes:
                return self.retry.call(lambda: backend.read_range(b, gcs_path, start, end), where)

        return fetch

    def download_from_gcs_streaming_sync(
        self,
        target: CloudTarget,
        gcs_path: str,
        timestamp_range: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
        timestamp_column: str = "ts_event",
        columns: Sequence[str] | None = None,
        use_byte_range: bool = True,
        include_prior: bool = False,
        prior_state: bool = False,
    ) -> StreamingResult:
        """Rows of `gcs_path` whose `timestamp_column` lies in any [start, end) range.

        `include_prior` also returns, per range, the last row before its start when that row is
        in a fetched row group (the state in force when the range opens). `prior_state` returns
        that row wherever it lies (state-carrying data: quotes, book snapshots), fetching one
        row group more where a range opens on a group boundary; with a byte range it reads only
        the part of the footer those row groups need when the object has a row-group index.

        With `use_byte_range`, only the footer (cached per object generation) and the column
        chunks of overlapping row groups are fetched; `bytes_read` says what that cost. Without
        it the whole object is downloaded (the seed system's way, kept for comparison).
        """
        ranges = _normalise_ranges(timestamp_range)
        where = self.uri(target, gcs_path)
        info = self.stat_sync(target, gcs_path)
        if not use_byte_range:
            data = self.download_bytes_sync(target, gcs_path)
            footer = read_footer(len(data), lambda s, e: data[s:e], where, timestamp_column)
            res = read_ranges(
                footer,
                lambda s, e: data[s:e],
                where,
                ranges=ranges,
                timestamp_column=timestamp_column,
                columns=columns,
                include_prior=include_prior,
            )
            return StreamingResult(
                **{**res.__dict__, "bytes_read": len(data)},
                generation=info.generation,
                uri=where,
                bytes_fetched=len(data),
            )
        if prior_state and ranges is not None:
            return self._state_ranges(
                target, gcs_path, info, ranges, timestamp_column, columns, where
            )
        footer, fresh = self._footer(target, gcs_path, info, timestamp_column)
        res = read_ranges(
            footer,
            self._fetcher(target, gcs_path, info),
            where,
            ranges=ranges,
            timestamp_column=timestamp_column,
            columns=columns,
            include_prior=include_prior,
            fetch_many=self._fetch_many(target, gcs_path),
        )
        return _costed(res, footer, fresh, info, where)

    def _state_ranges(
        self,
        target: CloudTarget,
        gcs_path: str,
        info: ObjectInfo,
        ranges: list[tuple[int, int]],
        timestamp_column: str,
        columns: Sequence[str] | None,
        where: str,
    ) -> StreamingResult:
        """``prior_state`` reads: the rows in ``ranges`` and the row in force at each start.

        A whole footer already cached serves the read when the object has no row-group index
        (its cost is the whole footer either way); otherwise the footer is read for these ranges
        from the index, so ``bytes_read`` never depends on what an earlier read cached.
        """
        fetch = self._fetcher(target, gcs_path, info)
        fetch_many = self._fetch_many(target, gcs_path)
        key = (target.gcs_bucket, gcs_path, info.generation)
        with self._lock:
            cached = self._footers.get(key)
        if cached is not None and INDEX_KEY.encode() in (cached.metadata.metadata or {}):
            cached = None
        if cached is not None:
            footer, fresh = cached, False
            wanted = list(ranges)
            if footer.has_stats:
                wanted = merge_ranges(
                    wanted + prior_state_ranges(footer.ts_min, footer.ts_max, ranges)
                )
        else:
            footer, wanted, whole = read_footer_for_ranges(
                info.size, fetch, where, ranges, timestamp_column, fetch_many
            )
            fresh = True
            if whole:
                with self._lock:
                    self._footers[key] = footer
                    while len(self._footers) > FOOTER_CACHE_SIZE:
                        self._footers.popitem(last=False)
        res = read_ranges(
            footer,
            fetch,
            where,
            ranges=wanted,
            timestamp_column=timestamp_column,
            columns=columns,
            include_prior=True,
            fetch_many=fetch_many,
        )
        if wanted != merge_ranges(ranges) and res.table.num_rows:
            # What the extra ranges brought beyond the row in force is not asked for.
            ts = res.table.column(timestamp_column)
            if pa.types.is_timestamp(ts.type):
                ts = pc.cast(pc.cast(ts, pa.timestamp("ns", ts.type.tz)), pa.int64())
            res.table = res.table.filter(mask_array(range_mask(ts, ranges, True)))
        return _costed(res, footer, fresh, info, where)

    def read_parquet_sync(
        self,
        target: CloudTarget,
        gcs_path: str,
        row_groups: Sequence[int] | None = None,
        columns: Sequence[str] | None = None,
    ) -> StreamingResult:
        """Chosen row groups and columns only, by ranged reads (footer cached)."""
        where = self.uri(target, gcs_path)
        info = self.stat_sync(target, gcs_path)
        footer, fresh = self._footer(target, gcs_path, info, "ts_event")
        res = read_ranges(
            footer,
            self._fetcher(target, gcs_path, info),
            where,
            ranges=None,
            timestamp_column="ts_event",
            columns=columns,
            row_groups=row_groups,
            fetch_many=self._fetch_many(target, gcs_path),
        )
        return _costed(res, footer, fresh, info, where)

    def parquet_metadata_sync(self, target: CloudTarget, gcs_path: str) -> pq.FileMetaData:
        info = self.stat_sync(target, gcs_path)
        return self._footer(target, gcs_path, info, "ts_event")[0].metadata

    def upload_to_gcs_sync(
        self,
        target: CloudTarget,
        gcs_path: str,
        data: Any,
        format: Format | None = None,
        **write_options: Any,
    ) -> ObjectInfo:
        """Atomic from a reader's view; retried as a whole on transient errors."""
        fmt = format or _format_of(gcs_path)
        payload = _encode(data, fmt, write_options)
        b = target.gcs_bucket
        return self.retry.call(
            lambda: self.backend.write(b, gcs_path, payload, CONTENT_TYPES[fmt]),
            self.uri(target, gcs_path),
        )

    def upload_file_sync(
        self, target: CloudTarget, gcs_path: str, src: Path, format: Format | None = None
    ) -> ObjectInfo:
        """The object from a local file, streamed rather than held in memory (large logs).

        The bytes are stored as they are in ``src``; atomic and retried as ``upload_to_gcs_sync``.
        """
        fmt = format or _format_of(gcs_path)
        b = target.gcs_bucket
        return self.retry.call(
            lambda: self.backend.write_file(b, gcs_path, src, CONTENT_TYPES[fmt]),
            self.uri(target, gcs_path),
        )

    def list_files_sync(self, target: CloudTarget, prefix: str = "") -> list[str]:
        b = target.gcs_bucket
        return self.retry.call(lambda: self.backend.list(b, prefix), self.uri(target, prefix))

    def delete_sync(self, target: CloudTarget, gcs_path: str) -> None:
        b = target.gcs_bucket
        self.retry.call(lambda: self.backend.delete(b, gcs_path), self.uri(target, gcs_path))

    # ---- async API --------------------------------------------------------------------------
    # Each is its sync twin run in a worker thread: the storage clients block, and one
    # implementation per operation keeps the two APIs from drifting apart.

    download_from_gcs = _in_thread(download_from_gcs_sync)
    download_from_gcs_streaming = _in_thread(download_from_gcs_streaming_sync)
    upload_to_gcs = _in_thread(upload_to_gcs_sync)
    list_files = _in_thread(list_files_sync)
    read_parquet = _in_thread(read_parquet_sync)
    stat = _in_thread(stat_sync)
    exists = _in_thread(exists_sync)
    delete = _in_thread(delete_sync)


def _costed(
    res: RangeReadResult, footer: Footer, fresh: bool, info: ObjectInfo, where: str
) -> StreamingResult:
    """The read's cost: footer + chunks always (deterministic); the footer fetched only if fresh."""
    return StreamingResult(
        **{**res.__dict__, "bytes_read": res.bytes_read + footer.cost},
        generation=info.generation,
        uri=where,
        bytes_fetched=res.bytes_read + (footer.cost if fresh else 0),
    )


def _format_of(path: str) -> Format:
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(".json"):
        return "json"
    if path.endswith((".log", ".txt", ".csv", ".yaml", ".md")):
        return "text"
    if path.endswith(".html"):
        return "html"
    return "bytes"


def _normalise_ranges(
    timestamp_range: tuple[int, int] | Sequence[tuple[int, int]] | None,
) -> list[tuple[int, int]] | None:
    if timestamp_range is None:
        return None
    seq = list(timestamp_range)
    if len(seq) == 2 and all(
        isinstance(v, int) or hasattr(v, "__int__") and not isinstance(v, tuple | list) for v in seq
    ):
        seq = [tuple(seq)]  # type: ignore[list-item]
    out: list[tuple[int, int]] = []
    for r in seq:
        start, end = int(r[0]), int(r[1])  # type: ignore[index]
        if end < start:
            raise ValueError(f"timestamp range ({start}, {end}) ends before it starts")
        out.append((start, end))
    return out
