"""Quotes (L1) and book_depth10 (L2): schemas, validating readers, writer settings, window reads."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from backtest_pipeline import layout
from backtest_pipeline.data import books, parquet_io, readers, schemas
from backtest_pipeline.data.schemas import DataValidationError, MissingDataError
from backtest_pipeline.run.inputs import fetch_ticks, tick_types_present
from backtest_pipeline.storage import footer_index
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 2)
T0 = layout.day_bounds_ns(DAY)[0]
OBJ = "gs://bucket/quotes.parquet"
RNG = np.random.default_rng(7)


@pytest.fixture
def ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(str(tmp_path / "root"))


def quotes(n: int = 5, step_ns: int = 1_000_000) -> pl.DataFrame:
    i = np.arange(n)
    mid = 100.0 + (i % 7) * 0.1
    return pl.DataFrame(
        {
            "ts_event": T0 + i * step_ns,
            "bid_price": np.round(mid - 0.05, 2),
            "bid_size": np.round(RNG.uniform(0.001, 5, n), 3),
            "ask_price": np.round(mid + 0.05, 2),
            "ask_size": np.round(RNG.uniform(0.001, 5, n), 3),
        }
    )


def book(n: int = 4, step_ns: int = 1_000_000) -> pl.DataFrame:
    """n snapshots, 10 levels a side, 0.1 apart, the touch moving by a tick per row."""
    i = np.arange(n)
    cols: dict[str, object] = {"ts_event": T0 + i * step_ns}
    for lvl in range(10):
        cols[f"bid_price_{lvl}"] = np.round(100.0 + i * 0.1 - lvl * 0.1, 1)
        cols[f"bid_size_{lvl}"] = np.round(RNG.uniform(0.001, 5, n), 3)
        cols[f"ask_price_{lvl}"] = np.round(100.1 + i * 0.1 + lvl * 0.1, 1)
        cols[f"ask_size_{lvl}"] = np.round(RNG.uniform(0.001, 5, n), 3)
    return pl.DataFrame(cols).select(schemas.BOOK_DEPTH10_SCHEMA.names[:1] + sorted(cols)[:-1])


def test_layout_paths() -> None:
    assert layout.quotes_path(DAY, KEY) == (
        f"raw_tick_data/by_date/day-2024-01-02/data_type-quotes/{KEY}.parquet"
    )
    assert layout.book_depth10_path(DAY, KEY) == (
        f"raw_tick_data/by_date/day-2024-01-02/data_type-book_depth10/{KEY}.parquet"
    )
    assert layout.tick_path(DAY, KEY, "trades") == layout.trades_path(DAY, KEY)
    with pytest.raises(layout.LayoutError, match="data type"):
        layout.tick_path(DAY, KEY, "book_depth20")  # type: ignore[arg-type]
    with pytest.raises(layout.LayoutError, match="traversal"):
        layout.quotes_path(DAY, "A:SPOT:../x")


def test_good_quotes_and_book_normalise() -> None:
    q = schemas.validate_quotes(quotes(), OBJ)
    assert q.columns == schemas.QUOTES_SCHEMA.names and q["ts_init"].equals(
        q["ts_event"], check_names=False
    )
    b = schemas.validate_book_depth10(book(), OBJ)
    assert b.columns == schemas.BOOK_DEPTH10_SCHEMA.names and b.height == 4
    # A thin book (fewer than 10 levels, nulls below) is valid.
    thin = book().with_columns(
        pl.lit(None, pl.Float64).alias(f"ask_{f}_{lvl}")
        for f in ("price", "size")
        for lvl in (8, 9)
    )
    assert schemas.validate_book_depth10(thin, OBJ)["ask_price_8"].null_count() == 4


@pytest.mark.parametrize(
    ("change", "column", "row", "words"),
    [
        ({"ask_price": [100.0, 100.2, 99.9, 100.3, 100.4]}, "bid_price", 2, "crossed or locked"),
        ({"ask_price": [100.1, 100.2, 100.15, 100.3, 100.4]}, "bid_price", 2, "crossed or locked"),
        ({"bid_size": [1.0, float("nan"), 1.0, 1.0, 1.0]}, "bid_size", 1, "finite values > 0"),
        ({"ask_size": [1.0, 1.0, 1.0, -2.0, 1.0]}, "ask_size", 3, "finite values > 0"),
        ({"ts_event": [T0 + 5, T0 + 6, T0 + 4, T0 + 7, T0 + 8]}, "ts_event", 2, "sorted"),
    ],
)
def test_bad_quotes_name_object_column_row(
    change: dict[str, list[float]], column: str, row: int, words: str
) -> None:
    df = quotes().with_columns(pl.Series(k, v) for k, v in change.items())
    if "ask_price" in change:  # make row 2 crossed (bid 100.15 >= ask) or locked (equal)
        df = df.with_columns(pl.Series("bid_price", [99.9, 100.0, 100.15, 100.1, 100.2]))
    with pytest.raises(DataValidationError, match=words) as exc:
        schemas.validate_quotes(df, OBJ)
    assert exc.value.object_name == OBJ and exc.value.column == column and exc.value.row == row
    assert str(exc.value).startswith(OBJ) and f"row {row}" in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "column", "row", "words"),
    [
        ({"bid_price_3": (2, 100.0)}, "bid_price_3", 2, "strictly decreasing"),
        ({"ask_price_1": (1, 100.2)}, "ask_price_1", 1, "strictly increasing"),
        ({"ask_price_5": (3, 100.0)}, "ask_price_5", 3, "strictly increasing"),
        ({"bid_size_4": (0, float("nan"))}, "bid_size_4", 0, "finite values > 0"),
        ({"ask_size_0": (2, -1.0)}, "ask_size_0", 2, "finite values > 0"),
        ({"bid_size_7": (1, None)}, "bid_size_7", 1, "a size exactly where"),
        ({"bid_price_0": (3, 100.4)}, "bid_price_0", 3, "crossed or locked"),
        ({"ts_event": (3, T0)}, "ts_event", 3, "sorted"),
    ],
)
def test_bad_book_names_object_column_row(
    edit: dict[str, tuple[int, float | None]], column: str, row: int, words: str
) -> None:
    df = book()
    for name, (r, v) in edit.items():
        vals = df[name].to_list()
        vals[r] = v
        df = df.with_columns(pl.Series(name, vals, dtype=df.schema[name]))
    with pytest.raises(DataValidationError, match=words) as exc:
        schemas.validate_book_depth10(df, OBJ)
    assert exc.value.column == column and exc.value.row == row and f"row {row}" in str(exc.value)


def test_book_hole_in_levels_is_an_error() -> None:
    df = book().with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col(c)).alias(c)
        for c in ("bid_price_2", "bid_size_2")
    )
    with pytest.raises(DataValidationError, match="packed from level 0") as exc:
        schemas.validate_book_depth10(df, OBJ)
    assert exc.value.column == "bid_price_3" and exc.value.row == 1


def test_readers_round_trip_and_missing(ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    with pytest.raises(MissingDataError, match="quotes of .* does not exist"):
        readers.read_quotes(ucs, DAY, KEY)
    q, b = schemas.validate_quotes(quotes(50), "q"), schemas.validate_book_depth10(book(), "b")
    ucs.upload_to_gcs_sync(t, layout.quotes_path(DAY, KEY), parquet_io.quotes_to_parquet_bytes(q))
    ucs.upload_to_gcs_sync(
        t, layout.book_depth10_path(DAY, KEY), parquet_io.book_depth10_to_parquet_bytes(b)
    )
    assert readers.read_quotes(ucs, DAY, KEY).equals(q)
    assert readers.read_book_depth10(ucs, DAY, KEY).equals(b)
    assert tick_types_present(ucs, DAY, KEY) == ["quotes", "book_depth10"]
    # A stored object that breaks a rule is refused by the reader with its gs:// / file name.
    bad = q.with_columns(pl.col("ask_price").alias("bid_price"))
    ucs.upload_to_gcs_sync(t, layout.quotes_path(DAY, KEY), parquet_io.table_to_parquet_bytes(bad))
    with pytest.raises(DataValidationError, match="crossed or locked") as exc:
        readers.read_quotes(ucs, DAY, KEY)
    assert layout.quotes_path(DAY, KEY) in exc.value.object_name and exc.value.row == 0


def test_writer_settings() -> None:
    q = schemas.validate_quotes(quotes(2_500), "q")
    payload = parquet_io.quotes_to_parquet_bytes(q)
    assert payload == parquet_io.quotes_to_parquet_bytes(q)
    md = pq.ParquetFile(io.BytesIO(payload)).metadata
    assert md.num_row_groups == 3 and md.row_group(0).column(0).compression == "ZSTD"
    rg = md.row_group(0)
    assert rg.column(0).statistics.has_min_max
    assert all(rg.column(i).statistics is None for i in range(1, rg.num_columns))
    b = schemas.validate_book_depth10(book(1_200), "b")
    md = pq.ParquetFile(io.BytesIO(parquet_io.book_depth10_to_parquet_bytes(b))).metadata
    assert md.num_row_groups == 5 and md.num_columns == 42
    # Books: no dictionary (smaller here than dictionary pages of 250-row groups), and both
    # kinds carry the row-group index a window read assembles its footer from.
    assert "RLE_DICTIONARY" not in md.row_group(0).column(2).encodings
    assert footer_index.INDEX_KEY.encode() in md.metadata
    assert footer_index.INDEX_KEY.encode() in pq.read_metadata(io.BytesIO(payload)).metadata
    assert pq.read_table(io.BytesIO(parquet_io.book_depth10_to_parquet_bytes(b))).equals(
        schemas.to_arrow(b, schemas.BOOK_DEPTH10_SCHEMA)
    )


@pytest.mark.parametrize("data_type", ["quotes", "book_depth10"])
def test_window_reads_fetch_only_their_row_groups(ucs: UnifiedCloudService, data_type: str) -> None:
    """A signal window costs the row groups it overlaps plus the footer, like trades do."""
    n = 60_000
    if data_type == "quotes":
        df = schemas.validate_quotes(quotes(n, 4_000_000), "q")
        payload = parquet_io.quotes_to_parquet_bytes(df)
    else:
        df = schemas.validate_book_depth10(book(n, 4_000_000), "b")
        payload = parquet_io.book_depth10_to_parquet_bytes(df)
    t = layout.target("ticks")
    path = layout.tick_path(DAY, KEY, data_type)  # type: ignore[arg-type]
    ucs.upload_to_gcs_sync(t, path, payload)
    ranges = [
        (T0 + 10_000_000_000, T0 + 12_000_000_000),
        (T0 + 60_000_000_000, T0 + 61_000_000_000),
    ]
    table, rec = fetch_ticks(ucs, DAY, KEY, data_type, ranges, needed_by=1)  # type: ignore[arg-type]
    ts = df["ts_event"].to_numpy()
    inside = sum(int(((ts >= a) & (ts < b)).sum()) for a, b in ranges)
    got = table.column("ts_event").to_numpy()
    # Every row inside the windows, plus the one in force when each window opens.
    assert table.num_rows == inside + 2
    assert got[0] == ts[ts < ranges[0][0]][-1] and got[0] < ranges[0][0]
    assert rec.bytes_total == len(payload) and 0 < rec.bytes_read < 0.25 * len(payload)
    assert table.schema == schemas.TICK_SCHEMAS[data_type]


def test_window_read_of_a_crossed_object_names_it(ucs: UnifiedCloudService) -> None:
    df = quotes(3_000, 4_000_000).with_columns(
        pl.when(pl.int_range(pl.len()) == 2_500)
        .then(pl.col("ask_price") + 1)
        .otherwise(pl.col("bid_price"))
        .alias("bid_price")
    )
    t, path = layout.target("ticks"), layout.quotes_path(DAY, KEY)
    ucs.upload_to_gcs_sync(t, path, parquet_io.table_to_parquet_bytes(df))
    ok, _ = fetch_ticks(ucs, DAY, KEY, "quotes", [(T0, T0 + 10**9)], needed_by=1)
    assert ok.num_rows == 250
    with pytest.raises(DataValidationError, match="crossed or locked") as exc:
        fetch_ticks(ucs, DAY, KEY, "quotes", [(T0 + 9_990_000_000, T0 + 10_010_000_000)], 1)
    assert path in exc.value.object_name


@pytest.mark.parametrize("interval_ns", [0, 3, 10])
def test_rebuild_matches_a_dict_replay(interval_ns: int) -> None:
    """Random level updates with snapshots inside throttle intervals, against a plain replay."""
    rng = np.random.default_rng(interval_ns)
    n_msg, per = 600, 6
    msg = np.repeat(np.arange(n_msg), per)
    is_ask = rng.random(msg.size) < 0.5
    ticks = rng.integers(1, 30, msg.size)
    price = np.round(np.where(is_ask, 100.0 + ticks * 0.1, 100.0 - ticks * 0.1), 1)
    size = np.where(rng.random(msg.size) < 0.35, 0.0, np.round(rng.uniform(0.1, 5, msg.size), 2))
    reset = rng.random(n_msg) < 0.02
    reset[0] = True
    ts = np.arange(n_msg, dtype=np.int64)  # message m at m ns: interval 3 puts 3 per batch
    upd = books.LevelUpdates(msg, is_ask, price, size, ts, ts, reset)
    res = books.rebuild(upd, interval_ns)
    assert res.dropped == {}
    expected_rows = books.emission_messages(ts, interval_ns)
    assert res.frame["msg"].to_list() == expected_rows.tolist()
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    rows = iter(res.frame.iter_rows(named=True))
    row = next(rows)
    for m in range(n_msg):
        if reset[m]:
            bids.clear()
            asks.clear()
        for i in range(m * per, (m + 1) * per):
            side = asks if is_ask[i] else bids
            if size[i] == 0:
                side.pop(float(price[i]), None)
            else:
                side[float(price[i])] = float(size[i])
        if row is not None and row["msg"] == m:
            want: dict[str, float] = {}
            for name, lv in (
                ("bid", sorted(bids.items(), reverse=True)),
                ("ask", sorted(asks.items())),
            ):
                for k, (p, q) in enumerate(lv[:10]):
                    want |= {f"{name}_price_{k}": p, f"{name}_size_{k}": q}
            got = {k: v for k, v in row.items() if k.startswith(("bid_", "ask_")) and v is not None}
            assert got == want, f"message {m}"
            row = next(rows, None)
    assert row is None
