"""Binance websocket captures (``local_ns {json}`` a line) → trades, quotes and a rebuilt book.

Collectors (hftbacktest's among them) write one message per line, prefixed by the local receive
time in ns: combined-stream messages ``{"stream": "btcusdt@depth@0ms", "data": {...}}`` (or the
bare ``data`` objects) for ``@trade`` / ``@aggTrade`` / ``@bookTicker`` / ``@depth``, and the REST
depth snapshot ``{"lastUpdateId": …, "bids": …, "asks": …}`` as a line of its own.

The book follows Binance's update-id rules (docs/market-data.md):

- diffs older than the snapshot are dropped (USD-M: ``u < lastUpdateId``; spot: ``u <= lastUpdateId``);
- the first diff applied must straddle it (USD-M ``U <= lastUpdateId <= u``; spot
  ``U <= lastUpdateId + 1 <= u``);
- then every diff must continue the previous one (USD-M ``pu == previous u``; spot
  ``U == previous u + 1``).

A break is a *gap*: the book is unknown from that diff until the next snapshot line, no snapshot
is written in between, and the gap (times, diffs lost) goes into the import report. Parsing is
vectorised with polars (JSON decoded per message type with a fixed schema); the sequence check is
vectorised per snapshot segment; the book itself is rebuilt by :mod:`books`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from backtest_pipeline.data import books, schemas
from backtest_pipeline.data.schemas import DataValidationError

_LEVELS_T: Final = pl.List(pl.List(pl.String))
_DEPTH_T: Final = pl.Struct(
    {
        "E": pl.Int64,
        "T": pl.Int64,
        "s": pl.String,
        "U": pl.Int64,
        "u": pl.Int64,
        "pu": pl.Int64,
        "b": _LEVELS_T,
        "a": _LEVELS_T,
    }
)
_SNAPSHOT_T: Final = pl.Struct(
    {"lastUpdateId": pl.Int64, "E": pl.Int64, "T": pl.Int64, "bids": _LEVELS_T, "asks": _LEVELS_T}
)
_TICKER_T: Final = pl.Struct(
    {
        "u": pl.Int64,
        "s": pl.String,
        "b": pl.String,
        "B": pl.String,
        "a": pl.String,
        "A": pl.String,
        "T": pl.Int64,
        "E": pl.Int64,
    }
)
_TRADE_T: Final = pl.Struct(
    {
        "E": pl.Int64,
        "T": pl.Int64,
        "s": pl.String,
        "t": pl.Int64,
        "a": pl.Int64,
        "p": pl.String,
        "q": pl.String,
        "m": pl.Boolean,
    }
)


@dataclass
class Capture:
    """The parsed messages of one or more capture files, in receive order, by type."""

    depth: pl.DataFrame  # line, ts_init, E, T, s, U, u, pu, b, a
    snapshots: pl.DataFrame  # line, ts_init, lastUpdateId, E, T, bids, asks
    tickers: pl.DataFrame  # line, ts_init, u, s, b, B, a, A, T, E
    trades: pl.DataFrame  # line, ts_init, kind, E, T, s, t, a, p, q, m
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    clock_offset_ns: int = 0  # median (exchange time - local time) over messages that have both
    spot: bool = False


def read_lines(files: list[Path]) -> pl.DataFrame:
    """Lines of all files in the given order, with the global line number and the file."""
    frames = []
    offset = 0
    for f in files:
        data = Path(f).read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise DataValidationError(str(f), f"corrupt gzip file: {exc}") from exc
        text = data.decode("utf-8", "replace").splitlines()
        df = pl.DataFrame({"raw": pl.Series(text, dtype=pl.String)}).with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64) + offset).alias("line"),
            pl.lit(str(f)).alias("file"),
        )
        offset += df.height
        frames.append(df)
    return pl.concat(frames) if frames else pl.DataFrame()


def parse_capture(files: list[Path]) -> Capture:
    """Split and decode the messages; malformed lines are counted, never guessed at."""
    df = read_lines(files)
    name = str(files[0]) if len(files) == 1 else f"{len(files)} capture files"
    if df.height == 0:
        raise DataValidationError(name, "the capture is empty (no lines)")
    df = df.filter(pl.col("raw").str.strip_chars().str.len_bytes() > 0)
    parts = pl.col("raw").str.split_exact(" ", 1).struct.rename_fields(["ns", "js"])
    df = df.with_columns(parts.alias("p")).unnest("p")
    df = df.with_columns(pl.col("ns").str.to_integer(strict=False).alias("ts_init"))
    bad = df.filter(pl.col("ts_init").is_null() | pl.col("js").is_null())
    if bad.height == df.height:
        raise DataValidationError(
            name,
            f"not a capture: expected lines `local_ns {{json}}`, line 1 is {df['raw'][0][:80]!r}",
        )
    skipped: dict[str, int] = {}
    if bad.height:
        skipped["malformed_line"] = bad.height
    df = df.filter(pl.col("ts_init").is_not_null() & pl.col("js").is_not_null())
    js = pl.col("js")
    pos = js.str.find('"data":', literal=True)
    df = df.with_columns(
        js.str.extract(r'^\{"stream":"([^"]*)"').alias("stream"),
        pl.when(pos.is_not_null())
        .then(js.str.slice(pos + 7, js.str.len_bytes() - pos - 8))
        .otherwise(js)
        .alias("data"),
    )
    event = pl.col("data").str.extract(r'"e":"(\w+)"')
    stream = pl.col("stream").fill_null("")
    kind = (
        pl.when(pl.col("data").str.contains('"lastUpdateId"', literal=True))
        .then(pl.lit("snapshot"))
        .when(stream.str.contains("@depth") | (event == "depthUpdate"))
        .then(pl.lit("depth"))
        .when(stream.str.ends_with("@bookTicker") | (event == "bookTicker"))
        .then(pl.lit("ticker"))
        .when(stream.str.ends_with("@aggTrade") | (event == "aggTrade"))
        .then(pl.lit("aggTrade"))
        .when(stream.str.ends_with("@trade") | (event == "trade"))
        .then(pl.lit("trade"))
        .when(event.is_null() & pl.col("data").str.contains(r'"u":\d+.*"b":"'))
        .then(pl.lit("ticker"))  # spot bookTicker: no "e" field
        .otherwise(pl.lit("other"))
    )
    df = df.with_columns(kind.alias("kind")).select("line", "file", "ts_init", "kind", "data")
    n_other = int((df["kind"] == "other").sum())
    if n_other:
        skipped["other_stream"] = n_other

    def decode(kinds: list[str], dtype: pl.Struct) -> pl.DataFrame:
        sub = df.filter(pl.col("kind").is_in(kinds))
        try:
            return sub.with_columns(pl.col("data").str.json_decode(dtype).alias("d")).unnest("d")
        except Exception as exc:  # a message that does not fit its type's schema
            raise DataValidationError(
                name, f"cannot decode the {'/'.join(kinds)} messages: {exc}"
            ) from exc

    depth = decode(["depth"], _DEPTH_T).drop("data")
    snaps = decode(["snapshot"], _SNAPSHOT_T).drop("data")
    tickers = decode(["ticker"], _TICKER_T).drop("data")
    trades = decode(["trade", "aggTrade"], _TRADE_T).drop("data")
    timed = pl.concat(
        [
            t.select("ts_init", pl.col("E").alias("E")).drop_nulls()
            for t in (depth, trades, tickers)
            if "E" in t.columns
        ]
    )
    offset = (
        int(timed.select((pl.col("E") * 1_000_000 - pl.col("ts_init")).median()).item())
        if timed.height
        else 0
    )
    spot = bool(depth.height) and depth["pu"].null_count() == depth.height
    return Capture(
        depth=depth,
        snapshots=snaps,
        tickers=tickers,
        trades=trades,
        lines=df.height + bad.height,
        skipped=skipped,
        clock_offset_ns=offset,
        spot=spot,
    )


def check_symbol(cap: Capture, venue_symbol: str, name: str) -> None:
    """Every message must be for the instrument being imported: another symbol is an error."""
    for what, frame in (("depth", cap.depth), ("bookTicker", cap.tickers), ("trade", cap.trades)):
        if frame.height == 0 or "s" not in frame.columns:
            continue
        other = frame.filter(pl.col("s").is_not_null() & (pl.col("s") != venue_symbol))
        if other.height:
            raise DataValidationError(
                name,
                f"{what} messages for symbol {other['s'][0]!r} (line {other['line'][0] + 1}, "
                f"{other.height} such messages) in a capture imported as {venue_symbol!r}",
                column="s",
                row=int(other["line"][0]),
                value=other["s"][0],
            )


def exchange_ns(frame: pl.DataFrame, offset_ns: int) -> pl.Expr:
    """Exchange time in ns: ``T`` (transaction time), else ``E`` (event time), else the local
    receive time corrected by the capture's measured clock offset (spot bookTicker and REST
    snapshots carry no exchange time)."""
    t = pl.col("T") if "T" in frame.columns else pl.lit(None, pl.Int64)
    e = pl.col("E") if "E" in frame.columns else pl.lit(None, pl.Int64)
    return pl.coalesce(t * 1_000_000, e * 1_000_000, pl.col("ts_init") + offset_ns)


def trades_frame(cap: Capture, report: dict[str, Any]) -> pl.DataFrame:
    """@trade messages (or @aggTrade when no @trade stream was captured) → canonical trades."""
    tr = cap.trades
    if tr.height == 0:
        return schemas.empty_frame(schemas.TRADES_SCHEMA)
    has_trade = bool((tr["kind"] == "trade").any())
    if has_trade and bool((tr["kind"] == "aggTrade").any()):
        n = int((tr["kind"] == "aggTrade").sum())
        report["dropped"]["aggTrade_with_trade_stream"] = n  # the same fills, aggregated
    tr = tr.filter(pl.col("kind") == ("trade" if has_trade else "aggTrade"))
    ts = exchange_ns(tr, cap.clock_offset_ns)
    return tr.select(
        ts.alias("ts_event"),
        "ts_init",
        (pl.col("t") if has_trade else pl.col("a")).cast(pl.String).alias("trade_id"),
        pl.col("p").cast(pl.Float64).alias("price"),
        pl.col("q").cast(pl.Float64).alias("size"),
        pl.when(pl.col("m")).then(pl.lit("sell")).otherwise(pl.lit("buy")).alias("side"),
    )


def quotes_frame(cap: Capture) -> pl.DataFrame:
    """@bookTicker messages → quotes (unsorted, unvalidated), with their update id kept."""
    tk = cap.tickers
    if tk.height == 0:
        return schemas.empty_frame(schemas.QUOTES_SCHEMA).with_columns(
            pl.lit(0, pl.Int64).alias("u")
        )
    return tk.select(
        exchange_ns(tk, cap.clock_offset_ns).alias("ts_event"),
        "ts_init",
        pl.col("b").cast(pl.Float64).alias("bid_price"),
        pl.col("B").cast(pl.Float64).alias("bid_size"),
        pl.col("a").cast(pl.Float64).alias("ask_price"),
        pl.col("A").cast(pl.Float64).alias("ask_size"),
        "u",
    )


@dataclass
class Sequenced:
    """Which depth messages apply, and every gap found, in receive order."""

    applied: pl.DataFrame  # depth rows that apply (+ ``snap``: segment id)
    gaps: list[dict[str, Any]]
    dropped: dict[str, int]


def sequence(cap: Capture) -> Sequenced:
    """Binance's update-id rules per snapshot segment, vectorised (module docstring).

    A diff belongs to the latest snapshot it is not older than (USD-M ``u >= lastUpdateId``,
    spot ``u > lastUpdateId``), whether it was received before or after the snapshot line:
    collectors buffer the stream while the REST request is in flight, so the diff that
    straddles ``lastUpdateId`` usually arrives *before* the snapshot line. Segments are then
    checked independently: the first diff must straddle, the rest must be continuous.
    """
    depth = cap.depth.sort("line")
    snaps = cap.snapshots.sort("lastUpdateId")
    dropped: dict[str, int] = {}
    gaps: list[dict[str, Any]] = []
    if depth.height == 0:
        return Sequenced(depth.with_columns(pl.lit(0).alias("snap")), gaps, dropped)
    last_ids = snaps["lastUpdateId"].to_numpy()
    U = depth["U"].to_numpy()
    u = depth["u"].to_numpy()
    pu = depth["pu"].fill_null(-1).to_numpy()
    seg = np.searchsorted(last_ids, u, side="left" if cap.spot else "right") - 1
    before = int((seg < 0).sum())
    if before:
        dropped["depth_before_first_snapshot"] = before
    keep = np.zeros(depth.height, dtype=bool)
    ts = depth.select(exchange_ns(depth, cap.clock_offset_ns)).to_series().to_numpy()
    for k in range(len(last_ids)):  # one iteration per snapshot, not per message
        idx = np.flatnonzero(seg == k)
        if idx.size == 0:
            continue
        want = int(last_ids[k]) + 1 if cap.spot else int(last_ids[k])
        if not (U[idx[0]] <= want <= u[idx[0]]):
            _gap(gaps, ts, idx, 0, "first diff after the snapshot does not straddle lastUpdateId")
            continue
        # USD-M: each diff names its predecessor (pu); spot: ids are consecutive.
        cont = (U[idx[1:]] == u[idx[:-1]] + 1) if cap.spot else (pu[idx[1:]] == u[idx[:-1]])
        breaks = np.flatnonzero(~cont)
        if breaks.size:
            b = int(breaks[0]) + 1
            _gap(gaps, ts, idx, b, "update ids not continuous")
            keep[idx[:b]] = True
        else:
            keep[idx] = True
    lost = int(sum(g["diffs_dropped"] for g in gaps))
    if lost:
        dropped["depth_in_sequence_gap"] = lost
    snap_line = snaps["line"].to_numpy()
    applied = (
        depth.with_columns(
            pl.Series("snap", seg),
            pl.Series("snap_line", snap_line[np.maximum(seg, 0)] if len(snap_line) else seg),
        )
        .filter(pl.Series(keep))
        .drop("snap_line")
    )
    return Sequenced(applied, gaps, dropped)


def _gap(gaps: list[dict[str, Any]], ts: np.ndarray, idx: np.ndarray, at: int, why: str) -> None:
    first_bad = idx[at]
    gaps.append(
        {
            "reason": why,
            "from_ts": int(ts[first_bad]),
            "from_iso": schemas.ns_to_iso(int(ts[first_bad])),
            "last_good_ts": int(ts[idx[at - 1]]) if at > 0 else None,
            "diffs_dropped": int(idx.size - at),
            "until": "next snapshot line",
        }
    )


def level_updates(cap: Capture, seq: Sequenced) -> books.LevelUpdates:
    """Applied snapshots + diffs as one ordered stream of level updates for :func:`books.rebuild`."""
    snaps = applied_snapshots(cap, seq)
    off = cap.clock_offset_ns
    msgs = pl.concat(
        [
            snaps.select(
                "snap",
                pl.lit(-1, pl.Int64).alias("line"),
                exchange_ns(snaps, off).alias("ts_event"),
                "ts_init",
                pl.lit(True).alias("reset"),
                pl.col("bids").alias("b"),
                pl.col("asks").alias("a"),
            ),
            seq.applied.select(
                "snap",
                "line",
                exchange_ns(seq.applied, off).alias("ts_event"),
                "ts_init",
                pl.lit(False).alias("reset"),
                "b",
                "a",
            ),
        ]
    ).sort("snap", "line")  # each snapshot, then the diffs applied on it, in receive order
    msgs = msgs.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("msg"))
    lv = pl.concat(
        [
            msgs.select("msg", pl.col(side).alias("lv"), pl.lit(side == "a").alias("is_ask"))
            .explode("lv")
            .drop_nulls("lv")
            for side in ("b", "a")
        ]
    ).sort("msg", maintain_order=True)
    lv = lv.select(
        "msg",
        "is_ask",
        pl.col("lv").list.get(0).cast(pl.Float64).alias("price"),
        pl.col("lv").list.get(1).cast(pl.Float64).alias("size"),
    )
    return books.LevelUpdates(
        msg=lv["msg"].to_numpy(),
        is_ask=lv["is_ask"].to_numpy(),
        price=lv["price"].to_numpy(),
        size=lv["size"].to_numpy(),
        msg_ts_event=msgs["ts_event"].to_numpy(),
        msg_ts_init=msgs["ts_init"].to_numpy(),
        msg_reset=msgs["reset"].to_numpy(),
    )


def applied_snapshots(cap: Capture, seq: Sequenced) -> pl.DataFrame:
    """The snapshot lines that start a segment with at least one applied diff (+ ``snap`` id)."""
    snaps = cap.snapshots.sort("lastUpdateId").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("snap")
    )
    return snaps.filter(pl.col("snap").is_in(seq.applied["snap"].unique().to_list()))


def applied_update_ids(cap: Capture, seq: Sequenced) -> np.ndarray:
    """Per message of :func:`level_updates`, the update id the book stands at after it."""
    snaps = applied_snapshots(cap, seq)
    ids = pl.concat(
        [
            snaps.select(
                "snap", pl.lit(-1, pl.Int64).alias("line"), pl.col("lastUpdateId").alias("id")
            ),
            seq.applied.select("snap", "line", pl.col("u").alias("id")),
        ]
    ).sort("snap", "line")
    return ids["id"].to_numpy()
