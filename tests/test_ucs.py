"""The UCS contract, run against the local root and a real fake-gcs-server process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backtest_pipeline import layout
from backtest_pipeline.storage.base import ObjectNotFoundError, RetryPolicy, TransientStorageError
from backtest_pipeline.storage.parquet_ranges import ParquetRangeError
from backtest_pipeline.storage.ucs import UnifiedCloudService

DAY_NS = 86_400_000_000_000
KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"


def _trades(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, DAY_NS, n)).astype(np.int64)
    return pa.table(
        {
            "ts_event": ts,
            "trade_id": pa.array(np.char.add("t", np.arange(n).astype(str))),
            "price": 40_000 + rng.standard_normal(n).cumsum(),
            "size": rng.lognormal(-3, 1, n),
            "side": pa.array(np.where(rng.random(n) > 0.5, "buy", "sell")),
        }
    )


def test_roundtrip_every_format(ucs: UnifiedCloudService) -> None:
    t = layout.target("results")
    ucs.upload_to_gcs_sync(t, "x/a.json", {"a": 1, "b": [1, 2]})
    assert ucs.download_from_gcs_sync(t, "x/a.json") == {"a": 1, "b": [1, 2]}
    ucs.upload_to_gcs_sync(t, "x/b.txt", "héllo\n", format="text")
    assert ucs.download_from_gcs_sync(t, "x/b.txt") == "héllo\n"
    ucs.upload_to_gcs_sync(t, "x/raw.bin", b"\x00\x01", format="bytes")
    assert ucs.download_from_gcs_sync(t, "x/raw.bin") == b"\x00\x01"
    df = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    for i, data in enumerate([df, df.to_pandas(), df.to_arrow()]):
        ucs.upload_to_gcs_sync(t, f"x/p{i}.parquet", data)
        back = ucs.download_from_gcs_sync(t, f"x/p{i}.parquet")
        assert back.equals(df), type(data)
    assert ucs.list_files_sync(t, "x/") == sorted(
        ["x/a.json", "x/b.txt", "x/raw.bin", "x/p0.parquet", "x/p1.parquet", "x/p2.parquet"]
    )
    assert ucs.list_files_sync(t, "x/p") == ["x/p0.parquet", "x/p1.parquet", "x/p2.parquet"]
    assert ucs.list_files_sync(t, "nothing/") == []
    with pytest.raises(ValueError, match="not valid JSON|Expecting"):
        ucs.upload_to_gcs_sync(t, "x/bad.json", "{not json")
    assert not ucs.exists_sync(t, "x/bad.json")


def test_async_twins(ucs: UnifiedCloudService) -> None:
    t = layout.target("signals")

    async def go() -> tuple[object, list[str], int]:
        await ucs.upload_to_gcs(t, "a/b.parquet", _trades(5000))
        whole = await ucs.download_from_gcs(t, "a/b.parquet")
        files = await ucs.list_files(t, "a/")
        part = await ucs.read_parquet(t, "a/b.parquet", row_groups=[0], columns=["price"])
        return whole, files, part.table.num_rows

    whole, files, n = asyncio.run(go())
    assert isinstance(whole, pl.DataFrame) and whole.height == 5000
    assert files == ["a/b.parquet"] and n == 5000


def test_missing_object_names_bucket_and_path(ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    path = layout.trades_path("2024-01-01", KEY)
    with pytest.raises(ObjectNotFoundError) as ei:
        ucs.download_from_gcs_sync(t, path)
    assert t.gcs_bucket in str(ei.value) and path in str(ei.value)
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        ucs.download_from_gcs_streaming_sync(t, path, (0, 10))


def test_bad_parquet_objects_are_named(ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    good = ucs.upload_to_gcs_sync(t, "g.parquet", _trades(20_000), row_group_size=2000)
    raw = ucs.download_from_gcs_sync(t, "g.parquet", format="bytes")
    assert len(raw) == good.size
    ucs.upload_to_gcs_sync(t, "empty.parquet", b"", format="bytes")
    ucs.upload_to_gcs_sync(t, "trunc.parquet", raw[: len(raw) // 2], format="bytes")
    corrupt = bytearray(raw)
    corrupt[100:5000] = b"\xff" * 4900
    ucs.upload_to_gcs_sync(t, "corrupt.parquet", bytes(corrupt), format="bytes")
    for name in ("empty.parquet", "trunc.parquet", "corrupt.parquet"):
        with pytest.raises(ParquetRangeError) as ei:
            ucs.download_from_gcs_streaming_sync(t, name, (0, DAY_NS))
        assert name in str(ei.value)
        with pytest.raises(ParquetRangeError):
            ucs.download_from_gcs_sync(t, name)
    with pytest.raises(ParquetRangeError, match="column"):
        ucs.download_from_gcs_streaming_sync(t, "g.parquet", (0, DAY_NS), columns=["nope"])


def test_streaming_equals_filtered_full_read(ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    table = _trades(60_000, seed=3)
    ucs.upload_to_gcs_sync(
        t, "s.parquet", table, row_group_size=1000, write_statistics=["ts_event"]
    )
    ranges = [
        (DAY_NS // 10, DAY_NS // 10 + 3_600 * 10**9),
        (DAY_NS // 2, DAY_NS // 2 + 60 * 10**9),
        (DAY_NS - 10**9, DAY_NS + 10**9),
    ]
    res = ucs.download_from_gcs_streaming_sync(
        t, "s.parquet", ranges, columns=["ts_event", "price"]
    )
    ts = table["ts_event"]
    mask = pc.or_(
        pc.or_(*[pc.and_(pc.greater_equal(ts, s), pc.less(ts, e)) for s, e in ranges[:2]]),
        pc.and_(pc.greater_equal(ts, ranges[2][0]), pc.less(ts, ranges[2][1])),
    )
    expected = table.filter(mask).select(["ts_event", "price"])
    assert res.table.equals(expected)
    assert 0 < res.row_groups_read < res.row_groups_total
    assert res.bytes_read < res.object_size
    # Timestamp-typed columns are accepted as well as int64.
    t2 = table.set_column(0, "ts_event", pc.cast(table["ts_event"], pa.timestamp("ns", "UTC")))
    ucs.upload_to_gcs_sync(t, "s2.parquet", t2, row_group_size=1000)
    res2 = ucs.download_from_gcs_streaming_sync(t, "s2.parquet", ranges[1])
    assert (
        res2.table.num_rows
        == pc.sum(pc.and_(pc.greater_equal(ts, ranges[1][0]), pc.less(ts, ranges[1][1]))).as_py()
    )


def test_one_huge_row_group_still_works_and_reports_cost(ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    table = _trades(30_000)
    ucs.upload_to_gcs_sync(t, "big.parquet", table, row_group_size=1_000_000)
    res = ucs.download_from_gcs_streaming_sync(t, "big.parquet", (0, DAY_NS // 100))
    assert res.row_groups_total == 1 and res.row_groups_read == 1
    assert res.bytes_read > 0.8 * res.object_size
    assert res.table.num_rows == pc.sum(pc.less(table["ts_event"], DAY_NS // 100)).as_py()


def test_local_upload_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ucs = UnifiedCloudService(str(tmp_path))
    t = layout.target("results")
    ucs.upload_to_gcs_sync(t, "r/summary.json", {"v": 1})
    import os

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ucs.upload_to_gcs_sync(t, "r/summary.json", {"v": 2})
    monkeypatch.undo()
    assert ucs.download_from_gcs_sync(t, "r/summary.json") == {"v": 1}
    leftovers = [p.name for p in (tmp_path / t.gcs_bucket / "r").iterdir()]
    assert leftovers == ["summary.json"]


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "/abs", "a\x00b", "tab\there", "..", "", "x" * 300, "ok\n"]
)
def test_path_components_are_validated(bad: str) -> None:
    with pytest.raises(layout.LayoutError):
        layout.result_path(bad, "summary.json")
    with pytest.raises(layout.LayoutError):
        layout.signals_path("2024-01-01", bad)
    with pytest.raises(layout.LayoutError):
        layout.trades_path("2024-01-01", bad)


def test_local_backend_refuses_escaping_paths(tmp_path: Path) -> None:
    ucs = UnifiedCloudService(str(tmp_path / "root"))
    with pytest.raises(Exception, match="escapes"):
        ucs.upload_to_gcs_sync(layout.target("results"), "../../evil.json", {"x": 1})
    assert not (tmp_path / "evil.json").exists()


def test_root_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKTEST_STORAGE_ROOT", str(tmp_path / "envroot"))
    assert UnifiedCloudService().root == str(tmp_path / "envroot")
    assert UnifiedCloudService(f"file://{tmp_path}/x").backend.name == "local"
    monkeypatch.delenv("BACKTEST_STORAGE_ROOT")
    assert UnifiedCloudService().root == "./data"
    with pytest.raises(Exception, match="file:///abs"):
        UnifiedCloudService("file://relative/x")
    with pytest.raises(Exception, match="unsupported scheme"):
        UnifiedCloudService("s3://bucket")


def test_transient_errors_are_retried_then_succeed() -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientStorageError("503", bucket="b", path="p")
        return "ok"

    assert RetryPolicy(attempts=4, initial_s=0.001).call(flaky, "x") == "ok" and calls["n"] == 3
    calls["n"] = -100
    with pytest.raises(TransientStorageError, match="gave up after 2 attempts"):
        RetryPolicy(attempts=2, initial_s=0.001).call(flaky, "x")


def test_permanent_errors_are_not_retried(gcs_ucs: UnifiedCloudService) -> None:
    calls = {"n": 0}
    real = gcs_ucs.backend.read

    def counting(*a: object, **k: object) -> bytes:
        calls["n"] += 1
        return real(*a, **k)  # type: ignore[arg-type]

    gcs_ucs.backend.read = counting  # type: ignore[method-assign]
    with pytest.raises(ObjectNotFoundError):
        gcs_ucs.download_from_gcs_sync(layout.target("ticks"), "missing.parquet")
    assert calls["n"] == 1


class _CountingProxy:
    """A TCP proxy in front of the emulator that counts the bytes the server really sent."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.down_bytes = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self._lock:
                        self.down_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, True), daemon=True).start()


def test_ten_percent_window_reads_at_most_fifteen_percent_on_emulator(
    gcs_ucs: UnifiedCloudService, gcs_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """≥ 1 M rows, multi-row-group object in the emulator; counted by us and by the wire."""
    from backtest_pipeline.data.parquet_io import trades_to_parquet_bytes

    n = 1_200_000
    table = _trades(n, seed=11)
    t = layout.target("ticks")
    path = layout.trades_path("2024-01-01", KEY)
    gcs_ucs.upload_to_gcs_sync(t, path, trades_to_parquet_bytes(table), format="bytes")
    window = (int(DAY_NS * 0.40), int(DAY_NS * 0.50))

    proxy = _CountingProxy(gcs_emulator.port)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
    via_proxy = UnifiedCloudService("gs://")
    res = via_proxy.download_from_gcs_streaming_sync(t, path, window)
    ratio = res.bytes_read / res.object_size
    print(
        f"\n10% window: bytes_read={res.bytes_read} object={res.object_size} ratio={ratio:.4f} "
        f"wire={proxy.down_bytes} row_groups={res.row_groups_read}/{res.row_groups_total}"
    )
    assert res.row_groups_total > 50
    assert ratio <= 0.15
    # The wire carries our payload plus HTTP headers and metadata JSON; never less than we counted.
    assert res.bytes_read <= proxy.down_bytes <= res.bytes_read * 1.05 + 200_000

    full = gcs_ucs.download_from_gcs_sync(t, path)
    expected = full.filter((pl.col("ts_event") >= window[0]) & (pl.col("ts_event") < window[1]))
    assert res.to_polars().select(full.columns).equals(expected)
    assert expected.height > 0.09 * n


# ---- the local root's one-descriptor ranged reads and the dense decode ------------------------


def test_local_read_ranges_equal_single_range_reads(local_ucs: UnifiedCloudService) -> None:
    t = layout.target("ticks")
    ucs = local_ucs
    ucs.upload_to_gcs_sync(t, "r.bin", bytes(range(256)) * 40, format="bytes")
    backend = ucs.backend
    spans = [(0, 10), (100, 100), (5000, 5100), (10_230, 10_240), (10_235, 20_000)]
    got = backend.read_ranges(t.gcs_bucket, "r.bin", spans)  # type: ignore[attr-defined]
    assert got == [backend.read_range(t.gcs_bucket, "r.bin", s, e) for s, e in spans]
    assert len(got[-1]) == 5  # past the end: what is there, like read_range
    with pytest.raises(ObjectNotFoundError, match="missing.bin"):
        backend.read_ranges(t.gcs_bucket, "missing.bin", [(0, 1)])  # type: ignore[attr-defined]


@pytest.mark.parametrize("dense", [True, False])
def test_streaming_read_same_rows_and_bytes_either_way(
    local_ucs: UnifiedCloudService, monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """One-descriptor reads + dense decode give what per-range fetches + sparse file gave."""
    from backtest_pipeline.storage import parquet_ranges

    t = layout.target("ticks")
    table = _trades(40_000, seed=5)
    local_ucs.upload_to_gcs_sync(
        t, "d.parquet", table, row_group_size=1000, write_statistics=["ts_event"]
    )
    ranges = [(DAY_NS // 7, DAY_NS // 7 + 600 * 10**9), (DAY_NS // 3, DAY_NS // 3 + 10**9)]
    cols = ["ts_event", "trade_id", "price"]
    monkeypatch.setattr(parquet_ranges, "_dense_decode_ok", lambda md: dense)
    res = local_ucs.download_from_gcs_streaming_sync(
        t, "d.parquet", ranges, columns=cols, include_prior=True
    )
    # The reference: no multi-range fetcher, no dense buffer (the previous code path).
    monkeypatch.setattr(local_ucs, "_fetch_many", lambda target, path: None)
    monkeypatch.setattr(parquet_ranges, "_dense_decode_ok", lambda md: False)
    ref = local_ucs.download_from_gcs_streaming_sync(
        t, "d.parquet", ranges, columns=cols, include_prior=True
    )
    assert res.table.equals(ref.table)
    assert (res.bytes_read, res.row_groups_read) == (ref.bytes_read, ref.row_groups_read)
    whole = local_ucs.download_from_gcs_streaming_sync(t, "d.parquet", (0, DAY_NS))
    assert whole.table.equals(table)  # a range holding every row: no filtering copy, same rows


def test_range_mask_whole_range_shortcut_matches_general_rule() -> None:
    from backtest_pipeline.storage.parquet_ranges import range_mask

    ts = pa.array(np.array([5, 5, 7, 9, 12], dtype=np.int64))
    assert range_mask(ts, [(5, 13)], include_prior=True).all()
    assert range_mask(ts, [(0, 100), (3, 4)], include_prior=True).all()
    assert range_mask(ts, [(6, 13)], include_prior=True).tolist() == [False, True] + [True] * 3
    assert range_mask(ts, [(5, 12)], include_prior=False).tolist() == [True] * 4 + [False]


def test_parquet_bytes_do_not_depend_on_chunks(local_ucs: UnifiedCloudService) -> None:
    """The same rows give the same object whether memory holds them in one chunk or in 180.

    A 180-day run stitched from two time shards holds its fills in other chunks than the one
    engine does; pyarrow cuts pages at chunk ends, so without normalising the chunks the two
    runs wrote different bytes for identical rows (measured on 180 full days).
    """
    rng = np.random.default_rng(0)
    n = 90_000
    rows = pl.DataFrame(
        {
            "order_id": [f"O-demo-strategy-2024{i // 2:08d}-{i % 3}" for i in range(n)],
            "price": rng.normal(60_000, 100, n).round(1),
        }
    )
    cuts = np.sort(rng.choice(np.arange(1, n), 179, replace=False))
    bounds = zip(np.r_[0, cuts], np.r_[cuts, n], strict=True)
    many = pl.concat([rows.slice(int(a), int(b - a)) for a, b in bounds], rechunk=False)
    assert many.n_chunks() == 180
    t = layout.target("results")
    one = local_ucs.upload_to_gcs_sync(t, "x/one.parquet", rows)
    chunked = local_ucs.upload_to_gcs_sync(t, "x/many.parquet", many)
    assert local_ucs.download_bytes_sync(t, "x/one.parquet") == local_ucs.download_bytes_sync(
        t, "x/many.parquet"
    )
    assert one.size == chunked.size
