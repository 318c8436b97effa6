"""TradeTicks built from C structs are exactly the ones Nautilus's own constructor builds."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from _engine_data import BTC, instrument_row

from backtest_pipeline.config import FeeOverride
from backtest_pipeline.engine import conversion as cv
from backtest_pipeline.engine import instruments as names


def _instrument(pp: int = 1, sp: int = 3):  # type: ignore[no-untyped-def]
    row = instrument_row(
        BTC,
        price_precision=pp,
        size_precision=sp,
        tick_size=round(10.0**-pp, pp),
        lot_size=round(10.0**-sp, sp),
        min_quantity=round(10.0**-sp, sp),
    )
    return names.build_instrument(row, FeeOverride())


def _table(n: int, pp: int, sp: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    prices = np.round(rng.random(n) * 10 ** rng.integers(0, 8), int(rng.integers(0, 12)))
    prices[: n // 4] = (rng.integers(0, 10**6, n // 4) + 0.5) / 10.0**pp  # exact .5 ties
    sizes = np.maximum(np.round(rng.random(n) * 10, sp + 1), 10.0**-sp)
    sizes[: n // 4] = (rng.integers(1, 10**5, n // 4) + 0.5) / 10.0**sp
    ids = [
        "".join(chr(c) for c in rng.integers(0x21, 0x7F, int(rng.integers(1, 37))))
        for _ in range(n)
    ]
    ts = np.sort(rng.integers(0, 2**62, n))
    return pa.table(
        {
            "ts_event": pa.array(ts, pa.int64()),
            "ts_init": pa.array(ts + 7, pa.int64()),
            "trade_id": pa.array(ids, pa.string()),
            "price": prices,
            "size": sizes,
            "side": pa.array(rng.choice(["buy", "sell"], n)),
        }
    )


def _meaningful(ticks: list) -> np.ndarray:  # type: ignore[type-arg]
    return cv.struct_bytes(ticks)[:, cv.MEANINGFUL]


def _reference(table: pa.Table, inst, use_ts_init: bool = False) -> list:  # type: ignore[no-untyped-def,type-arg]
    cols = cv.fast_columns(table, inst.size_precision, use_ts_init)
    assert cols is not None
    return cv.nautilus_ticks(inst, cols)


@pytest.mark.parametrize(("pp", "sp"), [(0, 0), (1, 3), (2, 8), (5, 2), (8, 6), (9, 1)])
def test_struct_path_equals_nautilus_constructor(pp: int, sp: int) -> None:
    inst = _instrument(pp, sp)
    table = _table(3000, pp, sp, seed=pp * 10 + sp)
    cols = cv.fast_columns(table, sp, False)
    assert cols is not None
    fast = cv.struct_ticks(inst, cols)
    assert fast is not None, "the struct path was not taken"
    ref = cv.nautilus_ticks(inst, cols)
    assert np.array_equal(_meaningful(fast), _meaningful(ref))
    for a, b in zip(fast[::97], ref[::97], strict=True):  # and through Nautilus's accessors
        assert (a.instrument_id, a.price, a.size, a.aggressor_side, a.trade_id) == (
            b.instrument_id, b.price, b.size, b.aggressor_side, b.trade_id,
        )  # fmt: skip
        assert (a.ts_event, a.ts_init, str(a)) == (b.ts_event, b.ts_init, str(b))


def test_chunks_slices_and_column_types() -> None:
    inst = _instrument()
    table = _table(cv.CHUNK * 2 + 123, 1, 3, seed=11)
    variants = {
        "whole": table,
        "slice": table.slice(1001, cv.CHUNK + 5),
        "chunked": pa.concat_tables([table.slice(0, 777), table.slice(777)]),
        "large_string": table.set_column(2, "trade_id", table["trade_id"].cast(pa.large_string())),
        "float32_size": table.set_column(4, "size", table["size"].cast(pa.float32())),
    }
    for name, tbl in variants.items():
        for use_ts_init in (False, True):
            got = cv.trades_to_ticks(tbl, inst, use_ts_init=use_ts_init)
            want = _reference(tbl, inst, use_ts_init)
            assert np.array_equal(_meaningful(got), _meaningful(want)), name


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("price", float("nan"), "invalid `value`, was nan"),
        ("price", 1e14, "greater than `PRICE_MAX`"),
        ("size", 1e15, "greater than `QUANTITY_MAX`"),
        ("trade_id", " ", "'value' string was invalid"),
        ("trade_id", "x" * 37, r"out of range \[1, 36\]"),
    ],
)
def test_values_outside_the_struct_path_raise_nautilus_errors(
    column: str, value: object, error: str
) -> None:
    """The struct path leaves them to Nautilus's constructor, which raises as it always did."""
    inst = _instrument()
    table = _table(10, 1, 3)
    values = table[column].to_pylist()
    values[4] = value
    bad = table.set_column(table.column_names.index(column), column, pa.array(values))
    with pytest.raises(ValueError, match=error):
        cv.trades_to_ticks(bad, inst)


def test_other_inputs_still_convert_the_same() -> None:
    """Spaces inside ids, negative prices, mixed-case sides, dust, polars frames."""
    inst = _instrument()
    table = _table(200, 1, 3)
    ids = table["trade_id"].to_pylist()
    ids[3] = "a b"
    prices = table["price"].to_pylist()
    prices[5] = -12.3
    sides = table["side"].to_pylist()
    sides[7] = "SELL"
    sizes = table["size"].to_pylist()
    sizes[9] = 0.0001
    for tbl in (
        table.set_column(2, "trade_id", pa.array(ids)),
        table.set_column(3, "price", pa.array(prices)),
    ):
        assert np.array_equal(
            _meaningful(cv.trades_to_ticks(tbl, inst)), _meaningful(_reference(tbl, inst))
        )
    odd = table.set_column(5, "side", pa.array(sides)).set_column(4, "size", pa.array(sizes))
    ticks = cv.trades_to_ticks(odd, inst)
    assert len(ticks) == 199 and ticks[7].aggressor_side.name == "SELLER"
    frame = pl.from_arrow(table)
    assert np.array_equal(
        _meaningful(cv.trades_to_ticks(frame, inst)), _meaningful(_reference(table, inst))
    )


def test_a_disagreeing_sample_disables_the_struct_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inst = _instrument()
    table = _table(500, 1, 3)
    monkeypatch.setattr(cv, "fast_path_disabled", [])
    monkeypatch.setattr(cv, "_agrees", lambda *a: False)
    with caplog.at_level(logging.WARNING, logger=cv.__name__):
        ticks = cv.trades_to_ticks(table, inst)
    assert cv.fast_path_disabled and "disabled" in caplog.text
    assert np.array_equal(_meaningful(ticks), _meaningful(_reference(table, inst)))


def test_marks_shortcut_equals_group_by() -> None:
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 50 * 10**9, 5000)).astype(np.int64)
    ts[100:110] = ts[100]  # equal timestamps inside a second
    table = pa.table({"ts_event": ts, "price": rng.random(5000)})
    fast = cv.marks_per_second(table, BTC)
    general = cv.marks_per_second(pl.from_arrow(table), BTC)  # frames take the group-by
    assert fast.equals(general) and fast.schema == general.schema
    unsorted = table.take(pa.array(rng.permutation(5000)))
    assert cv.sorted_marks(unsorted, BTC) is None
    one = table.slice(0, 1)
    assert cv.marks_per_second(one, BTC).equals(cv.marks_per_second(pl.from_arrow(one), BTC))
