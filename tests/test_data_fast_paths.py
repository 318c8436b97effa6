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
