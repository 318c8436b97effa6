"""The row-group index: a window read of a book assembles only its part of the footer.

Every read through the index is checked against the same read of the same rows through the
whole footer (an object written without the index), so the index can only change what a read
costs, never what it returns.
"""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import parquet_io, schemas
from backtest_pipeline.run.inputs import fetch_book
from backtest_pipeline.storage import footer_index, parquet_ranges
from backtest_pipeline.storage.footer_index import FooterIndexError
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
REF = "BINANCE-FUTURES:PERPETUAL:ETH-USDT"
DAY = date(2024, 1, 2)
T0 = layout.day_bounds_ns(DAY)[0]
RNG = np.random.default_rng(7)


def book(n: int, step_ns: int = 250_000_000) -> pl.DataFrame:
    """``n`` snapshots with irregular gaps (some longer than a row group) and random levels."""
    gaps = RNG.integers(1, 2 * step_ns, n)
    gaps[RNG.random(n) < 0.002] = 400 * step_ns
    ts = T0 + np.cumsum(gaps)
    mid = 100.0 + np.cumsum(RNG.normal(0, 0.05, n))
    cols: dict[str, object] = {"ts_event": ts}
    for lvl in range(10):
        cols[f"bid_price_{lvl}"] = np.round(mid - 0.05 - lvl * 0.1, 2)
        cols[f"bid_size_{lvl}"] = np.round(RNG.uniform(0.001, 5, n), 3)
        cols[f"ask_price_{lvl}"] = np.round(mid + 0.05 + lvl * 0.1, 2)
        cols[f"ask_size_{lvl}"] = np.round(RNG.uniform(0.001, 5, n), 3)
    return schemas.validate_book_depth10(pl.DataFrame(cols), "b")


def without_index(df: pl.DataFrame) -> bytes:
    """The same rows and row groups as the product writes, with no index: the reference."""
    buf = io.BytesIO()
    pq.write_table(
        schemas.to_arrow(df, schemas.BOOK_DEPTH10_SCHEMA),
        buf,
        row_group_size=parquet_io.BOOK_ROW_GROUP_SIZE,
        write_statistics=["ts_event"],
        use_dictionary=False,
        compression="zstd",
    )
    return buf.getvalue()


def windows(df: pl.DataFrame, k: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    ts = df["ts_event"].to_numpy()
    starts = np.sort(rng.integers(int(ts[0]) - 10**9, int(ts[-1]) + 10**9, k))
    return parquet_ranges.merge_ranges(
        [(int(s), int(s) + int(rng.integers(10**8, 90 * 10**9))) for s in starts]
    )


def put(ucs: UnifiedCloudService, payload: bytes, key: str = KEY) -> None:
    ucs.upload_to_gcs_sync(layout.target("ticks"), layout.book_depth10_path(DAY, key), payload)


def test_with_index_changes_only_the_metadata() -> None:
    df = book(3_000)
    plain = parquet_io._parquet_bytes  # noqa: SLF001 - the writer's own bytes, before the index
    t = schemas.to_arrow(df, schemas.BOOK_DEPTH10_SCHEMA)
    before = plain(
        t,
        row_group_size=250,
        write_statistics=["ts_event"],
        use_dictionary=False,
        column_encoding={"ts_event": "DELTA_BINARY_PACKED", "ts_init": "DELTA_BINARY_PACKED"},
        sorting_columns=[pq.SortingColumn(0)],
    )
    after = parquet_io.book_depth10_to_parquet_bytes(df)
    md_b, md_a = pq.read_metadata(io.BytesIO(before)), pq.read_metadata(io.BytesIO(after))
    # The column chunks are the same bytes at the same offsets; only the footer grew.
    n_data = md_b.row_group(md_b.num_row_groups - 1).column(41).file_offset
    assert before[:n_data] == after[:n_data]
    assert [md_a.row_group(i).to_dict() for i in range(md_a.num_row_groups)] == [
        md_b.row_group(i).to_dict() for i in range(md_b.num_row_groups)
    ]
    assert pq.read_table(io.BytesIO(after)).equals(pq.read_table(io.BytesIO(before)))
    assert pl.read_parquet(io.BytesIO(after)).equals(df)
    with pytest.raises(FooterIndexError, match="already has"):
        footer_index.with_index(after)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_reads_equal_the_whole_footer_reads(ucs: UnifiedCloudService, seed: int) -> None:
    """Random windows: the rows, and the row in force at each start, are the whole-footer ones."""
    df = book(12_000)
    put(ucs, parquet_io.book_depth10_to_parquet_bytes(df))
    put(ucs, without_index(df), key=REF)  # the reference: the same rows, no index
    ts = df["ts_event"].to_numpy()
    for k in (1, 4, 30):
        ranges = windows(df, k, seed * 100 + k)
        got, rec, _ = fetch_book(ucs, DAY, KEY, "book_depth10", ranges, needed_by=1)
        ref, ref_rec, _ = fetch_book(ucs, DAY, REF, "book_depth10", ranges, needed_by=1)
        assert got.equals(ref), (k, got.num_rows, ref.num_rows)
        # The first row is the snapshot in force when the first window opens.
        first = ranges[0][0]
        if (ts < first).any():
            assert got.column("ts_event")[0].as_py() == ts[ts < first][-1]
        assert rec.bytes_read < ref_rec.bytes_read
    # Reading twice, with the whole footer cached in between, costs the same bytes.
    ranges = windows(df, 5, seed)
    a = fetch_book(ucs, DAY, KEY, "book_depth10", ranges, needed_by=1)[1].bytes_read
    ucs.parquet_metadata_sync(layout.target("ticks"), layout.book_depth10_path(DAY, KEY))
    b = fetch_book(ucs, DAY, KEY, "book_depth10", ranges, needed_by=1)[1].bytes_read
    assert a == b


def test_the_footer_read_is_the_part_the_windows_need(tmp_path: object) -> None:
    """One short window of a long day reads a small share of the footer, and the fetched bytes
    are exactly what ``bytes_read`` reports."""
    df = book(40_000)
    payload = parquet_io.book_depth10_to_parquet_bytes(df)
    md = pq.read_metadata(io.BytesIO(payload))
    fetched: list[tuple[int, int]] = []

    def fetch(s: int, e: int) -> bytes:
        fetched.append((s, e))
        return payload[s:e]

    mid = int(df["ts_event"][20_000])
    footer, wanted, whole = parquet_ranges.read_footer_for_ranges(
        len(payload), fetch, "obj", [(mid, mid + 5 * 10**9)]
    )
    assert not whole and 1 <= footer.metadata.num_row_groups <= 3
    assert wanted[-1] == (mid, mid + 5 * 10**9)
    assert footer.cost == sum(e - s for s, e in fetched)
    assert footer.cost < 0.2 * md.serialized_size
    # The chosen row groups are the object's own, in order.
    sel = [
        i
        for i in range(md.num_row_groups)
        if any(
            md.row_group(i).column(0).statistics.max >= a
            and md.row_group(i).column(0).statistics.min < b
            for a, b in wanted
        )
    ]
    assert [footer.metadata.row_group(i).to_dict() for i in range(len(sel))] == [
        md.row_group(g).to_dict() for g in sel
    ]


def test_a_long_index_beyond_the_fetched_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    df = book(20_000)
    payload = parquet_io.book_depth10_to_parquet_bytes(df)
    monkeypatch.setattr(parquet_ranges, "FOOTER_GUESS", 512)
    ranges = windows(df, 3, 9)
    footer, wanted, whole = parquet_ranges.read_footer_for_ranges(
        len(payload), lambda s, e: payload[s:e], "obj", ranges
    )
    assert not whole and footer.metadata.num_row_groups > 0
    res = parquet_ranges.read_ranges(
        footer,
        lambda s, e: payload[s:e],
        "obj",
        ranges=wanted,
        timestamp_column="ts_event",
        columns=None,
        include_prior=True,
    )
    ref_footer = parquet_ranges.read_footer(
        len(payload), lambda s, e: payload[s:e], "obj", "ts_event"
    )
    ref = parquet_ranges.read_ranges(
        ref_footer,
        lambda s, e: payload[s:e],
        "obj",
        ranges=wanted,
        timestamp_column="ts_event",
        columns=None,
        include_prior=True,
    )
    assert res.table.equals(ref.table)


def test_a_damaged_index_is_an_error_naming_the_object(ucs: UnifiedCloudService) -> None:
    df = book(3_000)
    payload = bytearray(parquet_io.book_depth10_to_parquet_bytes(df))
    at = bytes(payload).rfind(footer_index.MAGIC) - 40  # inside the base64 body
    payload[at] = ord("A") if payload[at] != ord("A") else ord("B")
    put(ucs, bytes(payload))
    path = layout.book_depth10_path(DAY, KEY)
    with pytest.raises(FooterIndexError, match="row-group index") as exc:
        fetch_book(ucs, DAY, KEY, "book_depth10", windows(df, 2, 1), needed_by=1)
    assert path in str(exc.value)


def test_files_without_an_index_read_as_before(ucs: UnifiedCloudService) -> None:
    """Another tool's file (one big row group, no index): the whole footer, every row asked."""
    df = book(2_000)
    buf = io.BytesIO()
    pq.write_table(schemas.to_arrow(df, schemas.BOOK_DEPTH10_SCHEMA), buf)
    put(ucs, buf.getvalue())
    ranges = windows(df, 3, 4)
    got, rec, _ = fetch_book(ucs, DAY, KEY, "book_depth10", ranges, needed_by=1)
    ts = df["ts_event"].to_numpy()
    mask = parquet_ranges.range_mask(pa.array(ts), ranges, True)
    assert got.column("ts_event").to_numpy().tolist() == ts[mask].tolist()
    assert rec.bytes_read >= pq.read_metadata(io.BytesIO(buf.getvalue())).serialized_size
