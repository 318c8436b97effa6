"""Writer settings of the trades files: what a ranged window read costs (printed), round trip."""

from __future__ import annotations

import io
import struct
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.data import parquet_io, sample, schemas
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 2)


def test_writer_settings_round_trip() -> None:
    table, _ = sample.generate_trades(KEY, DAY, 5_000, seed=1)
    payload = parquet_io.trades_to_parquet_bytes(table)
    assert payload == parquet_io.trades_to_parquet_bytes(table)  # deterministic
    md = pq.ParquetFile(io.BytesIO(payload)).metadata
    assert md.num_row_groups == 5
    rg = md.row_group(0)
    assert rg.column(0).path_in_schema == "ts_event" and rg.column(0).statistics.has_min_max
    assert all(rg.column(i).statistics is None for i in range(1, rg.num_columns))
    assert rg.column(0).compression == "ZSTD"
    back = pq.read_table(io.BytesIO(payload))
    assert back.schema == schemas.TRADES_SCHEMA and back.equals(table)


def test_row_group_measurement(tmp_path: Path) -> None:
    """Reduced form of the measurement in parquet_io's docstring (200 k trades, 144 windows)."""
    table, _ = sample.generate_trades(KEY, DAY, 200_000, seed=0)
    start, _ = layout.day_bounds_ns(DAY)
    rng = np.random.default_rng(1)
    slots = np.sort(rng.choice(1440, 144, replace=False))
    windows = [(start + int(s) * 60 * 10**9, start + (int(s) + 1) * 60 * 10**9) for s in slots]
    target, path = layout.target("ticks"), layout.trades_path(DAY, KEY)
    lines = []
    for rows in (100, 250, 500, 1_000, 5_000):
        payload = parquet_io.trades_to_parquet_bytes(table, row_group_size=rows)
        ucs = UnifiedCloudService(root=str(tmp_path / str(rows)))
        ucs.upload_to_gcs_sync(target, path, payload, format="parquet")
        read = [
            ucs.download_from_gcs_streaming_sync(target, path, timestamp_range=w) for w in windows
        ]
        n = sum(r.table.num_rows for r in read)
        total = sum(r.bytes_read for r in read)
        footer = struct.unpack("<I", payload[-8:-4])[0] + 8
        lines.append(
            f"{rows:>6} rows/RG: file {len(payload) / 1e6:.2f} MB footer {footer / 1e3:.0f} KB read {total / 1e6:.2f} MB ({total / len(payload):.2f})"
        )
        assert n == sum(
            int(
                (
                    (table.column("ts_event").to_numpy() >= a)
                    & (table.column("ts_event").to_numpy() < b)
                ).sum()
            )
            for a, b in windows
        )
    print("\n" + "\n".join(lines))
