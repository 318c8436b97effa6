"""The run's per-event records, held as one columnar frame per day instead of Python tuples.

A fill kept as a tuple of Python objects costs ~400 bytes (the tuple, two id strings, three
floats, an int); a year holds ~180,000 of them per shard. The strategy appends a day's rows as
tuples (the engine hands events one at a time), and :meth:`DailyRows.freeze` turns them into a
Polars frame at the day's end, where a row takes about a third of that. The frames are joined
only when the run's outputs are built; the values are the ones the tuples held, so the output
is the frame one ``pl.DataFrame`` over every tuple would give.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import polars as pl

FILLS_SCHEMA: dict[str, pl.DataType] = {
    "fill_id": pl.Utf8(),
    "order_id": pl.Utf8(),
    "instrument_key": pl.Utf8(),
    "side": pl.Utf8(),
    "quantity": pl.Float64(),
    "price": pl.Float64(),
    "fee": pl.Float64(),
    "fee_currency": pl.Utf8(),
    "ts_event": pl.Int64(),
    "venue": pl.Utf8(),
}


class DailyRows:
    """Rows of one schema: today's as tuples, every earlier day's as a frame.

    Indexing is by row number over the whole run, so callers that remember "how many rows
    existed" (a shard's warm-up mark, the marks' pruning) keep working across the freezes.
    """

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.schema = schema
        self._frames: list[pl.DataFrame] = []
        self._starts: list[int] = []  # row number of each frame's first row
        self._frozen = 0
        self._rows: list[tuple[Any, ...]] = []

    def append(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)

    def __len__(self) -> int:
        return self._frozen + len(self._rows)

    @property
    def frozen_rows(self) -> int:
        """Rows held as frames; the rest (today's) are still Python tuples."""
        return self._frozen

    def freeze(self) -> None:
        """Turn the rows appended since the last freeze into one frame (once a day)."""
        if not self._rows:
            return
        self._starts.append(self._frozen)
        self._frames.append(pl.DataFrame(self._rows, schema=self.schema, orient="row"))
        self._frozen += len(self._rows)
        self._rows = []

    def frame(self, start: int = 0) -> pl.DataFrame:
        """Rows ``start`` onwards, as the one frame built from all their tuples would be."""
        self.freeze()
        first = max(bisect.bisect_right(self._starts, start) - 1, 0)
        parts = self._frames[first:]
        if not parts:
            return pl.DataFrame(schema=self.schema)
        offset = start - self._starts[first]
        return pl.concat(parts, rechunk=True).slice(max(offset, 0))

    def column(self, name: str, start: int = 0) -> np.ndarray:
        """One column of rows ``start`` onwards as a numpy array."""
        return self.frame(start).get_column(name).to_numpy()
