"""Importers of public trade data (Tardis.dev, Binance public data) and of user signals.

Whatever the source, the output is the canonical layout: one trades file per instrument and UTC
day, sorted by ``ts_event`` (stable, so same-timestamp trades keep the venue's order), written with
the product's Parquet settings, and the instrument added to that day's ``instruments.parquet`` when
missing (existing rows are kept untouched). An existing day file is *replaced*, with a warning in
the log and in the report: an import is the full statement of that day, and merging silently would
make a re-import after a correction impossible to reason about.

All parsing is vectorised (polars ``read_csv`` + expressions); nothing loops over rows. Every error
names the input file (and the destination object where relevant) and the offending column/row.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zipfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.data import books, capture, parquet_io, readers, schemas
from backtest_pipeline.data.schemas import DataValidationError

log = logging.getLogger(__name__)

_DAY_NS: Final = 86_400 * 1_000_000_000

# Tardis exchange id -> (venue, instrument type of its plain symbols).
TARDIS_EXCHANGES: Final[dict[str, tuple[str, str]]] = {
    "binance-futures": ("BINANCE-FUTURES", "PERPETUAL"),
    "binance": ("BINANCE", "SPOT"),
    "binance-us": ("BINANCE-US", "SPOT"),
    "bybit": ("BYBIT", "PERPETUAL"),
    "bybit-spot": ("BYBIT", "SPOT"),
    "okex-swap": ("OKX", "PERPETUAL"),
    "okex": ("OKX", "SPOT"),
    "bitmex": ("BITMEX", "PERPETUAL"),
    "deribit": ("DERIBIT", "PERPETUAL"),
    "coinbase": ("COINBASE", "SPOT"),
    "kraken": ("KRAKEN", "SPOT"),
    "bitfinex": ("BITFINEX", "SPOT"),
}
# Quote suffixes, longest first. TUSD is left out on purpose: `XBTUSD`/`BTCUSD` would split as
# `XB`/`BC` + `TUSD`; such symbols need a separator (`BTC-TUSD`).
QUOTES: Final[tuple[str, ...]] = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "USD",
    "EUR",
    "BTC",
    "ETH",
    "BNB",
)
TARDIS_COLUMNS: Final[tuple[str, ...]] = (
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "id",
    "side",
    "price",
    "amount",
)
BINANCE_TRADES_COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "price",
    "qty",
    "quote_qty",
    "time",
    "is_buyer_maker",
    "is_best_match",
)
BINANCE_AGG_COLUMNS: Final[tuple[str, ...]] = (
    "agg_id",
    "price",
    "qty",
    "first_id",
    "last_id",
    "time",
    "is_buyer_maker",
    "is_best_match",
)
BinanceKind = Literal["trades", "aggTrades"]


# ---- file access ---------------------------------------------------------------------------


def read_input_bytes(path: Path) -> bytes:
    """Raw CSV bytes of a plain, gzip or single-CSV ZIP file (detected by magic bytes)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: input file does not exist") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataValidationError(str(path), f"corrupt gzip file: {exc}") from exc
    elif data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = [
                    n
                    for n in zf.namelist()
                    if not n.endswith("/")
                    and not n.startswith("__MACOSX")
                    and not n.endswith(".CHECKSUM")
                ]
                if len(members) != 1:
                    raise DataValidationError(
                        str(path), f"expected a ZIP holding exactly one CSV file, found {members}"
                    )
                data = zf.read(members[0])
        except zipfile.BadZipFile as exc:
            raise DataValidationError(str(path), f"corrupt ZIP file: {exc}") from exc
    if not data.strip():
        raise DataValidationError(str(path), "the file is empty (no rows)")
    return data


def _cast_checked(df: pl.DataFrame, column: str, dtype: Any, name: str, expected: str) -> pl.Expr:
    """Cast a string column; a value that does not parse is an error naming row and value."""
    c = pl.col(column)
    casted = c.str.strip_chars().cast(dtype, strict=False)
    _reject_first(df, c.is_not_null() & casted.is_null(), column, name, expected)
    return casted.alias(column)


def _replacing(
    ucs: Any,
    target: layout.CloudTarget,
    path: str,
    what: str,
    rows: int,
    report: dict[str, Any],
) -> bool:
    """Whether an import overwrites an existing object; if so the report and the log say so, so
    that re-importing a day never silently replaces what a user had there."""
    if not ucs.exists_sync(target, path):
        return False
    head, _, kind = what.rpartition(": the ")
    msg = f"{head}: replaced the existing {kind} file ({rows} rows imported)"
    log.warning(msg)
    report["warnings"].append(msg)
    return True


def _reject_first(df: pl.DataFrame, bad: pl.Expr, column: str, name: str, expected: str) -> None:
    """The first row where ``bad`` holds (or is null) is an error naming the row and its value."""
    row = df.select(bad.fill_null(True).arg_true().first()).item()
    if row is not None:
        raise DataValidationError(
            name,
            f"expected {expected}, found {df[column][row]!r} at row {row}",
            column=column,
            row=row,
        )


def _time_unit_to_ns(df: pl.DataFrame, column: str, name: str) -> tuple[pl.Expr, str]:
    """Binance switched spot files from ms to µs in 2025: decide per file, by magnitude."""
    lo, hi = df.select(pl.col(column).min().alias("lo"), pl.col(column).max().alias("hi")).row(0)

    def unit(v: int) -> str:
        return "ms" if v < 10**14 else "us" if v < 10**17 else "ns"

    if lo is None:
        raise DataValidationError(name, "no timestamps", column=column)
    if lo <= 0:
        raise DataValidationError(name, f"expected epoch timestamps > 0, found {lo}", column=column)
    u_lo, u_hi = unit(lo), unit(hi)
    if u_lo != u_hi:
        raise DataValidationError(
            name, f"timestamps mix units ({lo} looks like {u_lo}, {hi} like {u_hi})", column=column
        )
    factor = {"ms": 1_000_000, "us": 1_000, "ns": 1}[u_lo]
    return (pl.col(column) * factor).alias(column), u_lo


# ---- symbol mapping ------------------------------------------------------------------------


def split_symbol(symbol: str, where: str = "") -> tuple[str, str]:
    """`BTCUSDT` / `BTC-USDT` / `BTC-USDT-SWAP` / `XBTUSD` / `BTC-PERPETUAL` → (base, quote)."""
    s = symbol.upper().strip()
    if s.endswith("-PERPETUAL"):
        return ("BTC" if s.startswith("XBT") else s.split("-")[0]), "USD"
    for suffix in ("-SWAP", "-PERP", "PERP"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
            break
    if "_" in s:
        raise DataValidationError(
            where,
            f"symbol {symbol!r} looks like a dated future; instrument keys have no expiry slot",
            column="symbol",
        )
    if "-" in s or "/" in s:
        parts = s.replace("/", "-").split("-")
        base, quote = parts[0], parts[1] if len(parts) > 1 else ""
    else:
        quote = next((q for q in QUOTES if s.endswith(q) and len(s) > len(q)), "")
        base = s[: -len(quote)] if quote else ""
    if not base or not quote:
        raise DataValidationError(
            where, f"cannot split symbol {symbol!r} into base and quote", column="symbol"
        )
    return ("BTC" if base == "XBT" else base), quote


def tardis_instrument_key(exchange: str, symbol: str, where: str = "") -> str:
    """Tardis (exchange, symbol) → `VENUE:TYPE:BASE-QUOTE`."""
    if exchange not in TARDIS_EXCHANGES:
        raise DataValidationError(
            where,
            f"unknown Tardis exchange {exchange!r}; known: {sorted(TARDIS_EXCHANGES)}",
            column="exchange",
        )
    venue, itype = TARDIS_EXCHANGES[exchange]
    base, quote = split_symbol(symbol, where)
    key = f"{venue}:{itype}:{base}-{quote}"
    try:
        return layout.validate_instrument_key(key)
    except layout.LayoutError as exc:
        raise DataValidationError(
            where, f"symbol {symbol!r} maps to an invalid key: {exc}"
        ) from exc


# ---- parsers (pure: bytes -> canonical frames) -----------------------------------------------


def parse_tardis_trades(data: bytes, name: str) -> dict[str, pl.DataFrame]:
    """A Tardis `trades` CSV → {instrument_key: canonical trades frame (unsorted)}."""
    raw = _read_tardis(data, name, TARDIS_COLUMNS, kind="trades")
    df = raw.select(
        "exchange",
        "symbol",
        _cast_checked(raw, "timestamp", pl.Int64, name, "an integer µs timestamp"),
        _cast_checked(raw, "local_timestamp", pl.Int64, name, "an integer µs timestamp"),
        pl.col("id").str.strip_chars().alias("trade_id"),
        pl.col("side").str.strip_chars().str.to_lowercase().alias("side"),
        _cast_checked(raw, "price", pl.Float64, name, "a decimal price"),
        _cast_checked(raw, "amount", pl.Float64, name, "a decimal amount").alias("size"),
    )
    out: dict[str, pl.DataFrame] = {}
    pairs = df.select("exchange", "symbol").unique(maintain_order=True).rows()
    for exchange, symbol in pairs:
        key = tardis_instrument_key(exchange, symbol, name)
        part = df.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol)).select(
            (pl.col("timestamp") * 1_000).alias("ts_event"),
            (pl.col("local_timestamp") * 1_000).alias("ts_init"),
            "trade_id",
            "price",
            "size",
            "side",
        )
        out[key] = pl.concat([out[key], part]) if key in out else part
    return out


def _detect_binance(
    first_line: str, kind: BinanceKind | None, name: str
) -> tuple[bool, BinanceKind, int]:
    fields = [f.strip().strip('"').lower() for f in first_line.split(",")]
    ncol = len(fields)
    header = not fields[0].lstrip("-").isdigit()
    if kind is None:
        if header:
            if any(
                f in fields for f in ("agg_trade_id", "first_trade_id", "first_id", "agg_id", "a")
            ):
                kind = "aggTrades"
            elif any(f in fields for f in ("quote_qty", "quotequantity", "id")):
                kind = "trades"
        elif ncol == 6:
            kind = "trades"
        elif ncol == 8:
            kind = "aggTrades"
        elif ncol == 7:  # spot trades (… time, is_buyer_maker, is_best_match) vs futures aggTrades
            kind = "trades" if fields[5] in ("true", "false") else "aggTrades"
    if kind is None:
        raise DataValidationError(
            name,
            f"cannot tell Binance trades from aggTrades: first line {first_line[:120]!r} ({ncol} fields)",
        )
    expected = (6, 7) if kind == "trades" else (7, 8)
    if ncol not in expected:
        raise DataValidationError(
            name,
            f"a Binance {kind} CSV has {' or '.join(map(str, expected))} columns, found {ncol}: {first_line[:120]!r}",
        )
    return header, kind, ncol


def parse_binance_trades(
    data: bytes, name: str, kind: BinanceKind | None = None
) -> tuple[pl.DataFrame, BinanceKind]:
    """A Binance public-data `trades` / `aggTrades` CSV → canonical trades frame (unsorted)."""
    first_line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    header, kind, ncol = _detect_binance(first_line, kind, name)
    names = list((BINANCE_TRADES_COLUMNS if kind == "trades" else BINANCE_AGG_COLUMNS)[:ncol])
    try:
        raw = pl.read_csv(
            io.BytesIO(data), has_header=header, new_columns=names, infer_schema=False
        )
    except Exception as exc:
        raise DataValidationError(name, f"not a readable CSV file: {exc}") from exc
    if raw.height == 0:
        raise DataValidationError(name, "the file has a header but no rows")
    id_col = "id" if kind == "trades" else "agg_id"
    raw = raw.with_columns(
        _cast_checked(raw, "time", pl.Int64, name, "an integer epoch time (ms or µs)"),
        _cast_checked(raw, "price", pl.Float64, name, "a decimal price"),
        _cast_checked(raw, "qty", pl.Float64, name, "a decimal quantity"),
        _cast_checked(raw, id_col, pl.Int64, name, "an integer trade id"),
    )
    maker = pl.col("is_buyer_maker").str.strip_chars().str.to_lowercase()
    _reject_first(raw, ~maker.is_in(["true", "false"]), "is_buyer_maker", name, "'true' or 'false'")
    ts, unit = _time_unit_to_ns(raw, "time", name)
    log.debug("%s: Binance %s, header=%s, time unit %s", name, kind, header, unit)
    df = raw.select(
        ts.alias("ts_event"),
        ts.alias("ts_init"),
        pl.col(id_col).cast(pl.String).alias("trade_id"),
        "price",
        pl.col("qty").alias("size"),
        pl.when(maker == "true").then(pl.lit("sell")).otherwise(pl.lit("buy")).alias("side"),
    )
    return df, kind


# ---- writing -------------------------------------------------------------------------------


def infer_decimals(values: pl.Series, max_decimals: int = 10) -> int:
    """Fewest decimals that represent every value (vectorised): a tick/lot guess for new instruments."""
    v = values.drop_nulls()
    if v.len() == 0:
        return 2
    for d in range(max_decimals + 1):
        scaled = v * (10.0**d)
        if ((scaled - scaled.round()).abs() <= 1e-6 * scaled.abs().clip(lower_bound=1.0)).all():
            return d
    return max_decimals


def ensure_instrument(ucs: Any, day: date, row: dict[str, Any]) -> bool:
    """Add `row` to the day's instruments.parquet when its key is absent; True if added.

    An existing but invalid instruments file is an error (it is not overwritten).
    """
    target, path = layout.target("instruments"), layout.instruments_path(day)
    if ucs.exists_sync(target, path):
        current = readers.read_instruments(ucs, day)
        if row["instrument_key"] in set(current["instrument_key"].to_list()):
            return False
        new = pl.concat([current, schemas.instruments_frame([row])], how="vertical")
    else:
        new = schemas.instruments_frame([row])
    new = schemas.validate_instruments(new, readers.object_name(ucs, target, path))
    ucs.upload_to_gcs_sync(
        target,
        path,
        parquet_io.table_to_parquet_bytes(new, schemas.INSTRUMENTS_SCHEMA),
        format="parquet",
    )
    return True


def write_trades_days(
    ucs: Any, frames: dict[str, pl.DataFrame], source: str, report: dict[str, Any]
) -> dict[str, Any]:
    """Sort, split at UTC midnight, validate and write each instrument-day; update instruments."""
    t_ticks = layout.target("ticks")
    for key, frame in frames.items():
        n_in = frame.height
        df = frame.unique(maintain_order=True)
        if df.height != n_in:
            msg = (
                f"{key}: dropped {n_in - df.height} exact duplicate rows (overlapping input files?)"
            )
            log.warning(msg)
            report["warnings"].append(msg)
        df = df.sort("ts_event", maintain_order=True).with_columns(
            (pl.col("ts_event") // _DAY_NS).alias("_day")
        )
        pp = infer_decimals(df["price"])
        sp = infer_decimals(df["size"])
        for (day_n,), part in df.group_by("_day", maintain_order=True):
            day = date.fromordinal(date(1970, 1, 1).toordinal() + int(day_n))  # type: ignore[arg-type]
            path = layout.trades_path(day, key)
            dest = readers.object_name(ucs, t_ticks, path)
            part = schemas.validate_trades_frame(
                part.drop("_day"), f"{source} → {dest}", day=day, allow_empty=False
            )
            replaced = _replacing(ucs, t_ticks, path, f"{dest}: the trades", part.height, report)
            ucs.upload_to_gcs_sync(
                t_ticks, path, parquet_io.trades_to_parquet_bytes(part), format="parquet"
            )
            row = schemas.default_instrument_row(key, price_precision=pp, size_precision=sp)
            added = ensure_instrument(ucs, day, row)
            if added:
                report["instruments_added"].append({"day": day.isoformat(), "instrument_key": key})
            report["days"].append(_day_entry(day, part, dest, replaced, instrument_key=key))
            report["rows_written"] += part.height
    report["days"].sort(key=lambda d: (d["day"], d["instrument_key"]))
    return report


def _day_entry(
    day: date, part: pl.DataFrame, dest: str, replaced: bool, **extra: str
) -> dict[str, Any]:
    """One written day file of an import report: rows, first/last event, where it went."""
    first, last = int(part["ts_event"][0]), int(part["ts_event"][-1])
    return {
        "day": day.isoformat(),
        **extra,
        "rows": part.height,
        "first_ts": first,
        "last_ts": last,
        "first_ts_iso": schemas.ns_to_iso(first),
        "last_ts_iso": schemas.ns_to_iso(last),
        "path": dest,
        "replaced": replaced,
    }


def _new_report(files: Sequence[Path | str], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "files": [str(f) for f in files],
        "rows_read": 0,
        "rows_written": 0,
        "days": [],
        "instruments_added": [],
        "warnings": [],
    }


def _merge(into: dict[str, pl.DataFrame], new: dict[str, pl.DataFrame]) -> None:
    for key, df in new.items():
        into[key] = pl.concat([into[key], df]) if key in into else df


# ---- public importers ----------------------------------------------------------------------


def import_tardis(ucs: Any, files: Sequence[Path | str]) -> dict[str, Any]:
    """Import Tardis.dev `trades` CSVs (plain or .gz), any exchanges/symbols mixed.

    µs timestamps → ns; `local_timestamp` → `ts_init`. All files of one call are combined before
    the split by day, so several files of one day (or one file across midnight) land correctly.
    """
    if not files:
        raise ValueError("import_tardis: no input files")
    report = _new_report(files, "tardis")
    frames: dict[str, pl.DataFrame] = {}
    for f in files:
        parsed = parse_tardis_trades(read_input_bytes(Path(f)), str(f))
        report["rows_read"] += sum(df.height for df in parsed.values())
        _merge(frames, parsed)
    source = str(files[0]) if len(files) == 1 else f"{len(files)} Tardis files"
    return write_trades_days(ucs, frames, source, report)


def import_binance(
    ucs: Any,
    files: Sequence[Path | str],
    instrument_key: str,
    kind: BinanceKind | None = None,
) -> dict[str, Any]:
    """Import Binance public-data `trades` or `aggTrades` files (CSV or single-CSV ZIP).

    The files carry no symbol, so the caller names the instrument. Header row optional; kind and
    time unit (ms/µs) detected per file; ``is_buyer_maker`` true → aggressor ``sell``. For
    aggTrades the aggregate id is the trade id.
    """
    layout.validate_instrument_key(instrument_key)
    if not files:
        raise ValueError("import_binance: no input files")
    report = _new_report(files, "binance")
    report["kinds"] = {}
    frames: dict[str, pl.DataFrame] = {}
    for f in files:
        df, k = parse_binance_trades(read_input_bytes(Path(f)), str(f), kind)
        report["kinds"][str(f)] = k
        report["rows_read"] += df.height
        _merge(frames, {instrument_key: df})
    source = str(files[0]) if len(files) == 1 else f"{len(files)} Binance files"
    return write_trades_days(ucs, frames, source, report)


def _read_signals_file(path: Path) -> pl.DataFrame:
    name = str(path)
    data = Path(path).read_bytes() if Path(path).exists() else None
    if data is None:
        raise FileNotFoundError(f"{path}: signals file does not exist")
    if data[:4] == b"PAR1":
        return pl.from_arrow(readers.parquet_bytes_to_table(data, name))  # type: ignore[return-value]
    data = read_input_bytes(Path(path))
    try:
        df = pl.read_csv(
            io.BytesIO(data),
            schema_overrides={
                "signal_id": pl.String,
                "instrument_key": pl.String,
                "algo": pl.String,
                "target_position": pl.Float64,
                "execution_window_s": pl.Float64,
                "limit_price": pl.Float64,  # an all-empty column would otherwise be inferred as String
            },
        )
    except Exception as exc:
        raise DataValidationError(name, f"not a readable CSV file: {exc}") from exc
    if "ts_event" in df.columns and df.schema["ts_event"] == pl.String:  # ISO-8601 times in a CSV
        parsed = pl.col("ts_event").str.to_datetime(time_zone="UTC", time_unit="ns", strict=False)
        bad = df.select(
            (parsed.is_null() & pl.col("ts_event").is_not_null()).arg_true().first()
        ).item()
        if bad is not None:
            raise DataValidationError(
                name,
                f"expected int64 ns or an ISO-8601 time, found {df['ts_event'][bad]!r} at row {bad}",
                column="ts_event",
                row=bad,
            )
        df = df.with_columns(parsed.cast(pl.Int64).alias("ts_event"))
    return df


def import_signals(ucs: Any, file: Path | str, strategy_id: str) -> dict[str, Any]:
    """Import a signals CSV/Parquet (signals schema) for `strategy_id`, split by UTC day.

    The whole file is validated first (ids unique across days, sorted), so nothing is written
    when any row is bad.
    """
    layout.validate_strategy_id(strategy_id)
    name = str(file)
    df = schemas.validate_signals(_read_signals_file(Path(file)), name)
    report = _new_report([file], "signals")
    report["strategy_id"] = strategy_id
    report["rows_read"] = df.height
    t_sig = layout.target("signals")
    df = df.with_columns((pl.col("ts_event") // _DAY_NS).alias("_day"))
    for (day_n,), part in df.group_by("_day", maintain_order=True):
        day = date.fromordinal(date(1970, 1, 1).toordinal() + int(day_n))  # type: ignore[arg-type]
        path = layout.signals_path(day, strategy_id)
        dest = readers.object_name(ucs, t_sig, path)
        part = schemas.validate_signals(part.drop("_day"), f"{name} → {dest}", day=day)
        replaced = _replacing(ucs, t_sig, path, f"{dest}: the signals", part.height, report)
        ucs.upload_to_gcs_sync(
            t_sig,
            path,
            parquet_io.table_to_parquet_bytes(part, schemas.SIGNALS_SCHEMA),
            format="parquet",
        )
        report["days"].append(_day_entry(day, part, dest, replaced))
        report["rows_written"] += part.height
    return report


def trades_table(df: pl.DataFrame) -> pa.Table:
    """Canonical Arrow table of a trades frame (for callers that want Arrow)."""
    return schemas.to_arrow(df, schemas.TRADES_SCHEMA)


# ---- quotes and books ------------------------------------------------------------------------

TickType = Literal["trades", "quotes", "book_depth10"]
TardisType = Literal["trades", "quotes", "book_snapshot", "incremental_book_L2"]
DEFAULT_BOOK_INTERVAL_MS: Final = 100
BINANCE_BOOK_TICKER_COLUMNS: Final[tuple[str, ...]] = (
    "update_id",
    "best_bid_price",
    "best_bid_qty",
    "best_ask_price",
    "best_ask_qty",
    "transaction_time",
    "event_time",
)
_BINANCE_FILE_RE: Final = re.compile(r"^([A-Z0-9]{4,20})-(trades|aggTrades|bookTicker)-")


def _header(data: bytes) -> list[str]:
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    return [f.strip().strip('"') for f in line.split(",")]


def detect_tardis_type(data: bytes, name: str) -> tuple[TardisType, int]:
    """The Tardis data type of a CSV from its header, and the book depth for book_snapshot_N."""
    cols = _header(data)
    if "is_snapshot" in cols and {"side", "price", "amount"} <= set(cols):
        return "incremental_book_L2", 0
    if "asks[0].price" in cols or "bids[0].price" in cols:
        depth = 0
        while f"bids[{depth}].price" in cols or f"asks[{depth}].price" in cols:
            depth += 1
        return "book_snapshot", depth
    if {"bid_price", "ask_price", "bid_amount", "ask_amount"} <= set(cols):
        return "quotes", 0
    if set(TARDIS_COLUMNS) <= set(cols):
        return "trades", 0
    raise DataValidationError(
        name,
        "not a Tardis CSV of a known type (trades, quotes, book_snapshot_N, incremental_book_L2): "
        f"header {cols[:12]}",
    )


def _read_tardis(
    data: bytes, name: str, required: Sequence[str], kind: str | None = None
) -> pl.DataFrame:
    """A CSV read as strings (values are cast, and checked, by the caller) that has the columns
    its format needs and at least one row; ``kind`` names the format in the error."""
    try:
        raw = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:
        raise DataValidationError(name, f"not a readable CSV file: {exc}") from exc
    missing = [c for c in required if c not in raw.columns]
    if missing:
        prefix = f"not a Tardis {kind} CSV: " if kind else ""
        raise DataValidationError(
            name,
            f"{prefix}missing column(s) {missing}; the file has {raw.columns}",
            column=missing[0],
        )
    if raw.height == 0:
        raise DataValidationError(name, "the file is empty (no rows)")
    return raw


def _floats(raw: pl.DataFrame, cols: Sequence[str], name: str) -> list[pl.Expr]:
    """Decimal columns where an empty field means "no value" (a thin book, a one-sided quote)."""
    out = []
    for c in cols:
        clean = raw.with_columns(pl.col(c).str.strip_chars().replace("", None))
        out.append(_cast_checked(clean, c, pl.Float64, name, "a decimal number"))
    return out


def _split_by_key(df: pl.DataFrame, name: str) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {}
    for exchange, symbol in df.select("exchange", "symbol").unique(maintain_order=True).rows():
        key = tardis_instrument_key(exchange, symbol, name)
        part = df.filter((pl.col("exchange") == exchange) & (pl.col("symbol") == symbol))
        part = part.drop("exchange", "symbol")
        out[key] = pl.concat([out[key], part]) if key in out else part
    return out


def _tardis_times(raw: pl.DataFrame, name: str) -> list[pl.Expr]:
    return [
        (_cast_checked(raw, "timestamp", pl.Int64, name, "an integer µs timestamp") * 1_000).alias(
            "ts_event"
        ),
        (
            _cast_checked(raw, "local_timestamp", pl.Int64, name, "an integer µs timestamp") * 1_000
        ).alias("ts_init"),
    ]


def parse_tardis_quotes(data: bytes, name: str) -> dict[str, pl.DataFrame]:
    """A Tardis `quotes` CSV → {key: quotes frame (unsorted; one-sided rows still in)}."""
    cols = ("bid_price", "bid_amount", "ask_price", "ask_amount")
    raw = _read_tardis(data, name, ("exchange", "symbol", "timestamp", "local_timestamp", *cols))
    df = raw.select(
        "exchange",
        "symbol",
        *_tardis_times(raw, name),
        *_floats(raw, cols, name),
    ).rename({"bid_amount": "bid_size", "ask_amount": "ask_size"})
    return _split_by_key(df, name)


def parse_tardis_book_snapshot(data: bytes, name: str, depth: int) -> dict[str, pl.DataFrame]:
    """A Tardis `book_snapshot_N` CSV (any N, any interval) → {key: book_depth10 frame}.

    The top 10 levels are kept; a 5-level file leaves levels 5-9 null; empty fields (a thinner
    book) become null.
    """
    keep = min(depth, schemas.BOOK_LEVELS)
    src = {
        schemas.book_column(side, fld, i): f"{side}s[{i}].{'price' if fld == 'price' else 'amount'}"
        for side in schemas.BOOK_SIDES
        for fld in ("price", "size")
        for i in range(keep)
    }
    raw = _read_tardis(
        data, name, ("exchange", "symbol", "timestamp", "local_timestamp", *src.values())
    )
    values = _floats(raw, list(src.values()), name)
    df = raw.select(
        "exchange",
        "symbol",
        *_tardis_times(raw, name),
        *(v.alias(dst) for v, dst in zip(values, src, strict=True)),
    )
    df = df.with_columns(
        pl.lit(None, pl.Float64).alias(c)
        for c in schemas.BOOK_DEPTH10_SCHEMA.names
        if c not in df.columns
    )
    return _split_by_key(df, name)


def tardis_level_updates(df: pl.DataFrame) -> tuple[books.LevelUpdates, int]:
    """One instrument's `incremental_book_L2` rows (file order) → messages of level updates.

    Rows sharing a ``local_timestamp`` are one message; a run of ``is_snapshot`` rows is one
    snapshot message that resets the book (Tardis starts a file, and every reconnect, with one).
    Updates before the first snapshot describe an unknown book and are dropped (returned count).
    """
    snap = pl.col("is_snapshot")
    new_msg = (
        ((pl.col("ts_init") != pl.col("ts_init").shift(1)).fill_null(True) & ~snap)
        | (snap & ~snap.shift(1).fill_null(False))
        | (~snap & snap.shift(1).fill_null(False))
    )
    df = df.with_columns((new_msg.cast(pl.Int64).cum_sum() - 1).alias("msg"))
    first_snap = df.select(snap.arg_true().first()).item()
    if first_snap is None:
        return books.LevelUpdates(*(np.empty(0) for _ in range(7))), df.height  # type: ignore[arg-type]
    dropped = int(first_snap)
    df = df.slice(first_snap).with_columns(pl.col("msg") - pl.col("msg").first())
    msgs = df.group_by("msg", maintain_order=True).agg(
        pl.col("ts_event").max(), pl.col("ts_init").max(), snap.first().alias("reset")
    )
    return (
        books.LevelUpdates(
            msg=df["msg"].to_numpy(),
            is_ask=(df["side"] == "ask").to_numpy(),
            price=df["price"].to_numpy(),
            size=df["size"].to_numpy(),
            msg_ts_event=msgs["ts_event"].to_numpy(),
            msg_ts_init=msgs["ts_init"].to_numpy(),
            msg_reset=msgs["reset"].to_numpy(),
        ),
        dropped,
    )


def parse_tardis_incremental(
    data: bytes, name: str, interval_ms: int, report: dict[str, Any]
) -> dict[str, pl.DataFrame]:
    """A Tardis `incremental_book_L2` CSV → {key: rebuilt book_depth10 snapshots}."""
    raw = _read_tardis(
        data,
        name,
        ("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price"),
    )
    side = pl.col("side").str.strip_chars().str.to_lowercase()
    _reject_first(raw, ~side.is_in(["bid", "ask"]), "side", name, "side 'bid' or 'ask'")
    snap = pl.col("is_snapshot").str.strip_chars().str.to_lowercase()
    df = raw.select(
        "exchange",
        "symbol",
        *_tardis_times(raw, name),
        (snap == "true").alias("is_snapshot"),
        side.alias("side"),
        *_floats(raw, ["price", "amount"], name),
    ).rename({"amount": "size"})
    out: dict[str, pl.DataFrame] = {}
    for key, part in _split_by_key(df, name).items():
        updates, before = tardis_level_updates(part)
        stats = report["data_types"]["book_depth10"]
        if before:
            _count(stats, "updates_before_first_snapshot", before)
        out[key] = _rebuilt(updates, interval_ms, stats)
    return out


def _rebuilt(updates: books.LevelUpdates, interval_ms: int, stats: dict[str, Any]) -> pl.DataFrame:
    """Rebuild, drop repeated tops, order times; count what was left out."""
    stats["updates_applied"] = stats.get("updates_applied", 0) + int(updates.msg.size)
    if updates.msg_ts_event.size == 0:
        return schemas.empty_frame(schemas.BOOK_DEPTH10_SCHEMA)
    res = books.rebuild(updates, interval_ms * 1_000_000)
    for reason, n in res.dropped.items():
        _count(stats, reason, n)
    frame, same = books.drop_unchanged(res.frame)
    if same:
        stats["unchanged_top10_skipped"] = stats.get("unchanged_top10_skipped", 0) + same
    frame, raised = books.monotonic_times(frame)
    if raised:
        stats["ts_raised_to_previous_state"] = stats.get("ts_raised_to_previous_state", 0) + raised
    return frame


def _count(stats: dict[str, Any], reason: str, n: int) -> None:
    stats["dropped"][reason] = stats["dropped"].get(reason, 0) + int(n)


def clean_quotes(df: pl.DataFrame, stats: dict[str, Any]) -> pl.DataFrame:
    """Drop quote rows a book cannot have (counted by reason): one-sided/empty, crossed/locked."""
    ok_side = pl.all_horizontal(
        pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) > 0)
        for c in ("bid_price", "bid_size", "ask_price", "ask_size")
    )
    n0 = df.height
    df = df.filter(ok_side)
    if n0 - df.height:
        _count(stats, "one_sided_or_empty", n0 - df.height)
    n1 = df.height
    df = df.filter(pl.col("bid_price") < pl.col("ask_price"))
    if n1 - df.height:
        _count(stats, "crossed_or_locked", n1 - df.height)
    return df


def clean_book(df: pl.DataFrame, stats: dict[str, Any]) -> pl.DataFrame:
    """Drop snapshot rows that are crossed/locked or empty on both sides (counted)."""
    n0 = df.height
    df = df.filter(pl.col("bid_price_0").is_not_null() | pl.col("ask_price_0").is_not_null())
    if n0 - df.height:
        _count(stats, "empty_book", n0 - df.height)
    n1 = df.height
    df = df.filter(~(pl.col("bid_price_0") >= pl.col("ask_price_0")).fill_null(False))
    if n1 - df.height:
        _count(stats, "crossed_or_locked", n1 - df.height)
    return df


def _with_midnight_state(parts: list[tuple[date, pl.DataFrame]]) -> list[tuple[date, pl.DataFrame]]:
    """Open each book day with the state in force at 00:00 (the last of the day before).

    Only when both rows descend from the same snapshot (``seg``): after a gap or a resync the
    state at midnight is unknown and nothing is carried.
    """
    out: list[tuple[date, pl.DataFrame]] = []
    for i, (day, part) in enumerate(parts):
        if i and "seg" in part.columns:
            prev_day, prev = parts[i - 1]
            start = layout.day_bounds_ns(day)[0]
            if (
                (day - prev_day).days == 1
                and prev["seg"][-1] == part["seg"][0]
                and part["ts_event"][0] > start
            ):
                carry = prev.tail(1).with_columns(
                    pl.lit(start, pl.Int64).alias("ts_event"),
                    pl.lit(start, pl.Int64).alias("ts_init"),
                )
                part = pl.concat([carry, part])
        out.append((day, part))
    return out


def write_tick_days(
    ucs: Any,
    data_type: TickType,
    frames: dict[str, pl.DataFrame],
    source: str,
    report: dict[str, Any],
    invalid: dict[str, list[tuple[int, int | None]]] | None = None,
) -> dict[str, Any]:
    """Quotes/book frames: sort, split at UTC midnight, validate, write, add the instrument.

    Like :func:`write_trades_days`; a book day also opens with the state in force at midnight
    when the book is continuous across it (:func:`_with_midnight_state`). ``invalid`` (per key,
    the periods where the book is unknown) is stored in each book day file's footer, cut to
    that day (a period across midnight is in both files).
    """
    if data_type == "trades":
        return write_trades_days(ucs, frames, source, report)
    t_ticks = layout.target("ticks")
    stats = report["data_types"][data_type]
    validate = (
        schemas.validate_quotes_frame
        if data_type == "quotes"
        else schemas.validate_book_depth10_frame
    )
    price_col, size_col = (
        ("bid_price", "bid_size") if data_type == "quotes" else ("bid_price_0", "bid_size_0")
    )
    for key, frame in frames.items():
        df = frame.sort("ts_event", maintain_order=True)
        if df.height == 0:
            continue
        if data_type == "quotes":
            n = df.height
            df = df.unique(maintain_order=True)
            if n - df.height:
                _count(stats, "exact_duplicate", n - df.height)
        df = df.with_columns((pl.col("ts_event") // _DAY_NS).alias("_day"))
        pp = max(infer_decimals(df[price_col]), infer_decimals(df[price_col.replace("bid", "ask")]))
        sp = infer_decimals(df[size_col])
        parts = [
            (date.fromordinal(date(1970, 1, 1).toordinal() + int(d)), p.drop("_day"))  # type: ignore[arg-type]
            for (d,), p in df.group_by("_day", maintain_order=True)
        ]
        if data_type == "book_depth10":
            parts = _with_midnight_state(parts)
        for day, part in parts:
            path = layout.tick_path(day, key, data_type)
            dest = readers.object_name(ucs, t_ticks, path)
            part = validate(part, f"{source} → {dest}", day=day, allow_empty=False)
            what = f"{dest}: the {data_type}"
            replaced = _replacing(ucs, t_ticks, path, what, part.height, report)
            periods = books.day_invalid_periods(
                (invalid or {}).get(key, []), *layout.day_bounds_ns(day)
            )
            meta = books.encode_invalid_periods(periods)
            ucs.upload_to_gcs_sync(
                t_ticks,
                path,
                parquet_io.tick_to_parquet_bytes(part, data_type, meta),
                format="parquet",
            )
            row = schemas.default_instrument_row(key, price_precision=pp, size_precision=sp)
            if ensure_instrument(ucs, day, row):
                report["instruments_added"].append({"day": day.isoformat(), "instrument_key": key})
            entry = _day_entry(day, part, dest, replaced, instrument_key=key, data_type=data_type)
            if periods:
                entry["book_invalid_periods"] = [
                    [schemas.ns_to_iso(s), schemas.ns_to_iso(e)] for s, e in periods
                ]
            report["days"].append(entry)
            report["rows_written"] += part.height
            stats["rows_written"] += part.height
    report["days"].sort(key=lambda d: (d["day"], d["instrument_key"], d.get("data_type", "trades")))
    return report


def _new_tick_report(files: Sequence[Path | str], source: str) -> dict[str, Any]:
    report = _new_report(files, source)
    report["data_types"] = {
        dt: {"rows_read": 0, "rows_written": 0, "dropped": {}} for dt in layout.TICK_DATA_TYPES
    }
    return report


def import_tardis_files(
    ucs: Any, files: Sequence[Path | str], *, book_interval_ms: int = DEFAULT_BOOK_INTERVAL_MS
) -> dict[str, Any]:
    """Tardis CSVs of any supported type, detected from each file's header (plain or .gz).

    ``trades`` → trades; ``quotes`` → quotes; ``book_snapshot_N`` → book_depth10 (top 10 kept);
    ``incremental_book_L2`` → the book rebuilt from its snapshot + updates, written as
    book_depth10 snapshots at most one per ``book_interval_ms`` (0: after every message).
    """
    if not files:
        raise ValueError("import_tardis: no input files")
    if book_interval_ms < 0:
        raise ValueError(f"--book-interval-ms must be >= 0, got {book_interval_ms}")
    report = _new_tick_report(files, "tardis")
    report["book_interval_ms"] = book_interval_ms
    report["kinds"] = {}
    frames: dict[str, dict[str, pl.DataFrame]] = {dt: {} for dt in layout.TICK_DATA_TYPES}
    for n_file, f in enumerate(files):
        data = read_input_bytes(Path(f))
        kind, depth = detect_tardis_type(data, str(f))
        report["kinds"][str(f)] = f"book_snapshot_{depth}" if kind == "book_snapshot" else kind
        if kind == "trades":
            parsed = parse_tardis_trades(data, str(f))
            dt: TickType = "trades"
        elif kind == "quotes":
            parsed = parse_tardis_quotes(data, str(f))
            dt = "quotes"
        elif kind == "book_snapshot":
            parsed = parse_tardis_book_snapshot(data, str(f), depth)
            dt = "book_depth10"
        else:
            n_rows = data.count(b"\n")
            report["data_types"]["book_depth10"]["updates_read"] = (
                report["data_types"]["book_depth10"].get("updates_read", 0) + n_rows
            )
            parsed = parse_tardis_incremental(data, str(f), book_interval_ms, report)
            # Each file is its own rebuild: no state is carried from one file to the next.
            parsed = {
                k: (v.with_columns(pl.col("seg") + n_file * 1_000_000_000) if v.height else v)
                for k, v in parsed.items()
            }
            dt = "book_depth10"
        n = sum(df.height for df in parsed.values())
        report["rows_read"] += n
        report["data_types"][dt]["rows_read"] += n
        _merge(frames[dt], parsed)
    source = str(files[0]) if len(files) == 1 else f"{len(files)} Tardis files"
    if frames["trades"]:
        write_trades_days(ucs, frames["trades"], source, report)
        report["data_types"]["trades"]["rows_written"] = sum(
            d["rows"] for d in report["days"] if "data_type" not in d
        )
    for dt, cleaner in (("quotes", clean_quotes), ("book_depth10", clean_book)):
        if frames[dt]:
            stats = report["data_types"][dt]
            cleaned = {k: cleaner(v, stats) for k, v in frames[dt].items()}
            write_tick_days(ucs, dt, cleaned, source, report)  # type: ignore[arg-type]
    return _finish(report)


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    """Account for dropped trades; drop the data types the import did not touch."""
    trades = report["data_types"]["trades"]
    lost = trades["rows_read"] - trades["rows_written"] - sum(trades["dropped"].values())
    if trades["rows_written"] and lost > 0:  # write_trades_days drops exact duplicates only
        _count(trades, "exact_duplicate", lost)
    report["data_types"] = {
        k: v
        for k, v in report["data_types"].items()
        if v["rows_read"] or v["rows_written"] or v["dropped"]
    }
    for d in report["days"]:
        d.setdefault("data_type", "trades")
    return report


def check_binance_file_symbol(path: Path | str, instrument_key: str) -> None:
    """Binance public-data files are named `SYMBOL-type-date`: another symbol's file is an error."""
    m = _BINANCE_FILE_RE.match(Path(path).name)
    if not m:
        return
    _v, _t, base, quote = layout.parse_instrument_key(instrument_key)
    symbol = schemas.default_instrument_row(instrument_key)["venue_symbol"]
    if m.group(1) not in (symbol, f"{base}{quote}"):
        raise DataValidationError(
            str(path),
            f"the file is named for symbol {m.group(1)!r} but is imported as {instrument_key} "
            f"(symbol {symbol!r})",
            column="symbol",
            value=m.group(1),
        )


def is_binance_book_ticker(data: bytes) -> bool:
    return "best_bid_price" in [c.lower() for c in _header(data)]


def parse_binance_book_ticker(data: bytes, name: str) -> pl.DataFrame:
    """A Binance public-data `bookTicker` CSV → quotes (ts_event = transaction_time)."""
    raw = _read_tardis(data, name, BINANCE_BOOK_TICKER_COLUMNS)
    t = _cast_checked(raw, "transaction_time", pl.Int64, name, "an integer epoch time")
    e = _cast_checked(raw, "event_time", pl.Int64, name, "an integer epoch time")
    raw = raw.with_columns(t, e)
    ts, _unit = _time_unit_to_ns(raw, "transaction_time", name)
    ti, _unit = _time_unit_to_ns(raw, "event_time", name)
    prices = _floats(
        raw, ("best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty"), name
    )
    return raw.select(ts.alias("ts_event"), ti.alias("ts_init"), *prices).rename(
        {
            "best_bid_price": "bid_price",
            "best_bid_qty": "bid_size",
            "best_ask_price": "ask_price",
            "best_ask_qty": "ask_size",
        }
    )


def import_binance_files(
    ucs: Any, files: Sequence[Path | str], instrument_key: str, kind: BinanceKind | None = None
) -> dict[str, Any]:
    """Binance public data: `trades` / `aggTrades` (as :func:`import_binance`) and `bookTicker`.

    Each file's type is detected from its header; a file named for another symbol is refused.
    """
    layout.validate_instrument_key(instrument_key)
    if not files:
        raise ValueError("import_binance: no input files")
    for f in files:
        check_binance_file_symbol(f, instrument_key)
    datas = {str(f): read_input_bytes(Path(f)) for f in files}
    tickers = [f for f in files if is_binance_book_ticker(datas[str(f)])]
    trades = [f for f in files if f not in tickers]
    report = _new_tick_report(files, "binance")
    report["kinds"] = {}
    if trades:
        frames: dict[str, pl.DataFrame] = {}
        for f in trades:
            df, k = parse_binance_trades(datas[str(f)], str(f), kind)
            report["kinds"][str(f)] = k
            report["rows_read"] += df.height
            report["data_types"]["trades"]["rows_read"] += df.height
            _merge(frames, {instrument_key: df})
        source = str(trades[0]) if len(trades) == 1 else f"{len(trades)} Binance files"
        write_trades_days(ucs, frames, source, report)
        report["data_types"]["trades"]["rows_written"] = report["rows_written"]
    if tickers:
        stats = report["data_types"]["quotes"]
        parts = []
        for f in tickers:
            df = parse_binance_book_ticker(datas[str(f)], str(f))
            report["kinds"][str(f)] = "bookTicker"
            report["rows_read"] += df.height
            stats["rows_read"] += df.height
            parts.append(df)
        q = clean_quotes(pl.concat(parts), stats)
        source = str(tickers[0]) if len(tickers) == 1 else f"{len(tickers)} Binance files"
        write_tick_days(ucs, "quotes", {instrument_key: q}, source, report)
    return _finish(report)


def capture_instrument_key(cap: capture.Capture, instrument_key: str | None, name: str) -> str:
    """The key given, or the one the capture implies (USD-M diffs carry `pu`; spot's do not)."""
    symbols = set()
    for frame in (cap.depth, cap.tickers, cap.trades):
        if frame.height and "s" in frame.columns:
            symbols |= set(frame["s"].drop_nulls().unique().to_list())
    if instrument_key is not None:
        layout.validate_instrument_key(instrument_key)
        venue_symbol = schemas.default_instrument_row(instrument_key)["venue_symbol"]
        capture.check_symbol(cap, venue_symbol, name)
        return instrument_key
    if len(symbols) != 1:
        raise DataValidationError(
            name,
            f"the capture holds symbols {sorted(symbols)}; import one symbol at a time and name it "
            "with --instrument",
        )
    futures = (
        cap.depth.height > 0
        and not cap.spot
        or "T" in cap.tickers.columns
        and (cap.tickers.height > 0 and cap.tickers["T"].null_count() < cap.tickers.height)
    )
    base, quote = split_symbol(next(iter(symbols)), name)
    venue = "BINANCE-FUTURES:PERPETUAL" if futures else "BINANCE:SPOT"
    return layout.validate_instrument_key(f"{venue}:{base}-{quote}")


def import_capture(
    ucs: Any,
    files: Sequence[Path | str],
    instrument_key: str | None = None,
    *,
    book_interval_ms: int = DEFAULT_BOOK_INTERVAL_MS,
) -> dict[str, Any]:
    """Binance websocket captures → trades, quotes and book_depth10 day files.

    All files of one call are one stream in the given order (a capture split at midnight keeps
    its book). The book follows Binance's update-id rules; every sequence gap is reported with
    its time and the diffs it cost, and no snapshot is written until the next REST snapshot line.
    """
    if not files:
        raise ValueError("import_capture: no input files")
    if book_interval_ms < 0:
        raise ValueError(f"--book-interval-ms must be >= 0, got {book_interval_ms}")
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: input file does not exist")
    name = str(paths[0]) if len(paths) == 1 else f"{len(paths)} capture files"
    cap = capture.parse_capture(paths)
    key = capture_instrument_key(cap, instrument_key, name)
    report = _new_tick_report(files, "capture")
    report.update(
        instrument_key=key,
        market="spot" if cap.spot else "usd-m futures",
        lines=cap.lines,
        lines_skipped=cap.skipped,
        clock_offset_ms=round(cap.clock_offset_ns / 1e6, 3),
        book_interval_ms=book_interval_ms,
    )
    trades = capture.trades_frame(cap, report["data_types"]["trades"])
    report["data_types"]["trades"]["rows_read"] = cap.trades.height
    report["rows_read"] += cap.trades.height
    if trades.height:
        write_trades_days(ucs, {key: trades}, name, report)
        report["data_types"]["trades"]["rows_written"] = report["rows_written"]
    qstats = report["data_types"]["quotes"]
    qstats["rows_read"] = cap.tickers.height
    report["rows_read"] += cap.tickers.height
    quotes = clean_quotes(capture.quotes_frame(cap).drop("u"), qstats)
    if cap.spot and quotes.height:
        qstats["ts_event_from_local_clock"] = quotes.height  # spot bookTicker has no exchange time
    if quotes.height:
        write_tick_days(ucs, "quotes", {key: quotes}, name, report)
    bstats = report["data_types"]["book_depth10"]
    seq = capture.sequence(cap)
    bstats.update(
        depth_messages=cap.depth.height,
        snapshots=cap.snapshots.height,
        depth_applied=seq.applied.height,
        gaps=seq.gaps,
    )
    bstats["rows_read"] = cap.depth.height + cap.snapshots.height
    report["rows_read"] += bstats["rows_read"]
    for reason, n in seq.dropped.items():
        _count(bstats, reason, n)
    if seq.gaps:
        msg = (
            f"{len(seq.gaps)} depth sequence gap(s): the book is unknown from "
            f"{seq.gaps[0]['from_iso']} until the next snapshot line; no book written there"
        )
        log.warning(msg)
        report["warnings"].append(msg)
    if seq.applied.height:
        book = _rebuilt(capture.level_updates(cap, seq), book_interval_ms, bstats)
        book = clean_book(book.drop("msg"), bstats).sort("ts_event", maintain_order=True)
        # The book is unknown from each gap to the next snapshot written: stored with the data,
        # so a run rejects orders there instead of meeting the last book before the gap.
        periods = books.invalid_periods(
            np.array([g["from_ts"] for g in seq.gaps], dtype=np.int64),
            book["ts_event"].to_numpy(),
        )
        bstats["invalid_periods"] = [
            [schemas.ns_to_iso(s), schemas.ns_to_iso(e)] for s, e in periods
        ]
        write_tick_days(ucs, "book_depth10", {key: book}, name, report, {key: periods})
    elif cap.depth.height:
        report["warnings"].append(
            f"{name}: {cap.depth.height} depth diffs but no usable snapshot: no book written"
        )
    return _finish(report)
