"""The pipeline's stages as plain functions: what each Dagster asset does, minus Dagster.

Each function mirrors one step of ``inputs.load_day`` (same readers, same key selection, same
byte ranges), so that a backtest fed from the materialized assets — through the NautilusTrader
catalog — gives exactly the result of ``run_backtest`` reading storage directly. The read
statistics that ``run_backtest`` puts in ``summary.inputs`` travel with the tables, in their
Arrow schema metadata (``backtest.inputs``).
The backtest itself runs in a process of its own: see ``run/worker.py``.
"""

import dataclasses
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, MarketData
from backtest_pipeline.data import readers, schemas
from backtest_pipeline.data.books import InvalidPeriod
from backtest_pipeline.engine import catalog as catalog_mod
from backtest_pipeline.run.inputs import (
    BOOK_DATA_TYPES,
    TRADE_COLUMNS,
    InputRecord,
    check_signal_instruments,
    fetch_book,
    fetch_trades,
    load_bars,
    ranges_for_key,
    record,
    trade_keys_for_day,
)
from backtest_pipeline.run.inputs import load_funding as read_funding_inputs
from backtest_pipeline.run.runner import record_failure
from backtest_pipeline.signals.intervals import signal_intervals
from backtest_pipeline.signals.windows import apply_execution_window
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.ucs import UnifiedCloudService

if TYPE_CHECKING:
    from backtest_pipeline.engine.driver import DayInput

log = logging.getLogger("backtest_pipeline.stages")

INPUTS_KEY = b"backtest.inputs"


# ---- read statistics carried in schema metadata ----------------------------------------------


def with_inputs(table: pa.Table | pl.DataFrame, records: Sequence[InputRecord]) -> pa.Table:
    """``table`` as Arrow with the read records attached (they survive Parquet round trips)."""
    t = table.to_arrow() if isinstance(table, pl.DataFrame) else table
    meta = dict(t.schema.metadata or {})
    meta[INPUTS_KEY] = json.dumps([r.as_dict() for r in records]).encode()
    return t.replace_schema_metadata(meta)


def inputs_of(table: pa.Table) -> list[InputRecord]:
    raw = (table.schema.metadata or {}).get(INPUTS_KEY)
    return [InputRecord(**r) for r in json.loads(raw)] if raw else []


@contextmanager
def failing_run(
    ucs: UnifiedCloudService, config: BacktestConfig, days: Sequence[date]
) -> Iterator[None]:
    """A step that fails marks the run of these days FAILED, as `run_backtest` would.

    Input problems surface in the Dagster steps before `backtest_run`; the results layout must
    still show a FAILED summary naming the object and the problem, and no result Parquet.
    """
    try:
        yield
    except Exception as exc:
        try:
            uri = record_failure(ucs, config, min(days), max(days), exc)
            log.error(
                "run of %s over %s..%s FAILED: %s (summary: %s)",
                config.name,
                min(days),
                max(days),
                exc,
                uri,
            )
        except Exception as write_exc:  # storage itself may be what failed
            log.error("could not record the failure: %s", write_exc)
        raise


def to_polars(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


# ---- inputs -----------------------------------------------------------------------------------


def load_instruments(ucs: UnifiedCloudService, day: date) -> pa.Table:
    """The day's validated instruments (with the object's read record)."""
    rec = record(ucs, "instruments", layout.instruments_path(day))
    return with_inputs(readers.read_instruments(ucs, day), [rec])


def load_signals(ucs: UnifiedCloudService, config: BacktestConfig, day: date) -> pa.Table:
    """The day's validated signals of the configuration's strategy; none → an empty table.

    A day without a signals object is traded as a day without signals, as ``load_day`` does.
    """
    path = layout.signals_path(day, config.strategy_id)
    try:
        rec = record(ucs, "signals", path)
    except ObjectNotFoundError:
        log.warning("no signals for strategy %s on %s", config.strategy_id, day)
        return with_inputs(readers.empty_signals(), [])
    signals = apply_execution_window(
        readers.read_signals(ucs, day, config.strategy_id), config.algo
    )
    return with_inputs(signals, [rec])


def compute_intervals(
    signals: pa.Table | pl.DataFrame, config: BacktestConfig, day: date
) -> pl.DataFrame:
    """Per-instrument merged signal intervals of the day (inclusive ns bounds)."""
    return signal_intervals(to_polars(signals), day, config.lookback_s, config.grace_s)


def fetch_tick_slices(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    day: date,
    instruments: pa.Table | pl.DataFrame,
    signals: pa.Table | pl.DataFrame,
    intervals: pl.DataFrame,
) -> pa.Table:
    """Trades inside the day's signal intervals, by byte-range reads; one table, all keys.

    Columns: ``instrument_key`` + the validated trade columns. The records (bytes read vs object
    size, generation) of every ticks object are attached as metadata.
    """
    instruments_df, signals_df = to_polars(instruments), to_polars(signals)
    check_signal_instruments(
        signals_df,
        instruments_df,
        config,
        ucs.uri(layout.target("signals"), layout.signals_path(day, config.strategy_id)),
        ucs.uri(layout.target("instruments"), layout.instruments_path(day)),
    )
    keys = trade_keys_for_day(config, instruments_df, signals_df)
    parts: list[pa.Table] = []
    records: list[InputRecord] = []
    for key in keys:
        ranges = ranges_for_key(config, intervals, key, day)
        if not ranges:
            continue
        table, record = fetch_trades(ucs, day, key, ranges, needed_by=signals_df.height)
        # not pa.array of a list: the same column, without pyarrow's import of pandas
        column = schemas.repeated_string(key, table.num_rows)
        table = table.add_column(0, "instrument_key", column)
        parts.append(table)
        records.append(record)
    if parts:
        out = pa.concat_tables([p.cast(parts[0].schema) for p in parts])
    else:
        out = pa.table(
            {
                "instrument_key": pa.array([], pa.string()),
                **{
                    c: pa.array(
                        [],
                        pa.int64()
                        if c == "ts_event"
                        else pa.float64()
                        if c in ("price", "size")
                        else pa.string(),
                    )
                    for c in TRADE_COLUMNS
                },
            }
        )
    meta = dict(out.schema.metadata or {})
    meta[b"backtest.keys"] = json.dumps(
        [k for k in keys if ranges_for_key(config, intervals, k, day)]
    ).encode()
    return with_inputs(out.replace_schema_metadata(meta), records)


def split_slices(table: pa.Table) -> dict[str, pa.Table]:
    """tick_slices → ``{instrument_key: trades}`` (keys with no row in range kept, empty)."""
    df = to_polars(table)
    raw = (table.schema.metadata or {}).get(b"backtest.keys")
    keys = json.loads(raw) if raw else df["instrument_key"].unique(maintain_order=True).to_list()
    return {
        k: df.filter(pl.col("instrument_key") == k).drop("instrument_key").to_arrow() for k in keys
    }


def load_funding(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    day: date,
    instruments: pa.Table | pl.DataFrame,
) -> pa.Table:
    """Funding events of the run's perpetuals that day, one table with ``instrument_key``."""
    available = set(to_polars(instruments)["instrument_key"].to_list())
    by_key, records = read_funding_inputs(ucs, config, day, available)
    frames = [df.with_columns(pl.lit(k).alias("instrument_key")) for k, df in by_key.items()]
    df = (
        pl.concat(frames, how="vertical_relaxed")
        if frames
        else pl.DataFrame(
            schema={
                "ts_event": pl.Int64,
                "funding_rate": pl.Float64,
                "mark_price": pl.Float64,
                "instrument_key": pl.Utf8,
            }
        )
    )
    return with_inputs(df, records)


def split_funding(table: pa.Table) -> dict[str, pl.DataFrame]:
    df = to_polars(table)
    keys = df["instrument_key"].unique(maintain_order=True).to_list()
    return {k: df.filter(pl.col("instrument_key") == k).drop("instrument_key") for k in keys}


# ---- the catalog --------------------------------------------------------------------------------


#: What of one instrument's book a day's catalog holds: its tick data type, the half-open ns
#: ranges of the signal intervals (as for its trades) and how many signals need them.
BookRequest = tuple[str, list[tuple[int, int]], int]


def book_requests(
    config: BacktestConfig,
    market_data: Mapping[str, MarketData],
    day: date,
    instruments: pa.Table | pl.DataFrame,
    intervals: pa.Table | pl.DataFrame,
) -> dict[str, BookRequest]:
    """Per instrument of the day run on quotes or depth, the book slice it would need.

    The same ranges as its trades (``ranges_for_key``), read as ``load_day`` reads them, so
    the catalog holds exactly the rows `backtest run` replays, the row in force before each
    interval included. :func:`build_catalog` keeps those of the instruments whose trades the
    day's slices hold (the slices themselves may stay in storage until then).
    """
    iv = to_polars(intervals)
    available = set(to_polars(instruments)["instrument_key"].to_list())
    out: dict[str, BookRequest] = {}
    for key in (k for k in config.instruments if k in available):
        kind = market_data.get(key, "trades")
        if kind == "trades":
            continue
        ranges = ranges_for_key(config, iv, key, day)
        if ranges:
            out[key] = (BOOK_DATA_TYPES[kind], ranges, iv.height)
    return out


@dataclass(frozen=True)
class StagedTrades:
    """A day's catalog trade files, written ahead by :func:`stage_trades` (a local directory).

    Why: writing them is most of a catalog's work and needs no NautilusTrader, so the Dagster
    process writes them from the slices it has just fetched and stored, on its own core, and
    the run's worker, which also runs the engine, only adds the books, the instruments and the
    manifest (:func:`build_catalog` with ``staged``). The files are those :func:`build_catalog`
    writes from the stored slices object: the same table, the same bytes.
    """

    directory: str
    entries: dict[str, Any]
    inputs: list[dict[str, Any]]


def stage_trades(day: date, slices: pa.Table, instruments: pa.Table | pl.DataFrame) -> StagedTrades:
    """The trade files of ``day``'s catalog written now, in a new directory of this machine."""
    workdir = Path(tempfile.mkdtemp(prefix=f"catalog-{day}-"))
    try:
        entries = catalog_mod.write_day_trades(
            workdir, day, split_slices(slices), to_polars(instruments)
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return StagedTrades(str(workdir), entries, [r.as_dict() for r in inputs_of(slices)])


def build_catalog(
    ucs: UnifiedCloudService,
    day: date,
    scope: str,
    slices: pa.Table | None,
    instruments: pa.Table | pl.DataFrame,
    books: Mapping[str, BookRequest] | None = None,
    staged: StagedTrades | None = None,
) -> dict[str, Any]:
    """Write the day's slices as a Nautilus catalog and store it under its prefix via UCS.

    ``books`` (from :func:`book_requests`): the quotes or 10-level snapshots read here, by the
    byte ranges of ``load_day``, and written beside the trades; their read records follow each
    instrument's trades record in the manifest's ``inputs``, in ``load_day``'s order, and the
    invalid periods of a depth book travel in the manifest (``book_invalid``). ``staged``: the
    trade files were written ahead (:func:`stage_trades`; ``slices`` is then None); the catalog
    is completed in their directory, which is removed afterwards, as a new one would be.
    """
    if (slices is None) == (staged is None):
        raise ValueError("build_catalog: give the day's slices or its staged trade files")
    workdir = Path(staged.directory) if staged else Path(tempfile.mkdtemp(prefix=f"catalog-{day}-"))
    try:
        tables: dict[str, dict[str, pa.Table]] = {}
        records: dict[str, InputRecord] = {}
        invalid: dict[str, list[dict[str, Any]]] = {}
        trades = split_slices(slices) if slices is not None else None
        keys = set(staged.entries) if staged else set(trades or {})
        for key, (data_type, ranges, needed_by) in sorted((books or {}).items()):
            if key not in keys:
                continue
            table, rec, periods = fetch_book(ucs, day, key, data_type, ranges, needed_by)  # type: ignore[arg-type]
            tables[key] = {data_type: table}
            records[layout.trades_path(day, key)] = rec
            if periods:
                invalid[key] = [dataclasses.asdict(p) for p in periods]
        inputs: list[dict[str, Any]] = []
        read = staged.inputs if staged else [r.as_dict() for r in inputs_of(slices)]  # type: ignore[arg-type]
        for r in read:
            inputs.append(r)
            if r["path"] in records:
                inputs.append(records[r["path"]].as_dict())
        manifest = catalog_mod.write_day_catalog(
            workdir,
            day,
            trades,
            to_polars(instruments),
            extra={"inputs": inputs, "scope": scope, "book_invalid": invalid},
            books=tables,
            trade_entries=staged.entries if staged else None,
        )
        prefix = catalog_mod.catalog_prefix(day, scope)
        catalog_mod.upload_catalog(ucs, workdir, prefix)
        manifest["uri"] = ucs.uri(layout.target("results"), prefix)
        manifest["bytes"] = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
        return manifest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_CLIENTS: dict[str, UnifiedCloudService] = {}


def _client_for(root: str) -> UnifiedCloudService:
    """One UCS client per root in a worker process (a GCS client is not free to create)."""
    if root not in _CLIENTS:
        _CLIENTS[root] = UnifiedCloudService(root)
    return _CLIENTS[root]


def build_catalog_task(
    root: str,
    day: date,
    scope: str,
    slices: pa.Table | str | None,
    instruments: pa.Table | pl.DataFrame,
    books: Mapping[str, BookRequest] | None = None,
    staged: StagedTrades | None = None,
) -> dict[str, Any]:
    """:func:`build_catalog` as a :class:`BacktestWorker` task.

    ``slices`` is the day's tick_slices table, or the path of its stored object in the results
    bucket: then the worker reads it itself, and the slices never cross the pipe; with
    ``staged`` (the trade files written ahead from that very table) it is not read at all.
    """
    ucs = _client_for(root)
    if staged is not None:
        return build_catalog(ucs, day, scope, None, instruments, books, staged)
    if isinstance(slices, str):
        data = ucs.download_bytes_sync(layout.target("results"), slices)
        slices = pq.ParquetFile(io.BytesIO(data)).read()
    return build_catalog(ucs, day, scope, slices, instruments, books)


#: The catalog asset's per-day value (:func:`manifest_table`).
MANIFEST_SCHEMA = pa.schema(
    [
        ("instrument_key", pa.string()),
        ("instrument_id", pa.string()),
        ("rows", pa.int64()),
        ("file", pa.string()),
    ]
)


def manifest_table(manifest: dict[str, Any]) -> pa.Table:
    """The catalog asset's per-day value: one row per instrument written.

    Built through Polars: ``pa.Table.from_pylist`` would make pyarrow import pandas (~0.3 s)
    in the Dagster process, which needs it for nothing else.
    """
    entries = manifest["instruments"]
    frame = pl.DataFrame(
        {
            "instrument_key": list(entries),
            "instrument_id": [e["instrument_id"] for e in entries.values()],
            "rows": [int(e["rows"]) for e in entries.values()],
            "file": [e["file"] or "" for e in entries.values()],
        },
        schema=schemas.empty_frame(MANIFEST_SCHEMA).schema,
    )
    t = schemas.to_arrow(frame, MANIFEST_SCHEMA)
    return t.replace_schema_metadata(
        {b"backtest.catalog_uri": str(manifest.get("uri", "")).encode()}
    )


@dataclass
class DayBundle:
    """What the backtest process gets of a day from the materialized assets.

    Not the trades (the process reads them from the day's catalog) nor the 1-minute bars (read
    there too, as ``load_day`` reads them: by the prefetch thread, while the engine runs).
    """

    day: date
    instruments: pl.DataFrame
    signals: pl.DataFrame
    intervals: pl.DataFrame
    funding: dict[str, pl.DataFrame]
    pre_inputs: list[InputRecord] = field(default_factory=list)
    post_inputs: list[InputRecord] = field(default_factory=list)
    catalog_prefix: str = ""


def make_bundle(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    scope: str,
    day: date,
    instruments: pa.Table,
    signals: pa.Table,
    intervals: pa.Table | pl.DataFrame,
    funding: pa.Table,
) -> DayBundle:
    return DayBundle(
        day=day,
        instruments=to_polars(instruments),
        signals=to_polars(signals),
        intervals=to_polars(intervals),
        funding=split_funding(funding),
        pre_inputs=inputs_of(instruments) + inputs_of(signals),
        post_inputs=inputs_of(funding),
        catalog_prefix=catalog_mod.catalog_prefix(day, scope),
    )


class CatalogDayLoader:
    """A ``run_backtest`` day loader that takes the day's ticks from its Nautilus catalog.

    Trades, and the quotes or 10-level snapshots of the instruments the run's ``market_data``
    puts on a book; local roots are read in place, ``gs://`` catalogs downloaded to a temp dir.
    """

    def __init__(self, bundles: Sequence[DayBundle]) -> None:
        self.bundles = {b.day: b for b in bundles}

    def _catalog_dir(self, ucs: UnifiedCloudService, prefix: str, tmp: Path) -> Path:
        if not ucs.is_gcs:
            root = Path(ucs.backend.root)  # type: ignore[attr-defined]
            local = root / layout.target("results").gcs_bucket / prefix
            catalog_mod.read_manifest(local)
            return local
        return catalog_mod.download_catalog(ucs, prefix, tmp)

    def __call__(
        self,
        ucs: UnifiedCloudService,
        config: BacktestConfig,
        day: date,
        market_data: Mapping[str, MarketData] | None = None,
    ) -> "tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame]]":
        b = self.bundles.get(day)
        if b is None:
            raise KeyError(f"no materialized inputs for {day}; have {sorted(self.bundles)}")
        uri = ucs.uri(layout.target("results"), b.catalog_prefix)
        with tempfile.TemporaryDirectory(prefix=f"catalog-read-{day}-") as tmp:
            cdir = self._catalog_dir(ucs, b.catalog_prefix, Path(tmp))
            manifest = catalog_mod.read_manifest(cdir)
            trades = catalog_mod.read_day_trades(cdir)
            books: dict[str, dict[str, pa.Table]] = {"quotes": {}, "depth": {}}
            for key in trades:
                kind = (market_data or {}).get(key, "trades")
                if kind == "trades":
                    continue
                data_type = BOOK_DATA_TYPES[kind]
                entry = manifest["instruments"][key]
                if data_type not in entry.get("books", {}):
                    raise catalog_mod.CatalogError(
                        f"{uri}: the catalog of {day} holds no {data_type} for {key}, which the "
                        f"run's market_data ({kind}) needs; materialize nautilus_catalog for the "
                        "run's days again"
                    )
                table = catalog_mod.read_book(cdir, data_type, entry["instrument_id"])
                books[kind][key] = schemas.validate_tick(table, data_type, uri, day=day)  # type: ignore[arg-type]
        bars, bar_records = load_bars(ucs, config, day)
        tick_inputs = [InputRecord(**r) for r in manifest.get("inputs", [])]
        invalid = {
            k: [InvalidPeriod(**p) for p in v]
            for k, v in manifest.get("book_invalid", {}).items()
            if k in books["depth"]
        }
        by_key = {
            k: pl.DataFrame(
                ranges_for_key(config, b.intervals, k, day),
                schema=["start_ns", "end_ns"],
                orient="row",
            )
            for k in trades
        }
        from backtest_pipeline.engine.driver import DayInput

        day_input = DayInput(
            day=day,
            instruments=b.instruments,
            signals=b.signals,
            trades=trades,
            funding=b.funding,
            bars=bars or None,
            quotes=books["quotes"],
            depth=books["depth"],
            book_invalid=invalid,
        )
        return day_input, b.pre_inputs + tick_inputs + b.post_inputs + bar_records, by_key
