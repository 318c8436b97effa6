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
import zipfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

import polars as pl
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.data import parquet_io, readers, schemas
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
    bad = df.select((c.is_not_null() & casted.is_null()).arg_true().first()).item()
    if bad is not None:
        raise DataValidationError(
            name,
            f"expected {expected}, found {df[column][bad]!r} at row {bad}",
            column=column,
            row=bad,
        )
    return casted.alias(column)


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
    try:
        raw = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:
        raise DataValidationError(name, f"not a readable CSV file: {exc}") from exc
    missing = [c for c in TARDIS_COLUMNS if c not in raw.columns]
    if missing:
        raise DataValidationError(
            name,
            f"not a Tardis trades CSV: missing column(s) {missing}; the file has {raw.columns}",
            column=missing[0],
        )
    if raw.height == 0:
        raise DataValidationError(name, "the file is empty (no rows)")
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
    bad = raw.select((~maker.is_in(["true", "false"])).fill_null(True).arg_true().first()).item()
    if bad is not None:
        raise DataValidationError(
            name,
            f"expected 'true' or 'false', found {raw['is_buyer_maker'][bad]!r} at row {bad}",
            column="is_buyer_maker",
            row=bad,
        )
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
            replaced = bool(ucs.exists_sync(t_ticks, path))
            if replaced:
                msg = f"{dest}: replaced the existing trades file ({part.height} rows imported)"
                log.warning(msg)
                report["warnings"].append(msg)
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
        replaced = bool(ucs.exists_sync(t_sig, path))
        if replaced:
            msg = f"{dest}: replaced the existing signals file ({part.height} rows imported)"
            log.warning(msg)
            report["warnings"].append(msg)
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
