"""The shortcuts of trades validation give exactly what the general rules give."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backtest_pipeline.data import schemas
from backtest_pipeline.data.schemas import DataValidationError

DAY = "2024-01-01"
T0 = 1_704_067_200_000_000_000


def _trades(n: int = 1000, **over: object) -> pa.Table:
    rng = np.random.default_rng(7)
    cols: dict[str, object] = {
        "ts_event": pa.array(T0 + np.sort(rng.integers(0, 86_400 * 10**9, n)), pa.int64()),
        "ts_init": pa.array(T0 + np.sort(rng.integers(0, 86_400 * 10**9, n)), pa.int64()),
        "trade_id": pa.array([str(10_000 + i) for i in range(n)], pa.string()),
        "price": pa.array(40_000 + rng.random(n), pa.float64()),
        "size": pa.array(rng.random(n) + 0.01, pa.float64()),
        "side": pa.array(np.where(rng.random(n) > 0.5, "buy", "sell"), pa.string()),
    }
    cols.update(over)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def _general(table: pa.Table) -> pa.Table:
    """What validate_trades returned before the Arrow shortcut: the frame, back to Arrow."""
    return schemas.to_arrow(
        schemas.validate_trades_frame(table, "obj", day=DAY), schemas.TRADES_SCHEMA
    )


@pytest.mark.parametrize(
    "variant",
    ["canonical", "no_ts_init", "null_ts_init", "chunked", "extra_column", "upper_side",
     "timestamp_type", "large_string", "int_ids"],
)  # fmt: skip
def test_arrow_shortcut_equals_general_rules(variant: str) -> None:
    base = _trades()
    table = {
        "canonical": lambda: base,
        "no_ts_init": lambda: base.drop_columns(["ts_init"]),
        "null_ts_init": lambda: base.set_column(
            1, "ts_init", pa.array([None if i % 3 else 5 for i in range(base.num_rows)], pa.int64())
        ),
        "chunked": lambda: pa.concat_tables([base.slice(0, 300), base.slice(300)]),
        "extra_column": lambda: base.append_column("venue", pa.array(["x"] * base.num_rows)),
        "upper_side": lambda: base.set_column(5, "side", pc.utf8_upper(base["side"])),
        "timestamp_type": lambda: base.set_column(
            0, "ts_event", base["ts_event"].cast(pa.timestamp("ns", "UTC"))
        ),
        "large_string": lambda: base.set_column(
            2, "trade_id", base["trade_id"].cast(pa.large_string())
        ),
        "int_ids": lambda: base.set_column(2, "trade_id", base["trade_id"].cast(pa.int64())),
    }[variant]()
    got = schemas.validate_trades(table, "obj", day=DAY)
    want = _general(table)
    assert got.schema == want.schema
    assert got.equals(want)


def test_unique_ids_shortcut_keeps_every_verdict() -> None:
    ok = [["1", "2", "10"], ["b", "a", "c"], ["3", "2", "1"], ["01", "1", "2"]]
    for ids in ok:  # increasing numbers, strings, decreasing, equal numbers but distinct strings
        df = pl.DataFrame({"trade_id": ids})
        schemas.check_unique(df, "trade_id", "obj", "trade ids")
    for ids in (["1", "2", "2", "3"], ["7", "x", "7"]):
        df = pl.DataFrame({"trade_id": ids})
        with pytest.raises(DataValidationError, match="found '.*' more than once") as ei:
            schemas.check_unique(df, "trade_id", "obj", "trade ids")
        assert ei.value.column == "trade_id" and ei.value.row == ids.index(ei.value.value)


def test_duplicate_trade_id_still_named_with_row() -> None:
    table = _trades(50)
    ids = table["trade_id"].to_pylist()
    ids[30] = ids[29]
    bad = table.set_column(2, "trade_id", pa.array(ids, pa.string()))
    with pytest.raises(DataValidationError, match=r"obj: column 'trade_id'.*rows 29 and later"):
        schemas.validate_trades(bad, "obj", day=DAY)


def test_arrays_built_from_buffers_equal_pa_array() -> None:
    """The pandas-free constructors give the arrays ``pa.array`` gives."""
    from backtest_pipeline.storage.parquet_ranges import mask_array

    values = ["buy", "sell", "", "BINANCE-FUTURES:PERPETUAL:BTC-USDT", "é"]
    assert schemas.string_array(values).equals(pa.array(values, pa.string()))
    assert schemas.string_array([]).equals(pa.array([], pa.string()))
    for n in (0, 1, 7):
        expected = pa.array(["BINANCE:SPOT:BTC-USDT"] * n, pa.string())
        assert schemas.repeated_string("BINANCE:SPOT:BTC-USDT", n).equals(expected)
    rng = np.random.default_rng(3)
    for n in (0, 1, 8, 13, 1000):
        mask = rng.random(n) > 0.4
        assert mask_array(mask).equals(pa.array(mask))


def test_range_mask_reads_chunked_and_sliced_columns() -> None:
    """``range_mask`` over several chunks with offsets, as over one NumPy array."""
    from backtest_pipeline.storage.parquet_ranges import range_mask

    ts = np.sort(np.random.default_rng(5).integers(0, 10_000, 500)).astype(np.int64)
    whole = pa.array(ts, pa.int64())
    chunked = pa.chunked_array([whole.slice(0, 0), whole.slice(0, 123), whole.slice(123)])
    ranges = [(100, 900), (2_000, 2_500), (9_000, 20_000)]
    for prior in (False, True):
        expected = range_mask(pa.array(ts.copy(), pa.int64()), ranges, prior)
        assert np.array_equal(range_mask(chunked, ranges, prior), expected)
        assert np.array_equal(range_mask(whole.slice(123), ranges, prior), expected[123:])
    with_nulls = pa.chunked_array([pa.array([5, None, 7], pa.int64())])
    assert range_mask(with_nulls.fill_null(0), [(4, 8)], False).tolist() == [True, False, True]


def test_reading_and_validating_trades_needs_no_pandas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A process that reads a trades object by ranges and validates it never imports pandas.

    pyarrow imports pandas (~0.4 s) on its first conversion of Python values or to NumPy;
    the Dagster step that fetches the tick slices has no other use for it.
    """
    import pyarrow.parquet as pq

    path = tmp_path / "trades.parquet"
    pq.write_table(_trades(5_000), path, row_group_size=500)
    code = f"""
import sys
import pyarrow.parquet as pq
from backtest_pipeline.data import schemas
from backtest_pipeline.storage.parquet_ranges import mask_array, range_mask
t = pq.ParquetFile({str(path)!r}).read()
mask = range_mask(t.column("ts_event"), [({T0}, {T0 + 40_000 * 10**9})], True)
t = t.filter(mask_array(mask))
t = t.add_column(0, "instrument_key", schemas.repeated_string("BINANCE:SPOT:BTC-USDT", t.num_rows))
schemas.validate_trades(t.drop_columns(["instrument_key"]), "trades.parquet", day={DAY!r})
assert "pandas" not in sys.modules, "pandas was imported"
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
