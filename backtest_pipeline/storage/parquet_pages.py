"""Page-granular reads of quote and book files: a signal window costs its pages, not row groups.

Why: a book row is 40 numbers (~90 bytes compressed), so the row groups that keep a window's
over-read small would carry a footer of ~60 bytes per column chunk, read whole by every run
(2.2 MB a day at 500 rows per group, and still 30 % of the file read for 10 % of the day). A
Parquet *page* costs nothing in the footer. The writer therefore makes large row groups of small
pages that hold the same rows in every column (``max_rows_per_page``), and records each page's
``ts_event`` bounds and its size in every column in one compressed footer key
(:data:`PAGES_KEY`, ~1–2 bytes a page and column). The reader selects the pages a window
overlaps, fetches only those, and hands pyarrow a footer of its own that describes each run of
consecutive pages as a row group at its original offsets. Pages are self-contained (no
dictionary page, ``DELTA_BINARY_PACKED`` times restart per page), so pyarrow decodes them as
written: the rows returned are exactly those of the whole-file read.

Any file without the key, or whose key does not match its footer, is read by row groups as
before. The footer encoding (Thrift compact protocol) is implemented here because pyarrow
exposes neither page locations nor a way to build a footer.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PAGES_KEY: Final = b"backtest_pipeline.pages.v1"

# ---- Thrift compact protocol ----------------------------------------------------------------
# A struct is a list of (field id, type, value); lists are (element type, [values]). Types:
_BOOL, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
)  # fmt: skip
Field = tuple[int, int, Any]


class ThriftError(ValueError):
    """Bytes that are not the Thrift compact encoding expected."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ThriftError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _read_value(buf: bytes, pos: int, t: int) -> tuple[Any, int]:
    if t == _BYTE:
        return struct.unpack_from("b", buf, pos)[0], pos + 1
    if t in (_I16, _I32, _I64):
        v, pos = _varint(buf, pos)
        return _unzigzag(v), pos
    if t == _DOUBLE:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if t == _BINARY:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos : pos + n]), pos + n
    if t in (_LIST, _SET):
        h = buf[pos]
        pos += 1
        n, et = h >> 4, h & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        items: list[Any] = []
        for _ in range(n):
            if et in (1, 2):  # booleans in a container: one byte each
                items.append(buf[pos] == 1)
                pos += 1
            else:
                v, pos = _read_value(buf, pos, et)
                items.append(v)
        return (_BOOL if et in (1, 2) else et, items), pos
    if t == _MAP:
        n, pos = _varint(buf, pos)
        if n == 0:
            return (0, 0, []), pos
        kt, vt = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        pairs = []
        for _ in range(n):
            k, pos = _read_value(buf, pos, kt)
            v, pos = _read_value(buf, pos, vt)
            pairs.append((k, v))
        return (kt, vt, pairs), pos
    if t == _STRUCT:
        return read_struct(buf, pos)
    raise ThriftError(f"unknown compact type {t}")


def read_struct(buf: bytes, pos: int = 0) -> tuple[list[Field], int]:
    """One struct from ``pos``; returns its fields and the position after its stop byte."""
    fields: list[Field] = []
    last = 0
    while True:
        if pos >= len(buf):
            raise ThriftError("truncated struct")
        h = buf[pos]
        pos += 1
        if h == 0:
            return fields, pos
        t, delta = h & 0x0F, h >> 4
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(buf, pos)
            fid = _unzigzag(raw)
        last = fid
        if t in (1, 2):
            fields.append((fid, _BOOL, t == 1))
        else:
            v, pos = _read_value(buf, pos, t)
            fields.append((fid, t, v))


def _put_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _write_value(out: bytearray, t: int, v: Any) -> None:
    if t == _BYTE:
        out += struct.pack("b", v)
    elif t in (_I16, _I32, _I64):
        _put_varint(out, _zigzag(v))
    elif t == _DOUBLE:
        out += struct.pack("<d", v)
    elif t == _BINARY:
        _put_varint(out, len(v))
        out += v
    elif t in (_LIST, _SET):
        et, items = v
        code = 1 if et == _BOOL else et
        if len(items) < 15:
            out.append(len(items) << 4 | code)
        else:
            out.append(0xF0 | code)
            _put_varint(out, len(items))
        for item in items:
            if et == _BOOL:
                out.append(1 if item else 2)
            else:
                _write_value(out, et, item)
    elif t == _MAP:
        kt, vt, pairs = v
        _put_varint(out, len(pairs))
        if pairs:
            out.append(kt << 4 | vt)
            for k, val in pairs:
                _write_value(out, kt, k)
                _write_value(out, vt, val)
    elif t == _STRUCT:
        write_struct(out, v)
    else:
        raise ThriftError(f"unknown compact type {t}")


def write_struct(out: bytearray, fields: list[Field]) -> None:
    last = 0
    for fid, t, v in fields:
        code = (1 if v else 2) if t == _BOOL else t
        delta = fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | code)
        else:
            out.append(code)
            _put_varint(out, _zigzag(fid))
        if t != _BOOL:
            _write_value(out, t, v)
        last = fid
    out.append(0)


def _get(fields: list[Field], fid: int, default: Any = None) -> Any:
    return next((v for f, _t, v in fields if f == fid), default)


def _set(fields: list[Field], fid: int, t: int, v: Any) -> list[Field]:
    out = [f for f in fields if f[0] != fid] + [(fid, t, v)]
    return sorted(out, key=lambda f: f[0])


def _drop(fields: list[Field], *fids: int) -> list[Field]:
    return [f for f in fields if f[0] not in fids]


# ---- the page table ---------------------------------------------------------------------------
# Parquet field ids used below (parquet.thrift).
_FMD_NUM_ROWS, _FMD_ROW_GROUPS, _FMD_KV = 3, 4, 5
_RG_COLUMNS, _RG_BYTES, _RG_ROWS = 1, 2, 3
_CC_FILE_OFFSET, _CC_META = 2, 3
_CMD_NUM_VALUES, _CMD_UNCOMPRESSED, _CMD_COMPRESSED, _CMD_DATA_PAGE = 5, 6, 7, 9
_PH_TYPE, _PH_COMPRESSED, _PH_DATA, _PH_DATA_V2 = 1, 3, 5, 8
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3


@dataclass(frozen=True)
class PageTable:
    """Where every page of a file is: row-aligned across columns, so one row range per page."""

    rg_pages: np.ndarray  # int64 (row groups,): pages in each row group
    rows: np.ndarray  # int64 (pages,): rows of each page
    ts_min: np.ndarray  # int64 (pages,)
    ts_max: np.ndarray  # int64 (pages,)
    sizes: np.ndarray  # int64 (columns, pages): bytes of each page, header included

    @property
    def rg_of_page(self) -> np.ndarray:
        return np.repeat(np.arange(self.rg_pages.size), self.rg_pages)


def _footer_bytes(data: bytes) -> tuple[int, bytes]:
    flen = struct.unpack("<I", data[-8:-4])[0]
    start = len(data) - 8 - flen
    return start, data[start : len(data) - 8]


_CC_OFFSET_INDEX, _CC_OFFSET_INDEX_LEN = 4, 5
_CC_PAGE_INDEX_FIELDS = (4, 5, 6, 7)


def _page_locations(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset, size, first row) of every page from one column chunk's OffsetIndex.

    Vectorised: each PageLocation is 3 varint fields with fixed one-byte field headers, so the
    list body is a stream of 7 varint tokens per page (a header byte ends a token by itself).
    """
    h = buf[0]
    if h != 0x19:  # field 1, a list
        raise ThriftError("offset index: no page list")
    size_type, pos = buf[1], 2
    if size_type & 0x0F != _STRUCT:
        raise ThriftError("offset index: not a list of structs")
    n = size_type >> 4
    if n == 15:
        n, pos = _varint(buf, pos)
    empty = np.empty(0, np.int64)
    if n == 0:
        return empty, empty, empty
    body = np.frombuffer(buf, dtype=np.uint8, offset=pos)
    ends = np.flatnonzero(body < 0x80)[: 7 * n]
    if ends.size < 7 * n:
        raise ThriftError("offset index: truncated")
    stop = int(ends[-1]) + 1
    is_end = body[:stop] < 0x80
    token = np.cumsum(is_end) - is_end  # the token each byte belongs to
    start_of = np.concatenate([[0], ends[:-1] + 1])
    within = np.arange(stop) - start_of[token]
    payload = body[:stop].astype(np.int64) & 0x7F
    values = np.zeros(7 * n, dtype=np.int64)
    for k in range(int(within.max()) + 1):  # a token has one byte at each position: no clashes
        at = within == k
        values[token[at]] |= payload[at] << (7 * k)
    tokens = values.reshape(n, 7)
    if not (
        (tokens[:, 0] == 0x16).all()
        and (tokens[:, 2] == 0x15).all()
        and (tokens[:, 4] == 0x16).all()
        and (tokens[:, 6] == 0).all()
    ):
        raise ThriftError("offset index: unexpected page location layout")

    def unzig(v: np.ndarray) -> np.ndarray:
        return (v >> 1) ^ -(v & 1)

    return unzig(tokens[:, 1]), unzig(tokens[:, 3]), unzig(tokens[:, 5])


def with_page_table(data: bytes, ts: np.ndarray) -> bytes:
    """The file written with ``write_page_index``, its page index replaced by our page table.

    The page index (offset and column indexes, between the last column chunk and the footer) is
    cut and its offsets dropped from the footer; the table goes into the footer's key-value
    metadata. No page moves. A file whose pages are not row-aligned across columns (a page
    split by size, a dictionary page) is returned without page index and without table: it is
    then read by row groups.
    """
    start, footer = _footer_bytes(data)
    fields, _ = read_struct(footer)
    rgs = _get(fields, _FMD_ROW_GROUPS)[1]
    index_start, data_end = start, 0
    rg_pages: list[int] = []
    rows_all: list[np.ndarray] = []
    sizes_all: list[np.ndarray] = []
    aligned = True
    for rg in rgs:
        first_rows = None
        sizes = []
        for cc in _get(rg, _RG_COLUMNS)[1]:
            meta = _get(cc, _CC_META)
            chunk_start = _get(meta, _CMD_DATA_PAGE)
            if _get(meta, 11) is not None:  # a dictionary page
                aligned = False
            data_end = max(data_end, chunk_start + _get(meta, _CMD_COMPRESSED))
            for f in (4, 6):
                off = _get(cc, f)
                if off is not None:
                    index_start = min(index_start, off)
            off, length = _get(cc, _CC_OFFSET_INDEX), _get(cc, _CC_OFFSET_INDEX_LEN)
            if off is None or not aligned:
                aligned = False
                continue
            offsets, psize, first = _page_locations(data[off : off + length])
            if offsets.size == 0 or offsets[0] != chunk_start:
                aligned = False
                continue
            if first_rows is None:
                first_rows = first
            elif not np.array_equal(first, first_rows):
                aligned = False
            sizes.append(psize)
        if not aligned or first_rows is None:
            aligned = False
            break
        n_rows = _get(rg, _RG_ROWS)
        rows_all.append(np.diff(np.append(first_rows, n_rows)))
        rg_pages.append(first_rows.size)
        sizes_all.append(np.stack(sizes))
    if index_start < data_end:
        raise ThriftError("page index before the end of the column chunks")
    for rg in rgs:
        cols = _get(rg, _RG_COLUMNS)[1]
        for i, cc in enumerate(cols):
            cols[i] = _drop(cc, *_CC_PAGE_INDEX_FIELDS)
    if aligned and rg_pages:
        rows = np.concatenate(rows_all).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        table = PageTable(
            rg_pages=np.asarray(rg_pages, dtype=np.int64),
            rows=rows,
            ts_min=ts[first].astype(np.int64),
            ts_max=ts[first + rows - 1].astype(np.int64),
            sizes=np.concatenate(sizes_all, axis=1).astype(np.int64),
        )
        kv = _get(fields, _FMD_KV)
        entries: list[list[Field]] = [e for e in (kv[1] if kv else []) if _get(e, 1) != PAGES_KEY]
        entries.append([(1, _BINARY, PAGES_KEY), (2, _BINARY, encode_page_table(table))])
        fields = _set(fields, _FMD_KV, _LIST, (_STRUCT, entries))
    out = bytearray()
    write_struct(out, fields)
    return data[:index_start] + bytes(out) + struct.pack("<I", len(out)) + b"PAR1"


def encode_page_table(t: PageTable) -> bytes:
    """Compact: deltas of sorted times and small sizes compress to ~1–2 bytes a page and column."""
    n_cols, n_pages = t.sizes.shape
    head = np.array([t.rg_pages.size, n_pages, n_cols], dtype=np.int64)
    body = np.concatenate(
        [
            head,
            t.rg_pages,
            t.rows,
            np.diff(t.ts_min, prepend=0),
            t.ts_max - t.ts_min,
            t.sizes.ravel(),
        ]
    )
    # Byte planes of int32 deltas would compress better; int64 keeps the format obvious.
    raw = body.astype("<i8").tobytes()
    comp = pa.Codec("zstd", compression_level=3).compress(raw, asbytes=True)
    return base64.b64encode(struct.pack("<Q", len(raw)) + comp)


def decode_page_table(value: bytes) -> PageTable:
    blob = base64.b64decode(value, validate=True)
    (n_raw,) = struct.unpack_from("<Q", blob)
    raw = pa.decompress(blob[8:], decompressed_size=n_raw, codec="zstd", asbytes=True)
    arr = np.frombuffer(raw, dtype="<i8").astype(np.int64)
    n_rg, n_pages, n_cols = (int(x) for x in arr[:3])
    pos = 3
    parts = []
    for n in (n_rg, n_pages, n_pages, n_pages, n_cols * n_pages):
        parts.append(arr[pos : pos + n])
        pos += n
    if pos != arr.size:
        raise ValueError("page table of the wrong length")
    rg_pages, rows, dmin, span, sizes = parts
    ts_min = np.cumsum(dmin)
    return PageTable(rg_pages, rows, ts_min, ts_min + span, sizes.reshape(n_cols, n_pages))


def page_table_of(md: pq.FileMetaData) -> PageTable | None:
    """The file's page table if it has one that matches its footer, else None (row groups)."""
    raw = (md.metadata or {}).get(PAGES_KEY)
    if raw is None:
        return None
    try:
        t = decode_page_table(raw)
    except (ValueError, TypeError, pa.ArrowException):
        return None
    if (
        t.rg_pages.size != md.num_row_groups
        or t.sizes.shape[0] != md.num_columns
        or int(t.rg_pages.sum()) != t.rows.size
    ):
        return None
    bounds = np.concatenate([[0], np.cumsum(t.rg_pages)])
    for r in range(md.num_row_groups):
        g = md.row_group(r)
        p0, p1 = bounds[r], bounds[r + 1]
        if int(t.rows[p0:p1].sum()) != g.num_rows:
            return None
        for c in range(md.num_columns):
            cc = g.column(c)
            if cc.has_dictionary_page or int(t.sizes[c, p0:p1].sum()) != cc.total_compressed_size:
                return None
    return t


@dataclass(frozen=True)
class PageRun:
    """Consecutive pages of one row group: read as one row group of a footer of our own."""

    row_group: int
    first: int  # page index in the file
    stop: int


def select_pages(t: PageTable, ranges: list[tuple[int, int]], include_prior: bool) -> list[PageRun]:
    """Runs of pages overlapping any [start, end); with ``include_prior`` also the page holding
    the last row before each start (the state in force there), wherever it lies."""
    keep = np.zeros(t.rows.size, dtype=bool)
    for start, end in ranges:
        keep |= (t.ts_max >= start) & (t.ts_min < end)
        if include_prior:
            p = int(np.searchsorted(t.ts_min, start, side="left")) - 1
            if p >= 0:
                keep[p] = True
    rg = t.rg_of_page
    runs: list[PageRun] = []
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return runs
    # A run breaks where pages are not consecutive or a row group ends.
    brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(rg[idx]) != 0)) + 1
    for part in np.split(idx, brk):
        runs.append(PageRun(int(rg[part[0]]), int(part[0]), int(part[-1]) + 1))
    return runs


def run_spans(
    md: pq.FileMetaData, t: PageTable, runs: list[PageRun], col_idx: list[int]
) -> list[tuple[int, int]]:
    """Byte ranges of the runs in the wanted columns (one per run and column)."""
    first_page = np.concatenate([[0], np.cumsum(t.rg_pages)])
    spans = []
    for run in runs:
        g = md.row_group(run.row_group)
        p0 = int(first_page[run.row_group])
        for c in col_idx:
            start = g.column(c).data_page_offset + int(t.sizes[c, p0 : run.first].sum())
            spans.append((start, start + int(t.sizes[c, run.first : run.stop].sum())))
    return spans


def runs_metadata(
    footer: bytes, md: pq.FileMetaData, t: PageTable, runs: list[PageRun]
) -> pq.FileMetaData:
    """A footer in which each run is a row group at its original offsets (pages unmoved)."""
    fields, _ = read_struct(footer)
    rgs = _get(fields, _FMD_ROW_GROUPS)[1]
    first_page = np.concatenate([[0], np.cumsum(t.rg_pages)])
    new_rgs = []
    total_rows = 0
    for run in runs:
        columns = _get(rgs[run.row_group], _RG_COLUMNS)[1]
        p0 = int(first_page[run.row_group])
        n_rows = int(t.rows[run.first : run.stop].sum())
        new_cols, size = [], 0
        for c, cc in enumerate(columns):
            meta = _get(cc, _CC_META)
            start = md.row_group(run.row_group).column(c).data_page_offset
            start += int(t.sizes[c, p0 : run.first].sum())
            length = int(t.sizes[c, run.first : run.stop].sum())
            size += length
            # Page statistics, encoding counts, size statistics and page-index offsets describe
            # the whole chunk: dropped, they are not needed to decode.
            meta = _drop(meta, 8, 10, 11, 12, 13, 14, 15, 16, 17)
            meta = _set(meta, _CMD_NUM_VALUES, _I64, n_rows)
            meta = _set(meta, _CMD_UNCOMPRESSED, _I64, length)
            meta = _set(meta, _CMD_COMPRESSED, _I64, length)
            meta = _set(meta, _CMD_DATA_PAGE, _I64, start)
            cc2 = _drop(cc, 4, 5, 6, 7, 8, 9)
            cc2 = _set(cc2, _CC_FILE_OFFSET, _I64, start)
            new_cols.append(_set(cc2, _CC_META, _STRUCT, meta))
        new_rgs.append(
            [
                (_RG_COLUMNS, _LIST, (_STRUCT, new_cols)),
                (_RG_BYTES, _I64, size),
                (_RG_ROWS, _I64, n_rows),
            ]
        )
        total_rows += n_rows
    out_fields = _drop(fields, _FMD_KV, 8, 9)
    out_fields = _set(out_fields, _FMD_NUM_ROWS, _I64, total_rows)
    out_fields = _set(out_fields, _FMD_ROW_GROUPS, _LIST, (_STRUCT, new_rgs))
    kv = [
        e
        for e in (_get(fields, _FMD_KV) or (0, []))[1]
        if _get(e, 1) != PAGES_KEY  # keep ARROW:schema (the column types), not the page table
    ]
    if kv:
        out_fields = _set(out_fields, _FMD_KV, _LIST, (_STRUCT, kv))
    out = bytearray()
    write_struct(out, out_fields)
    buf = b"PAR1" + bytes(out) + struct.pack("<I", len(out)) + b"PAR1"
    return pq.read_metadata(pa.BufferReader(buf))


def footer_of(tail: bytes) -> bytes:
    """The Thrift footer inside a fetched tail (the last bytes of the object)."""
    return _footer_bytes(tail)[1]
