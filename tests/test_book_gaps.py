"""A depth sequence gap makes the stored book invalid until the next snapshot, and runs say so.

The captures are synthetic (``local_ns {json}`` lines written here, as in test_data_capture.py):
one REST snapshot, a diff every 100 ms whose predecessor id breaks once, a later snapshot that
resyncs, and a trade every 100 ms. The import must record the invalid period in the book file's
footer; a run must reject the orders arriving inside it, cancel the ones working at its start,
and fill the others from the book in force exactly as without a gap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from _engine_data import BTC, config, signals

from backtest_pipeline import layout
from backtest_pipeline.data import books, importers, parquet_io, readers
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.run.inputs import fetch_book
from backtest_pipeline.run.runner import result_tables, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

DAY = date(2024, 8, 8)
T0_MS = 1_723_111_200_000  # 2024-08-08 10:00:00 UTC
MS = 1_000_000
GAP_K = 200  # diff 200 (t0 + 20 s) names a wrong predecessor
RESYNC_K = 400  # a snapshot between diff 400 and 401 (t0 + 40.05 s) resyncs
N_DIFFS = 600


def _line(ms: int, msg: dict[str, Any]) -> str:
    return f"{ms * MS} {json.dumps(msg, separators=(',', ':'))}"


def _depth(ms: int, U: int, u: int, pu: int, size: float) -> dict[str, Any]:
    data = {"e": "depthUpdate", "E": ms, "T": ms, "s": "BTCUSDT", "U": U, "u": u, "pu": pu,
            "b": [["100.0", f"{size}"]], "a": []}  # fmt: skip
    return {"stream": "btcusdt@depth@0ms", "data": data}


def _snapshot(last: int, ms: int, size: str) -> dict[str, Any]:
    return {
        "lastUpdateId": last, "E": ms, "T": ms,
        "bids": [[f"{100 - i * 0.1:.1f}", size] for i in range(12)],
        "asks": [[f"{100.1 + i * 0.1:.1f}", size] for i in range(12)],
    }  # fmt: skip


def _trade(ms: int, tid: int) -> dict[str, Any]:
    buy = tid % 2 == 0
    data = {"e": "trade", "E": ms, "T": ms, "s": "BTCUSDT", "t": tid,
            "p": "100.1" if buy else "100.0", "q": "0.01", "m": not buy}  # fmt: skip
    return {"stream": "btcusdt@trade", "data": data}


def capture_lines(t0_ms: int, gap: bool = True, resync: bool = True) -> list[str]:
    """Snapshot at t0, diffs every 100 ms (one broken at GAP_K), a resync snapshot, trades."""
    lines = [
        _line(t0_ms, _snapshot(10, t0_ms, "1.0")),
        _line(t0_ms + 1, _depth(t0_ms + 1, 9, 12, 8, 2.0)),
    ]
    u = 12
    for k in range(1, N_DIFFS + 1):
        ms = t0_ms + 100 * k
        pu = u + 7 if gap and k == GAP_K else u
        lines.append(_line(ms, _depth(ms, u + 1, u + 3, pu, 1.0 + k % 7)))
        lines.append(_line(ms + 50, _trade(ms + 50, k)))
        if resync and k == RESYNC_K:
            lines.append(_line(ms + 50, _snapshot(u + 3 + 1, ms + 50, "5.0")))
        u += 3
    return lines


def write_capture(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


GAP_NS = (T0_MS + 100 * GAP_K) * MS
RESYNC_NS = (T0_MS + 100 * RESYNC_K + 50) * MS


def book_uri(ucs: UnifiedCloudService, day: date = DAY) -> str:
    return ucs.uri(layout.target("ticks"), layout.book_depth10_path(day, BTC))


def stored_periods(ucs: UnifiedCloudService, day: date = DAY) -> Any:
    """The footer's key-value metadata, read independently with pyarrow."""
    path = Path(ucs.root) / layout.target("ticks").gcs_bucket / layout.book_depth10_path(day, BTC)
    meta = pq.read_metadata(path).metadata or {}
    raw = meta.get(books.INVALID_PERIODS_KEY.encode())
    return None if raw is None else json.loads(raw)


def test_import_records_the_invalid_period_in_the_footer(
    local_ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    report = importers.import_capture(
        local_ucs, [write_capture(tmp_path / "c.gz", capture_lines(T0_MS))], book_interval_ms=0
    )
    stats = report["data_types"]["book_depth10"]
    assert len(stats["gaps"]) == 1 and stats["gaps"][0]["from_ts"] == GAP_NS
    assert stored_periods(local_ucs) == [[GAP_NS, RESYNC_NS]]
    book = readers.read_book_depth10(local_ucs, DAY, BTC)
    ts = book["ts_event"].to_numpy()
    assert not ((ts >= GAP_NS) & (ts < RESYNC_NS)).any() and RESYNC_NS in ts  # resync written
    # The reader returns it, validated, from the footer it reads anyway: no byte more.
    uri = book_uri(local_ucs)
    window = [(GAP_NS - 2_000 * MS, GAP_NS + 2_000 * MS)]
    table, rec, periods = fetch_book(local_ucs, DAY, BTC, "book_depth10", window, needed_by=1)
    assert periods == [books.InvalidPeriod(GAP_NS, RESYNC_NS, True, uri)]
    # The same read of the same file with the key stripped costs the same bytes, but for the
    # footer's own growth by the key: the periods ride on the footer read anyway.
    stripped_root = tmp_path / "stripped"
    bucket = layout.target("ticks").gcs_bucket
    src = Path(local_ucs.root) / bucket / layout.book_depth10_path(DAY, BTC)
    dst = stripped_root / bucket / layout.book_depth10_path(DAY, BTC)
    dst.parent.mkdir(parents=True)
    dst.write_bytes(
        parquet_io.book_depth10_to_parquet_bytes(pq.read_table(src).replace_schema_metadata(None))
    )
    _t, rec2 = readers_fetch_ticks(UnifiedCloudService(str(stripped_root)), window)
    grown = rec.bytes_total - rec2.bytes_total
    assert 0 < grown < 400 and rec.bytes_read - rec2.bytes_read == grown
    assert periods[0].describe() == (
        f"book invalid (depth sequence gap) 2024-08-08T10:00:20.000Z..10:00:40.050Z in {uri}"
    )


def readers_fetch_ticks(ucs: UnifiedCloudService, window: list[tuple[int, int]]) -> Any:
    from backtest_pipeline.run.inputs import fetch_ticks

    return fetch_ticks(ucs, DAY, BTC, "book_depth10", window, needed_by=1)


def test_no_gap_no_key(local_ucs: UnifiedCloudService, tmp_path: Path) -> None:
    lines = capture_lines(T0_MS, gap=False, resync=False)
    importers.import_capture(local_ucs, [write_capture(tmp_path / "ok.gz", lines)])
    assert stored_periods(local_ucs) is None
    # Exactly the bytes the writer gives without metadata: files written before are unchanged.
    book = readers.read_book_depth10(local_ucs, DAY, BTC)
    stored = (
        Path(local_ucs.root)
        / layout.target("ticks").gcs_bucket
        / layout.book_depth10_path(DAY, BTC)
    ).read_bytes()
    assert stored == parquet_io.book_depth10_to_parquet_bytes(book)


def test_never_resynced_period_ends_null(local_ucs: UnifiedCloudService, tmp_path: Path) -> None:
    lines = capture_lines(T0_MS, resync=False)
    importers.import_capture(local_ucs, [write_capture(tmp_path / "n.gz", lines)])
    assert stored_periods(local_ucs) == [[GAP_NS, None]]
    _lo, hi = layout.day_bounds_ns(DAY)
    _t, _r, periods = fetch_book(
        local_ucs, DAY, BTC, "book_depth10", [(GAP_NS - 10**9, GAP_NS)], needed_by=1
    )
    assert periods == [books.InvalidPeriod(GAP_NS, hi, False, book_uri(local_ucs))]
    assert "(no valid snapshot again that day)" in periods[0].describe()


def test_period_across_midnight_is_in_both_day_files(
    local_ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    midnight_ms = layout.day_bounds_ns(DAY)[1] // MS
    t0 = midnight_ms - 100 * GAP_K - 10_000  # the gap 10 s before midnight, resync 10 s after
    lines = capture_lines(t0)
    report = importers.import_capture(local_ucs, [write_capture(tmp_path / "m.gz", lines)])
    entries = {
        d["day"]: d.get("book_invalid_periods")
        for d in report["days"]
        if d.get("data_type") == "book_depth10"
    }
    assert entries == {
        "2024-08-08": [["2024-08-08T23:59:50.000000000Z", "null"]],
        "2024-08-09": [["2024-08-09T00:00:00.000000000Z", "2024-08-09T00:00:10.050000000Z"]],
    }
    gap_ns, resync_ns = (t0 + 100 * GAP_K) * MS, (t0 + 100 * RESYNC_K + 50) * MS
    next_day = date(2024, 8, 9)
    assert gap_ns < midnight_ms * MS < resync_ns
    assert stored_periods(local_ucs, DAY) == [[gap_ns, None]]
    assert stored_periods(local_ucs, next_day) == [[midnight_ms * MS, resync_ns]]
    for day, expect in ((DAY, (gap_ns, midnight_ms * MS, False)),
                        (next_day, (midnight_ms * MS, resync_ns, True))):  # fmt: skip
        _t, _r, periods = fetch_book(
            local_ucs, day, BTC, "book_depth10", [(expect[1] - 10**9, expect[1])], needed_by=1
        )
        assert periods == [books.InvalidPeriod(*expect, book_uri(local_ucs, day))]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "is not JSON"),
        (b'{"a": 1}', "must be a list"),
        (b"[[5, 4]]", "not a non-empty period inside the day"),
        (b"[[1, 2]]", "not a non-empty period inside the day"),
        (b'[["1", 2]]', "must be \\[start_ns, end_ns or null\\]"),
    ],
)
def test_malformed_periods_are_an_error_naming_the_object(raw: bytes, problem: str) -> None:
    lo, hi = layout.day_bounds_ns(DAY)
    raw = raw.replace(b"5, 4", f"{lo + 5}, {lo + 4}".encode())
    with pytest.raises(DataValidationError, match=f"gs://x/y.*{problem}"):
        books.decode_invalid_periods({books.INVALID_PERIODS_KEY.encode(): raw}, "gs://x/y", lo, hi)


def test_unsorted_periods_are_refused() -> None:
    lo, hi = layout.day_bounds_ns(DAY)
    raw = json.dumps([[lo + 10, lo + 20], [lo + 15, None]]).encode()
    with pytest.raises(DataValidationError, match="overlaps or precedes"):
        books.decode_invalid_periods({books.INVALID_PERIODS_KEY.encode(): raw}, "gs://x/y", lo, hi)


# ---- the run --------------------------------------------------------------------------------


def _signals_file(tmp_path: Path) -> Path:
    s = 1_000 * MS
    t0 = T0_MS * MS
    rows = [
        {"signal_id": "before", "ts_event": t0 + 5 * s, "target_position": 0.1},
        # A passive buy far below the market, working when the gap starts (window 20 s).
        {"signal_id": "resting", "ts_event": t0 + 15 * s, "target_position": 1.1, "algo": "LIMIT",
         "limit_price": 99.0, "execution_window_s": 20.0},
        {"signal_id": "inside", "ts_event": t0 + 30 * s, "target_position": 0.0},
        {"signal_id": "after", "ts_event": t0 + 50 * s, "target_position": 0.3},
    ]  # fmt: skip
    path = tmp_path / "signals.parquet"
    signals(*({"instrument_key": BTC, **r} for r in rows)).write_parquet(path)
    return path


def _run(ucs: UnifiedCloudService, tmp_path: Path, lines: list[str]) -> Any:
    importers.import_capture(ucs, [write_capture(tmp_path / "run.gz", lines)], book_interval_ms=0)
    importers.import_signals(ucs, _signals_file(tmp_path), "gaps")
    cfg = config([BTC], strategy_id="gaps", market_data="depth")
    return run_backtest(cfg, DAY, DAY, ucs=ucs, write_results=False)


def test_orders_inside_the_gap_are_rejected_the_others_fill(
    local_ucs: UnifiedCloudService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        res = _run(local_ucs, tmp_path, capture_lines(T0_MS))
    reason = f"book invalid (depth sequence gap) 2024-08-08T10:00:20.000Z..10:00:40.050Z in {book_uri(local_ucs)}"
    orders = res.orders.sort("created_at")
    by_op = {r["operation_id"]: r for r in orders.iter_rows(named=True)}
    ops = res.operations.select("operation_id", "signal_id", "status")
    sig_of = dict(zip(ops["operation_id"], ops["signal_id"], strict=True))
    status = {sig_of[o]: r["status"] for o, r in by_op.items()}
    why = {sig_of[o]: r["rejection_reason"] for o, r in by_op.items()}
    assert status == {"before": "FILLED", "resting": "CANCELED", "inside": "REJECTED",
                      "after": "FILLED"}  # fmt: skip
    assert why["inside"] == reason and why["resting"] == reason
    assert why["before"] is None and why["after"] is None
    # The resting order's cancel reached the venue by the gap start; the rejected one never
    # reached Nautilus (a risk-path id).
    resting = next(r for o, r in by_op.items() if sig_of[o] == "resting")
    assert resting["updated_at"] <= GAP_NS
    inside = next(r for o, r in by_op.items() if sig_of[o] == "inside")
    assert inside["order_id"].startswith("R-")
    op_status = dict(zip(ops["signal_id"], ops["status"], strict=True))
    assert op_status["inside"] == "REJECTED"
    stats = res.summary["execution_stats"]
    assert stats["orders_rejected_book_invalid"] == 1 and stats["orders_canceled_book_invalid"] == 1
    assert stats["orders_rejected"] == orders.filter(pl.col("status") == "REJECTED").height == 1
    # Fills before and after: the best ask of the stored snapshot in force at arrival.
    book = readers.read_book_depth10(local_ucs, DAY, BTC)
    bts = book["ts_event"].to_numpy()
    for fill in res.fills.iter_rows(named=True):
        i = int(np.searchsorted(bts, fill["ts_event"], side="right")) - 1
        assert fill["side"] == "BUY" and fill["price"] == book["ask_price_0"][i]
        assert not (GAP_NS <= fill["ts_event"] < RESYNC_NS)
    assert res.fills["quantity"].sum() == pytest.approx(0.3)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("rejected: " + reason in m for m in warned)
    assert any("working order(s) cancelled: " + reason in m for m in warned)


def _result_hashes(res: Any) -> dict[str, str]:
    out = {}
    for name, table in result_tables(res).items():
        if name in ("orders.parquet", "fills.parquet", "positions.parquet", "equity_curve.parquet"):
            out[name] = hashlib.sha256(parquet_io.table_to_parquet_bytes(table)).hexdigest()
    return out


def test_a_file_without_the_key_runs_as_before(
    tmp_path: Path, local_ucs: UnifiedCloudService
) -> None:
    """Same gap capture, the key stripped from the footer: the run is the old, silent one —
    and a capture without a gap gives the same results whether or not the reader knows the key."""
    res_gap = _run(local_ucs, tmp_path, capture_lines(T0_MS))
    path = (
        Path(local_ucs.root)
        / layout.target("ticks").gcs_bucket
        / layout.book_depth10_path(DAY, BTC)
    )
    table = pq.read_table(path)
    stripped = table.replace_schema_metadata(None)
    path.write_bytes(parquet_io.book_depth10_to_parquet_bytes(stripped))
    assert stored_periods(local_ucs) is None
    cfg = config([BTC], strategy_id="gaps", market_data="depth")
    res_old = run_backtest(
        cfg, DAY, DAY, ucs=UnifiedCloudService(local_ucs.root), write_results=False
    )
    assert res_old.summary["execution_stats"]["orders_rejected_book_invalid"] == 0
    assert res_old.orders.filter(pl.col("status") == "REJECTED").height == 0
    assert _result_hashes(res_old) != _result_hashes(res_gap)
    # The stripped file runs the old way: the order inside the gap fills from the stale book.
    inside = res_old.orders.filter(pl.col("created_at") == T0_MS * MS + 30 * 1_000 * MS)
    assert inside["status"].to_list() == ["FILLED"]


def test_a_run_across_midnight_rejects_on_both_days(
    local_ucs: UnifiedCloudService, tmp_path: Path
) -> None:
    """Gap 10 s before midnight, resync 10 s after: each day's order inside it is rejected with
    its own day file named; orders before and after fill."""
    midnight = layout.day_bounds_ns(DAY)[1]
    t0 = midnight // MS - 100 * GAP_K - 10_000
    lines = capture_lines(t0)
    importers.import_capture(local_ucs, [write_capture(tmp_path / "m.gz", lines)])
    s = 1_000 * MS
    rows = [
        {"signal_id": "before", "ts_event": midnight - 15 * s, "target_position": 0.1},
        {"signal_id": "late", "ts_event": midnight - 5 * s, "target_position": 0.2},
        {"signal_id": "early", "ts_event": midnight + 5 * s, "target_position": 0.3},
        {"signal_id": "after", "ts_event": midnight + 15 * s, "target_position": 0.4},
    ]
    path = tmp_path / "signals.parquet"
    signals(*({"instrument_key": BTC, **r} for r in rows)).write_parquet(path)
    importers.import_signals(local_ucs, path, "gaps")
    cfg = config([BTC], strategy_id="gaps", market_data="depth")
    next_day = date(2024, 8, 9)
    res = run_backtest(cfg, DAY, next_day, ucs=local_ucs, write_results=False)
    ops = res.operations.select("operation_id", "signal_id")
    sig_of = dict(zip(ops["operation_id"], ops["signal_id"], strict=True))
    got = {sig_of[r["operation_id"]]: (r["status"], r["rejection_reason"])
           for r in res.orders.iter_rows(named=True)}  # fmt: skip
    first = f"2024-08-08T23:59:50.000Z..2024-08-09T00:00:00.000Z (no valid snapshot again that day) in {book_uri(local_ucs, DAY)}"
    second = f"2024-08-09T00:00:00.000Z..00:00:10.050Z in {book_uri(local_ucs, next_day)}"
    assert got == {
        "before": ("FILLED", None),
        "late": ("REJECTED", f"book invalid (depth sequence gap) {first}"),
        "early": ("REJECTED", f"book invalid (depth sequence gap) {second}"),
        "after": ("FILLED", None),
    }
    assert res.summary["execution_stats"]["orders_rejected_book_invalid"] == 2
    # 0.1 before; the two rejected change nothing; after buys 0.4 − 0.1 = 0.3.
    assert res.fills["quantity"].sum() == pytest.approx(0.4)
