"""Read only the row groups and columns of a remote Parquet object that a time window needs.

Measured on this machine (see docs/storage.md): pyarrow's ``GcsFileSystem`` starts
an unranged download at each open and over-reads several times; the footer + column-chunk ranges
through google-cloud-storage move exactly what is needed. We therefore compute the byte ranges
ourselves from the footer, fetch them concurrently (real GCS has tens of ms per request), and hand
pyarrow a sparse in-memory file that holds just those ranges. The same code serves the local root,
so both backends report comparable byte counts.
"""

from __future__ import annotations

import bisect
import io
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backtest_pipeline.storage.footer_index import (
    FooterIndexError,
    find_index,
    parse_index,
    subset_footer,
)

FOOTER_GUESS = 64 * 1024
COALESCE_GAP = 1024  # measured: a wider gap pulls in unread columns (ts_init) and neighbours
MAX_PARALLEL = 8

RangeFetcher = Callable[[int, int], bytes]
# Many ranges of one object in one call, in order (a backend that can do better than one request
# per range, e.g. the local root reading through one file descriptor).
MultiRangeFetcher = Callable[[Sequence[tuple[int, int]]], list[bytes]]


class ParquetRangeError(ValueError):
    """The object is not a readable Parquet file (truncated, corrupt, wrong column)."""


class _SparseFile(io.RawIOBase):
    """A read-only file of a known size backed by the byte ranges fetched so far.

    A read outside the fetched ranges falls back to a ranged fetch (counted), so a footer layout
    we did not anticipate costs bytes, never correctness.
    """

    def __init__(self, size: int, fetch: RangeFetcher, counter: list[int]) -> None:
        super().__init__()
        self._size = size
        self._fetch = fetch
        self._counter = counter
        self._starts: list[int] = []
        self._chunks: list[bytes] = []
        self._pos = 0

    def add(self, start: int, data: bytes) -> None:
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._chunks.insert(i, data)

    def _lookup(self, start: int, n: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0:
            s, c = self._starts[i], self._chunks[i]
            if start + n <= s + len(c):
                return c[start - s : start - s + n]
        return None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._size + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        n = max(0, min(n, self._size - self._pos))
        if n == 0:
            return b""
        data = self._lookup(self._pos, n)
        if data is None:
            data = self._fetch(self._pos, self._pos + n)
            self._counter[0] += len(data)
            self.add(self._pos, data)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass
class Footer:
    """Parsed footer of one object version, cached so repeated reads pay for it once."""

    size: int
    metadata: pq.FileMetaData
    tail_start: int
    tail: bytes
    ts_min: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ts_max: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    has_stats: bool = False
    # Bytes of footer read beyond ``tail`` (the prefix and the row-group structs of a footer
    # assembled from its row-group index); 0 for a footer read whole.
    extra_bytes: int = 0

    @property
    def cost(self) -> int:
        """The bytes this footer took to read: what a read that needs it counts."""
        return len(self.tail) + self.extra_bytes


@dataclass
class RangeReadResult:
    """What a streaming read returned and what it cost."""

    table: pa.Table
    bytes_read: int
    object_size: int
    row_groups_read: int
    row_groups_total: int
    footer_bytes: int
    object_rows: int = -1  # rows in the whole object, from its footer (no extra read)
    # The object's key-value metadata (from the footer read anyway): e.g. a book's invalid periods.
    key_value_metadata: dict[bytes, bytes] | None = None


def _to_int_ns(value: object) -> int:
    if hasattr(value, "value"):  # pandas Timestamp
        return int(value.value)  # type: ignore[attr-defined]
    if hasattr(value, "timestamp") and not isinstance(value, int | float):
        import datetime as _dt

        assert isinstance(value, _dt.datetime)
        epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        v = value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        delta = v - epoch
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return int(value)  # type: ignore[call-overload]


def _fetch_tail(size: int, fetch: RangeFetcher, where: str) -> tuple[int, bytes, int]:
    """``(tail start, the object's last bytes, footer length)``, the magic and length checked."""
    if size < 12:
        raise ParquetRangeError(
            f"{where}: {size} bytes is too small to be a Parquet file (truncated or empty)"
        )
    tail_start = max(0, size - FOOTER_GUESS)
    tail = fetch(tail_start, size)
    if tail[-4:] != b"PAR1":
        raise ParquetRangeError(f"{where}: no Parquet magic at the end (truncated or not Parquet)")
    footer_len = struct.unpack("<I", tail[-8:-4])[0]
    if footer_len + 8 > size - 4:
        raise ParquetRangeError(f"{where}: footer length {footer_len} exceeds the object (corrupt)")
    return tail_start, tail, footer_len


def read_footer(
    size: int,
    fetch: RangeFetcher,
    where: str,
    timestamp_column: str,
    tail: tuple[int, bytes, int] | None = None,
) -> Footer:
    """The whole footer, parsed (``tail``: the object's last bytes when already fetched)."""
    tail_start, tail_bytes, footer_len = tail or _fetch_tail(size, fetch, where)
    return _whole_footer(size, fetch, where, timestamp_column, tail_start, tail_bytes, footer_len)


def _whole_footer(
    size: int,
    fetch: RangeFetcher,
    where: str,
    timestamp_column: str,
    tail_start: int,
    tail: bytes,
    footer_len: int,
) -> Footer:
    need = footer_len + 8
    if need > len(tail):
        tail_start = size - need
        tail = fetch(tail_start, size - len(tail)) + tail
    sparse = _SparseFile(size, fetch, [0])
    sparse.add(tail_start, tail)
    try:
        md = pq.ParquetFile(sparse).metadata
    except Exception as exc:
        raise ParquetRangeError(f"{where}: cannot parse the Parquet footer: {exc}") from exc
    footer = Footer(size=size, metadata=md, tail_start=tail_start, tail=tail)
    bounds = row_group_time_bounds(md, timestamp_column, where)
    if bounds is not None:
        footer.ts_min, footer.ts_max = bounds
        footer.has_stats = True
    return footer


def fetch_spans(
    spans: Sequence[tuple[int, int]],
    tail_start: int,
    fetch: RangeFetcher,
    fetch_many: MultiRangeFetcher | None,
) -> list[tuple[tuple[int, int], bytes]]:
    """The spans before ``tail_start`` (clipped there: the tail is held already), fetched.

    In one backend call where the backend offers it (the local root); otherwise one request a
    span, concurrently, because a remote store has tens of ms of latency per request.
    """
    to_fetch = [(s, min(e, tail_start)) for s, e in spans if s < tail_start]
    if fetch_many is not None and to_fetch:
        datas = fetch_many(to_fetch)
    elif len(to_fetch) > 1:
        datas = list(_executor().map(lambda se: fetch(se[0], se[1]), to_fetch))
    else:
        datas = [fetch(s, e) for s, e in to_fetch]
    return list(zip(to_fetch, datas, strict=True))


def read_footer_for_ranges(
    size: int,
    fetch: RangeFetcher,
    where: str,
    ranges: Sequence[tuple[int, int]],
    timestamp_column: str = "ts_event",
    fetch_many: MultiRangeFetcher | None = None,
) -> tuple[Footer, list[tuple[int, int]], bool]:
    """The footer a read of ``ranges`` with the row in force at each start needs.

    Returns ``(footer, the ranges to read, whether the footer is the whole one)``. The ranges to
    read are ``ranges`` plus :func:`prior_state_ranges`. With a row-group index
    (:mod:`footer_index`) the footer holds only the row groups those ranges touch, assembled
    from the object's own bytes; without one it is the whole footer, parsed as always.
    """
    tail_start, tail, footer_len = _fetch_tail(size, fetch, where)
    found = find_index(tail, where)
    footer_start = size - 8 - footer_len
    if found is None or tail_start + found[1] < footer_start:  # none, or not in the footer
        footer = _whole_footer(size, fetch, where, timestamp_column, tail_start, tail, footer_len)
        wanted = list(ranges)
        if footer.has_stats:
            wanted = merge_ranges(wanted + prior_state_ranges(footer.ts_min, footer.ts_max, ranges))
        return footer, wanted, True
    b64_start, b64_end = found
    if b64_start < 0:  # a long index: the rest of it lies before the fetched tail
        tail = fetch(tail_start + b64_start, tail_start) + tail
        tail_start += b64_start
        b64_end -= b64_start
        b64_start = 0
    index = parse_index(tail[b64_start:b64_end], tail[b64_end : b64_end + 16], where)
    starts = index.starts + footer_start
    if (
        index.list_at <= 0
        or index.starts[0] <= index.list_at
        or bool(np.any(np.diff(index.starts) <= 0))
        or index.starts[-1] > footer_len
    ):
        raise FooterIndexError(f"{where}: the row-group index does not match the footer")
    wanted = merge_ranges(list(ranges) + prior_state_ranges(index.ts_min, index.ts_max, ranges))
    keep = np.zeros(index.n, dtype=bool)
    for start, end in wanted:
        keep |= (index.ts_max >= start) & (index.ts_min < end)
    groups = np.flatnonzero(keep)
    # The footer's own bytes: its prefix, the chosen structs (neighbours in one range), and the
    # part after the list, which the tail holds unless the key-value metadata is very long.
    spans = [(footer_start, footer_start + index.list_at)]
    for g in groups.tolist():
        s, e = int(starts[g]), int(starts[g + 1])
        if spans[-1][1] == s and len(spans) > 1:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    spans.append((int(starts[-1]), size - 8))
    fetched_spans = fetch_spans(spans, tail_start, fetch, fetch_many)
    got = dict(fetched_spans)
    datas = [d for _span, d in fetched_spans]

    def span_bytes(s: int, e: int) -> bytes:
        head = got.get((s, min(e, tail_start)), b"") if s < tail_start else b""
        return head + (
            tail[max(s, tail_start) - tail_start : e - tail_start] if e > tail_start else b""
        )

    prefix = span_bytes(*spans[0])
    suffix = span_bytes(*spans[-1])
    structs: list[bytes] = []
    for s, e in spans[1:-1]:
        data = span_bytes(s, e)
        cuts = [int(c) - s for c in starts if s <= c <= e]
        structs += [data[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    try:
        md = subset_footer(prefix, structs, suffix)
    except Exception as exc:
        raise FooterIndexError(
            f"{where}: the footer assembled from the row-group index does not parse: {exc}"
        ) from exc
    if md.num_row_groups != len(groups) or any(
        md.row_group(i).num_rows != int(index.num_rows[g]) for i, g in enumerate(groups.tolist())
    ):
        raise FooterIndexError(f"{where}: the row-group index does not match the footer")
    footer = Footer(
        size=size,
        metadata=md,
        tail_start=tail_start,
        tail=tail,
        ts_min=index.ts_min[groups],
        ts_max=index.ts_max[groups],
        has_stats=True,
        extra_bytes=sum(len(d) for d in datas),
    )
    return footer, wanted, False


def row_group_time_bounds(
    md: pq.FileMetaData, timestamp_column: str, where: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row group (min, max) of the time column from the footer; None without statistics."""
    names = md.schema.names
    if timestamp_column not in names or not _is_time_type(_arrow_type(md, timestamp_column, where)):
        return None
    ci = names.index(timestamp_column)
    mins, maxs = [], []
    for rg in range(md.num_row_groups):
        st = md.row_group(rg).column(ci).statistics
        if st is None or not st.has_min_max:
            return None
        mins.append(_to_int_ns(st.min))
        maxs.append(_to_int_ns(st.max))
    return np.asarray(mins, dtype=np.int64), np.asarray(maxs, dtype=np.int64)


def prior_state_ranges(
    ts_min: np.ndarray, ts_max: np.ndarray, ranges: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Extra one-ns ranges that make ``include_prior`` reach the row in force at each start.

    ``include_prior`` finds the last row before a range only inside the row groups it fetches;
    when a range opens exactly on a row-group boundary that row is the last of the previous
    group. For state-carrying data (quotes, book snapshots) that row *is* the book when the
    window opens, so it is requested explicitly: ``[max of that group, +1)``, one group more.
    """
    extra: list[tuple[int, int]] = []
    if ts_min.size == 0:
        return extra
    for start, _end in ranges:
        g = int(np.searchsorted(ts_min, start, side="left")) - 1  # last group with a row < start
        if g >= 0 and ts_max[g] < start:
            extra.append((int(ts_max[g]), int(ts_max[g]) + 1))
    return extra


def _arrow_type(md: pq.FileMetaData, column: str, where: str) -> pa.DataType:
    try:
        return md.schema.to_arrow_schema().field(column).type
    except Exception as exc:  # an Arrow type this pyarrow cannot map
        raise ParquetRangeError(
            f"{where}: column {column!r} has an unreadable type: {exc}"
        ) from exc


def _is_time_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_timestamp(t)


def select_row_groups(footer: Footer, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """Row groups whose [min, max] overlaps any [start, end) range; all when stats are absent."""
    n = footer.metadata.num_row_groups
    if not footer.has_stats:
        return list(range(n))
    keep = np.zeros(n, dtype=bool)
    for start, end in ranges:
        keep |= (footer.ts_max >= start) & (footer.ts_min < end)
    return [int(i) for i in np.nonzero(keep)[0]]


def _chunk_ranges(
    md: pq.FileMetaData, row_groups: Sequence[int], col_idx: Sequence[int]
) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for rg in row_groups:
        g = md.row_group(rg)
        for ci in col_idx:
            c = g.column(ci)
            start = c.data_page_offset
            if (
                c.has_dictionary_page
                and c.dictionary_page_offset is not None
                and c.dictionary_page_offset > 0
            ):
                start = min(start, c.dictionary_page_offset)
            spans.append((start, start + c.total_compressed_size))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s - merged[-1][1] <= COALESCE_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="ucs-range")
        return _pool


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ranges as one: each row group is then fetched once."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _int64_values(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The values of an int64 column as one NumPy array, read from its buffers.

    Why not ``to_numpy()``: Arrow's conversion imports pandas (~0.4 s) the first time it runs
    in a process, and a process that never needs pandas otherwise (the Dagster steps that
    fetch tick slices) would pay it for this alone. Other types, or nulls: ``to_numpy``.
    """
    chunks = ts.chunks if isinstance(ts, pa.ChunkedArray) else [ts]
    if not pa.types.is_int64(ts.type) or any(c.null_count for c in chunks):
        return np.asarray(ts.to_numpy(), dtype=np.int64)
    parts = [
        np.frombuffer(c.buffers()[1], dtype=np.int64, count=len(c), offset=c.offset * 8)
        for c in chunks
        if len(c)
    ]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def mask_array(mask: np.ndarray) -> pa.BooleanArray:
    """A NumPy boolean mask as an Arrow array for ``Table.filter``, built from its bits.

    ``pa.array(mask)`` gives the same array but imports pandas on first use (see
    :func:`_int64_values`).
    """
    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def range_mask(
    ts: pa.ChunkedArray | pa.Array, ranges: Sequence[tuple[int, int]], include_prior: bool
) -> np.ndarray:
    """Rows inside any [start, end); with `include_prior`, also the last row before each start.

    The prior row is the state in force when a range opens (the last trade before a signal
    window): an engine fed only the window would otherwise price its first order off a book
    left over from an earlier window. It costs no I/O when it lies in a fetched row group.
    """
    values = _int64_values(ts)
    merged = merge_ranges(ranges)
    if (
        len(merged) == 1
        and values.size
        and values.min() >= merged[0][0]
        and values.max() < merged[0][1]
    ):
        return np.ones(values.size, dtype=bool)  # e.g. a whole day: every row, no prior row
    starts = np.fromiter((r[0] for r in merged), np.int64, len(merged))
    ends = np.fromiter((r[1] for r in merged), np.int64, len(merged))
    idx = np.searchsorted(starts, values, side="right") - 1
    mask = (idx >= 0) & (values < ends[np.maximum(idx, 0)])
    if include_prior and values.size and bool(np.all(values[1:] >= values[:-1])):
        prior = np.searchsorted(values, starts, side="left") - 1
        prior = prior[prior >= 0]
        mask[prior] = True
    return mask


def _dense_decode_ok(md: pq.FileMetaData) -> bool:
    """Whether Arrow reads exactly the column-chunk ranges we fetch (so a dense buffer is safe).

    Arrow reads ``[chunk start, + total_compressed_size)`` per column chunk, as
    :func:`_chunk_ranges` computes them, except for files of old parquet-mr writers
    (PARQUET-816), where it reads up to 100 bytes more; those keep the sparse file, which
    fetches whatever falls outside the ranges.
    """
    return not (md.created_by or "").lower().startswith("parquet-mr")


def _dense_source(footer: Footer, fetched: list[tuple[tuple[int, int], bytes]]) -> pa.BufferReader:
    """The fetched ranges and the footer tail at their offsets in an object-sized zero buffer.

    Arrow then decodes without calling back into Python: through :class:`_SparseFile`, every
    column chunk was a Python ``read`` needing the GIL (about 10,000 per whole day), each one
    forcing the engine thread, which runs meanwhile, to hand the GIL over. ``np.zeros`` maps
    untouched pages lazily, so the buffer costs memory only for the bytes fetched.
    """
    buf = np.zeros(footer.size, dtype=np.uint8)
    for (start, _end), data in fetched:
        buf[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
    buf[footer.tail_start : footer.tail_start + len(footer.tail)] = np.frombuffer(
        footer.tail, dtype=np.uint8
    )
    return pa.BufferReader(pa.py_buffer(buf))


def read_ranges(
    footer: Footer,
    fetch: RangeFetcher,
    where: str,
    *,
    ranges: Sequence[tuple[int, int]] | None,
    timestamp_column: str,
    columns: Sequence[str] | None,
    row_groups: Sequence[int] | None = None,
    filter_rows: bool = True,
    include_prior: bool = False,
    fetch_many: MultiRangeFetcher | None = None,
) -> RangeReadResult:
    """Fetch the selected row groups' column chunks, decode, and filter exactly.

    With ``fetch_many`` all chunks are fetched in one call (the local root: sequential
    ``pread``s); otherwise each range is a ``fetch`` of its own, run concurrently because a
    remote store has tens of ms of latency per request.
    """
    md = footer.metadata
    names = md.schema.names
    wanted = list(columns) if columns is not None else list(names)
    if ranges is not None and filter_rows and timestamp_column not in wanted:
        read_cols = [*wanted, timestamp_column]
    else:
        read_cols = wanted
    missing = [c for c in read_cols if c not in names]
    if missing:
        raise ParquetRangeError(f"{where}: column(s) {missing} not in the object (has {names})")
    if ranges is not None and filter_rows:
        ts_type = _arrow_type(md, timestamp_column, where)
        if not _is_time_type(ts_type):
            raise ParquetRangeError(
                f"{where}: column {timestamp_column!r}: expected int64 nanoseconds or timestamp[ns], "
                f"found {ts_type}; cannot select a time range"
            )
    if row_groups is None:
        rgs = (
            select_row_groups(footer, ranges)
            if ranges is not None
            else list(range(md.num_row_groups))
        )
    else:
        bad = [r for r in row_groups if not 0 <= r < md.num_row_groups]
        if bad:
            raise ParquetRangeError(
                f"{where}: row group(s) {bad} out of range 0..{md.num_row_groups - 1}"
            )
        rgs = list(row_groups)
    counter = [0]
    col_idx = [names.index(c) for c in read_cols]
    spans = _chunk_ranges(md, rgs, col_idx)
    # Bytes already held in the cached footer tail are not fetched (or counted) again.
    tail_start = footer.tail_start
    fetched = fetch_spans(spans, tail_start, fetch, fetch_many)
    for _span, d in fetched:
        counter[0] += len(d)
    source: pa.NativeFile | _SparseFile
    if _dense_decode_ok(md):
        source = _dense_source(footer, fetched)
    else:
        sparse = _SparseFile(footer.size, fetch, counter)
        sparse.add(footer.tail_start, footer.tail)
        for (s, e), d in fetched:
            if e == tail_start:
                d = d + footer.tail  # one contiguous chunk, so reads across the boundary are served
            sparse.add(s, d)
        source = sparse
    if not rgs:
        schema = md.schema.to_arrow_schema()
        table = schema.empty_table().select(read_cols)
    else:
        try:
            # One decoding thread: reads run beside an engine that needs a core of its own. On
            # the 2-core machine Arrow's pool decoded a whole day ~12 % faster, but a Python
            # loop standing in for the engine lost ~0.8 s over 3 such days against ~0.5 s.
            table = pq.ParquetFile(
                source, metadata=md, page_checksum_verification=True, pre_buffer=False
            ).read_row_groups(rgs, columns=read_cols, use_threads=False)
        except Exception as exc:
            raise ParquetRangeError(
                f"{where}: corrupt Parquet data in row groups {rgs[:5]}…: {exc}"
            ) from exc
    if ranges is not None and filter_rows and table.num_rows:
        ts = table.column(timestamp_column)
        if pa.types.is_timestamp(ts.type):
            # Any unit: as ns first, else a timestamp[us] column compares µs with ns bounds.
            ts = pc.cast(pc.cast(ts, pa.timestamp("ns", ts.type.tz)), pa.int64())
        mask = range_mask(ts, ranges, include_prior)
        if not mask.all():  # a whole-day range keeps every row: no copy
            table = table.filter(mask_array(mask))
    if read_cols != wanted:
        table = table.select(wanted)
    return RangeReadResult(
        table=table,
        bytes_read=counter[0],
        object_size=footer.size,
        row_groups_read=len(rgs),
        row_groups_total=md.num_row_groups,
        footer_bytes=footer.cost,
        object_rows=md.num_rows,
        key_value_metadata=md.metadata,
    )
