"""A row-group index at the end of a Parquet footer: a window read fetches its part of the footer.

Why: a Parquet footer holds ~70 bytes per column chunk, and it is parsed whole before any row is
read. A 10-level book row has 42 columns, so a day in short row groups (what keeps a signal
window's read small) carries a 2–4 MB footer: 6–10 % of the object paid by every run that reads
a single window of it. The footer is a Thrift struct whose ``row_groups`` list holds one
self-contained struct per row group, so a footer for just the row groups a read needs is the
file's own bytes: the part before the list, a new list header, the selected row groups' structs,
and the part after the list (key-value metadata, writer, column orders).

The writer records where each row-group struct lies (and its ``ts_event`` bounds) under the
key-value key :data:`INDEX_KEY`, the last key of the footer, with a fixed ASCII trailer ending in
:data:`MAGIC`: a reader finds it in the last bytes of the object it fetches anyway, selects the
row groups, fetches the prefix and their structs by range, and hands Arrow the assembled footer.
Files without the key (written by other tools or before it existed) are read with their whole
footer, as always; the index is plain metadata to every other Parquet reader.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

INDEX_KEY = "backtest_pipeline.row_group_index"
MAGIC = b"BTRGIX01"
_TRAILER_LEN = 16  # crc32 and body length, 8 hex digits each, before the magic
VERSION = 1


class FooterIndexError(ValueError):
    """A row-group index that does not describe its object's footer (the object is corrupt)."""


# ---- Thrift compact protocol: just enough to find the row-group structs -----------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _skip(buf: bytes, i: int, ttype: int) -> int:
    """The offset after one value of compact type ``ttype`` starting at ``i``."""
    if ttype in (1, 2):  # a bool field: the value is in the type nibble
        return i
    if ttype == 3:
        return i + 1
    if ttype in (4, 5, 6):
        while buf[i] & 0x80:
            i += 1
        return i + 1
    if ttype == 7:
        return i + 8
    if ttype == 8:
        n, i = _varint(buf, i)
        return i + n
    if ttype in (9, 10):
        h = buf[i]
        i += 1
        n, etype = h >> 4, h & 0x0F
        if n == 15:
            n, i = _varint(buf, i)
        if etype in (1, 2):  # bools in a list: a byte each
            return i + n
        for _ in range(n):
            i = _skip(buf, i, etype)
        return i
    if ttype == 11:
        n, i = _varint(buf, i)
        if n == 0:
            return i
        kv = buf[i]
        i += 1
        for _ in range(n):
            i = _skip(buf, _skip(buf, i, kv >> 4), kv & 0x0F)
        return i
    if ttype == 12:
        while True:
            h = buf[i]
            i += 1
            if h == 0:
                return i
            if h >> 4 == 0:  # a long-form field header: the id follows as a varint
                _, i = _varint(buf, i)
            i = _skip(buf, i, h & 0x0F)
    raise FooterIndexError(f"unknown Thrift compact type {ttype} at footer byte {i}")


def _field_header(buf: bytes, i: int, fid: int) -> tuple[int, int, int]:
    """``(field id, type, offset after the header)`` of the struct field header at ``i``."""
    h = buf[i]
    i += 1
    if h >> 4:
        return fid + (h >> 4), h & 0x0F, i
    zz, i = _varint(buf, i)
    return (zz >> 1) ^ -(zz & 1), h & 0x0F, i


def _list_at(buf: bytes, i: int) -> tuple[int, int]:
    """``(elements, offset of the first element)`` of the list header at ``i``."""
    lh = buf[i]
    i += 1
    n = lh >> 4
    if n == 15:
        n, i = _varint(buf, i)
    return n, i


def footer_layout(footer: bytes) -> tuple[int, list[int], int, int]:
    """Where the parts of a serialized ``FileMetaData`` lie (offsets into ``footer``).

    ``(row_groups list header, [start of each row-group struct, end of the list],
    key_value_metadata list header, end of that list)``.
    """
    i = fid = 0
    list_at = -1
    starts: list[int] = []
    while footer[i] != 0:
        fid, ttype, i = _field_header(footer, i, fid)
        if fid == 4 and ttype == 9:
            list_at = i
            n, i = _list_at(footer, i)
            for _ in range(n):
                starts.append(i)
                i = _skip(footer, i, 12)
            starts.append(i)
        elif fid == 5 and ttype == 9:
            if list_at < 0:
                raise FooterIndexError("key-value metadata before the row groups")
            kv_at = i
            n, i = _list_at(footer, i)
            for _ in range(n):
                i = _skip(footer, i, 12)
            return list_at, starts, kv_at, i
        else:
            i = _skip(footer, i, ttype)
    raise FooterIndexError("the footer has no row groups or no key-value metadata")


def _list_header(n: int) -> bytes:
    """A compact list header of ``n`` structs."""
    return bytes([(n << 4) | 0x0C]) if n < 15 else b"\xfc" + _varint_bytes(n)


# ---- the index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowGroupIndex:
    """Where each row group's struct lies in the footer, and its time bounds and rows."""

    list_at: int  # offset of the row_groups list header in the footer
    starts: np.ndarray  # int64, n + 1: each struct's start, then the list's end
    ts_min: np.ndarray  # int64 ns per row group
    ts_max: np.ndarray
    num_rows: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ts_min)

    def encode(self) -> str:
        arrays = [
            np.asarray([VERSION, self.list_at, self.n], np.int64),
            np.diff(self.starts, prepend=0),
            np.diff(self.ts_min, prepend=0),
            self.ts_max - self.ts_min,
            self.num_rows,
        ]
        body = zlib.compress(np.concatenate(arrays).astype("<i8").tobytes(), 6)
        return (
            base64.b64encode(body).decode("ascii")
            + f"{zlib.crc32(body):08x}{len(body):08x}"
            + MAGIC.decode("ascii")
        )

    @classmethod
    def decode(cls, body: bytes, where: str) -> RowGroupIndex:
        try:
            v = np.frombuffer(zlib.decompress(body), dtype="<i8")
            version, list_at, n = (int(x) for x in v[:3])
            if version != VERSION or len(v) != 3 + (n + 1) + 3 * n:
                raise ValueError(f"version {version}, {len(v)} values for {n} row groups")
            parts = np.split(v[3:], [n + 1, 2 * n + 1, 3 * n + 1])
        except Exception as exc:  # zlib.error, ValueError
            raise FooterIndexError(f"{where}: unreadable row-group index: {exc}") from exc
        starts = np.cumsum(parts[0])
        ts_min = np.cumsum(parts[1])
        return cls(list_at, starts, ts_min, ts_min + parts[2], parts[3].copy())


def with_index(data: bytes, timestamp_column: str = "ts_event") -> bytes:
    """The Parquet object ``data`` with its row-group index appended to its key-value metadata.

    The entry is spliced into the footer's key-value list rather than written by a second pass
    of the writer (which doubled the cost of writing a book day): the column chunks and every
    byte before the key-value list stay as they were, so the offsets the index records hold.
    """
    footer = _footer_bytes(data)
    list_at, starts, kv_at, kv_end = footer_layout(footer)
    md = pq.read_metadata(pa.BufferReader(data))
    if len(starts) - 1 != md.num_row_groups:
        raise FooterIndexError(
            f"found {len(starts) - 1} row-group structs, the footer has {md.num_row_groups}"
        )
    if INDEX_KEY.encode() in (md.metadata or {}):
        raise FooterIndexError("the object already has a row-group index")
    ci = md.schema.names.index(timestamp_column)
    lo, hi, rows = [], [], []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        st = rg.column(ci).statistics
        if st is None or not st.has_min_max:
            raise FooterIndexError(f"row group {g} has no {timestamp_column} statistics")
        lo.append(int(st.min))
        hi.append(int(st.max))
        rows.append(rg.num_rows)
    index = RowGroupIndex(
        list_at,
        np.asarray(starts, np.int64),
        np.asarray(lo, np.int64),
        np.asarray(hi, np.int64),
        np.asarray(rows, np.int64),
    )
    n_kv, first = _list_at(footer, kv_at)
    key, value = INDEX_KEY.encode(), index.encode().encode("ascii")
    entry = b"\x18" + _varint_bytes(len(key)) + key + b"\x18" + _varint_bytes(len(value)) + value
    new = (
        footer[:kv_at]
        + _list_header(n_kv + 1)
        + footer[first:kv_end]
        + entry
        + b"\x00"
        + footer[kv_end:]
    )
    body = data[: len(data) - 8 - len(footer)]
    return body + new + struct.pack("<I", len(new)) + b"PAR1"


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _footer_bytes(data: bytes) -> bytes:
    n = struct.unpack("<I", data[-8:-4])[0]
    return data[len(data) - 8 - n : len(data) - 8]


def find_index(tail: bytes, where: str) -> tuple[int, int] | None:
    """``(start, end)`` in ``tail`` of the encoded index body, or None: the object has none.

    The body may start before ``tail`` (a negative start): the caller fetches the rest.
    """
    pos = tail.rfind(MAGIC)
    if pos < 0:
        return None
    trailer = tail[pos - _TRAILER_LEN : pos]
    try:
        length = int(trailer[8:], 16)
    except ValueError:
        raise FooterIndexError(f"{where}: row-group index trailer {trailer!r} unreadable") from None
    b64_len = 4 * ((length + 2) // 3)
    end = pos - _TRAILER_LEN
    return end - b64_len, end


def parse_index(encoded: bytes, trailer: bytes, where: str) -> RowGroupIndex:
    """The index from its base64 body and the 16-byte trailer (crc32 checked)."""
    try:
        body = base64.b64decode(encoded, validate=True)
        crc = int(trailer[:8], 16)
    except ValueError as exc:
        raise FooterIndexError(f"{where}: row-group index unreadable: {exc}") from exc
    if zlib.crc32(body) != crc:
        raise FooterIndexError(f"{where}: row-group index fails its checksum")
    return RowGroupIndex.decode(body, where)


def subset_footer(prefix: bytes, structs: Sequence[bytes], suffix: bytes) -> pq.FileMetaData:
    """The metadata of the object restricted to ``structs`` (its row groups, in order).

    ``prefix`` is the footer up to the row_groups list header, ``suffix`` from the list's end to
    the footer's end: both are the object's own bytes, so the schema, key-value metadata and
    writer are the object's.
    """
    footer = prefix + _list_header(len(structs)) + b"".join(structs) + suffix
    fake = b"PAR1" + footer + struct.pack("<I", len(footer)) + b"PAR1"
    return pq.read_metadata(pa.BufferReader(fake))
