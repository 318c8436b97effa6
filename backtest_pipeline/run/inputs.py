"""Reading a run's days: what each day needs, read through UCS, validated, and prefetched.

A day's inputs are the instruments, the strategy's signals, the trades inside the signal intervals
(byte ranges of Parquet row groups unless the run is `full_day`), funding and 1-minute bars. Every
object read is recorded with its generation and the bytes it cost, so a run's summary says
exactly what it was computed from. Shared by the one-engine runner, the time shards and the
Dagster stages, which is why it is its own module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, MarketData
from backtest_pipeline.data import readers, schemas
from backtest_pipeline.data.books import InvalidPeriod, decode_invalid_periods
from backtest_pipeline.data.schemas import DataValidationError
from backtest_pipeline.signals.intervals import signal_intervals
from backtest_pipeline.signals.windows import apply_execution_window
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.parquet_ranges import merge_ranges
from backtest_pipeline.storage.ucs import UnifiedCloudService

if TYPE_CHECKING:
    # NautilusTrader costs seconds to import; Dagster steps that only read inputs never need it.
    from backtest_pipeline.engine.driver import DayInput

log = logging.getLogger("backtest_pipeline.run")

TRADE_COLUMNS = ["ts_event", "trade_id", "price", "size", "side"]


@dataclass
class InputRecord:
    bucket: str
    path: str
    generation: str
    bytes_total: int
    bytes_read: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "path": self.path,
            "generation": self.generation,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
        }


ProgressFn = Callable[[str, int, int, dict[str, Any]], None]
DayLoader = Callable[
    [UnifiedCloudService, BacktestConfig, date],
    "tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame]]",
]


def trade_keys_for_day(
    config: BacktestConfig, instruments: pl.DataFrame, signals: pl.DataFrame
) -> list[str]:
    """Instruments whose ticks the day needs: those signalled, plus their router peers."""
    available = set(instruments.get_column("instrument_key").to_list())
    configured = [k for k in config.instruments if k in available]
    if config.full_day:
        return configured
    signalled = set(signals.get_column("instrument_key").to_list()) if signals.height else set()

    def asset(k: str) -> tuple[str, str]:
        _v, t, pair = k.split(":")
        return ("SPOT" if t == "SPOT" else "DERIV", pair)

    wanted_assets = {asset(k) for k in signalled}
    return [k for k in configured if asset(k) in wanted_assets]


def load_day(
    ucs: UnifiedCloudService,
    config: BacktestConfig,
    day: date,
    market_data: Mapping[str, MarketData] | None = None,
) -> tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame]]:
    """Everything one day of the run needs, read and validated.

    ``market_data`` (from :func:`resolve_market_data`) adds each instrument's quotes or
    10-level snapshots over the same intervals as its trades.
    """
    inputs: list[InputRecord] = []
    t_instr, t_sig = layout.target("instruments"), layout.target("signals")

    ipath = layout.instruments_path(day)
    inputs.append(record(ucs, "instruments", ipath))
    instruments = readers.read_instruments(ucs, day)

    spath = layout.signals_path(day, config.strategy_id)
    try:
        sinfo = ucs.stat_sync(t_sig, spath)
    except ObjectNotFoundError:
        log.warning(
            "no signals for strategy %s on %s (%s): the day is skipped for trading",
            config.strategy_id,
            day,
            ucs.uri(t_sig, spath),
        )
        signals = schemas.empty_frame(schemas.SIGNALS_SCHEMA)
    else:
        signals = apply_execution_window(
            readers.read_signals(ucs, day, config.strategy_id), config.algo
        )
        inputs.append(
            InputRecord(t_sig.gcs_bucket, spath, sinfo.generation, sinfo.size, sinfo.size)
        )

    check_signal_instruments(
        signals, instruments, config, ucs.uri(t_sig, spath), ucs.uri(t_instr, ipath)
    )
    keys = trade_keys_for_day(config, instruments, signals)
    intervals = signal_intervals(signals, day, config.lookback_s, config.grace_s)
    by_key: dict[str, pl.DataFrame] = {}
    trades = {}
    books: dict[str, dict[str, pa.Table]] = {"quotes": {}, "depth": {}}
    book_invalid: dict[str, list[InvalidPeriod]] = {}
    for key in keys:
        ranges = ranges_for_key(config, intervals, key, day)
        if not ranges:
            continue
        by_key[key] = pl.DataFrame(ranges, schema=["start_ns", "end_ns"], orient="row")
        table, fetched = fetch_trades(ucs, day, key, ranges, needed_by=signals.height)
        trades[key] = table
        inputs.append(fetched)
        kind = (market_data or {}).get(key, "trades")
        if kind != "trades":
            books[kind][key], fetched, periods = fetch_book(
                ucs, day, key, BOOK_DATA_TYPES[kind], ranges, needed_by=signals.height
            )
            inputs.append(fetched)
            if periods:
                book_invalid[key] = periods
                log.warning(
                    "%s on %s: the book is invalid in %d period(s) (%s); orders arriving there "
                    "are rejected and working orders cancelled at their start",
                    key, day, len(periods), "; ".join(p.describe() for p in periods),
                )  # fmt: skip

    available = set(instruments.get_column("instrument_key").to_list())
    funding, funding_inputs = load_funding(ucs, config, day, available)
    bars, bar_inputs = load_bars(ucs, config, day)
    inputs += funding_inputs + bar_inputs
    from backtest_pipeline.engine.driver import DayInput

    day_input = DayInput(
        day=day,
        instruments=instruments,
        signals=signals,
        trades=trades,
        funding=funding,
        bars=bars or None,
        quotes=books["quotes"],
        depth=books["depth"],
        book_invalid=book_invalid,
    )
    return day_input, inputs, by_key


def record(ucs: UnifiedCloudService, role: layout.Role, path: str) -> InputRecord:
    """Stat an object (missing → ObjectNotFoundError) and record it as read whole."""
    target = layout.target(role)
    info = ucs.stat_sync(target, path)
    return InputRecord(target.gcs_bucket, path, info.generation, info.size, info.size)


def load_funding(
    ucs: UnifiedCloudService, config: BacktestConfig, day: date, available: set[str]
) -> tuple[dict[str, pl.DataFrame], list[InputRecord]]:
    """Funding events of the run's perpetuals available that day.

    A missing funding object is a documented, logged skip (no funding applied that day): the
    executions themselves are complete without it, unlike a missing tick file.
    """
    funding: dict[str, pl.DataFrame] = {}
    records: list[InputRecord] = []
    for key in config.instruments:
        if key.split(":")[1] != "PERPETUAL" or key not in available:
            continue
        path = layout.funding_path(day, key)
        try:
            records.append(record(ucs, "ticks", path))
        except ObjectNotFoundError:
            log.warning(
                "no funding rates for %s on %s (%s): no funding applied that day",
                key,
                day,
                ucs.uri(layout.target("ticks"), path),
            )
            continue
        funding[key] = readers.read_funding(ucs, day, key)
    return funding, records


def load_bars(
    ucs: UnifiedCloudService, config: BacktestConfig, day: date
) -> tuple[dict[str, pl.DataFrame], list[InputRecord]]:
    """Derived 1-minute closes that mark positions between signal intervals, where they exist."""
    bars: dict[str, pl.DataFrame] = {}
    records: list[InputRecord] = []
    if not config.use_bars_for_marks or config.full_day:
        return bars, records
    t_ticks = layout.target("ticks")
    for key in config.instruments:
        path = layout.bars_path(day, key)
        try:
            records.append(record(ucs, "ticks", path))
        except ObjectNotFoundError:
            continue
        bars[key] = ucs.download_from_gcs_sync(t_ticks, path).select("ts_event", "close")
    return bars, records


def check_signal_instruments(
    signals: pl.DataFrame,
    instruments: pl.DataFrame,
    config: BacktestConfig,
    signals_uri: str,
    instruments_uri: str,
) -> None:
    """A signal for an instrument the run cannot trade that day is an error, never a skip.

    Skipping would silently omit executions from results that look complete.
    """
    if signals.height == 0:
        return
    available = set(instruments.get_column("instrument_key").to_list())
    configured = set(config.instruments)
    keys = signals.get_column("instrument_key")
    for i, key in enumerate(keys.to_list()):
        if key not in configured:
            raise DataValidationError(
                signals_uri,
                f"signal {signals['signal_id'][i]!r} (row {i}) is for instrument {key!r}, which is "
                f"not in the run's instruments {sorted(configured)}",
                column="instrument_key",
                row=i,
                value=key,
            )
        if key not in available:
            raise DataValidationError(
                signals_uri,
                f"signal {signals['signal_id'][i]!r} (row {i}) is for instrument {key!r}, which is "
                f"not available that day: absent from {instruments_uri}",
                column="instrument_key",
                row=i,
                value=key,
            )


def ranges_for_key(
    config: BacktestConfig, intervals: pl.DataFrame, key: str, day: date
) -> list[tuple[int, int]]:
    """Half-open [start, end) ns ranges of `key`'s trades that the day needs.

    Router peers (the same asset on other venues) share the intervals of the signalled
    instrument, so the router can price them. Intervals are inclusive; ranges are half-open.
    """
    if config.full_day:
        return [layout.day_bounds_ns(day)]
    pair = key.split(":")[2]
    rows = intervals.filter(pl.col("instrument_key").str.ends_with(":" + pair))
    if rows.height == 0:
        return []
    return merge_ranges([(int(s), int(e) + 1) for s, e in rows.select("start_ns", "end_ns").rows()])


def fetch_trades(
    ucs: UnifiedCloudService, day: date, key: str, ranges: list[tuple[int, int]], needed_by: int
) -> tuple[pa.Table, InputRecord]:
    """The validated trades of `key` in `ranges` by byte-range reads, and what they cost.

    The last trade before each range is included (when it lies in a fetched row group) so the
    engine's book holds the price in force when a signal window opens, not one left over from
    an earlier window. A tick object with no rows at all is an error when signals need it.
    """
    return fetch_ticks(ucs, day, key, "trades", ranges, needed_by)


# Columns read per data type: everything but ts_init (validation fills it with ts_event), which
# the engine does not use and which would cost a fifth of a trades file's bytes.
TICK_COLUMNS: dict[layout.TickDataType, list[str]] = {
    "trades": TRADE_COLUMNS,
    "quotes": [n for n in schemas.QUOTES_SCHEMA.names if n != "ts_init"],
    "book_depth10": [n for n in schemas.BOOK_DEPTH10_SCHEMA.names if n != "ts_init"],
}


def fetch_ticks(
    ucs: UnifiedCloudService,
    day: date,
    key: str,
    data_type: layout.TickDataType,
    ranges: list[tuple[int, int]],
    needed_by: int,
) -> tuple[pa.Table, InputRecord]:
    """Rows of one tick data type (trades, quotes, book_depth10) in `ranges`, by byte ranges.

    One reading path for the three types: the footer's ``ts_event`` statistics select the row
    groups, only those column chunks are fetched, and ``include_prior`` adds the row in force
    when each range opens (the last quote or book snapshot before it). ``bytes_read`` in the
    returned record counts exactly what was fetched.
    """
    table, rec, _ = fetch_book(ucs, day, key, data_type, ranges, needed_by)
    return table, rec


def fetch_book(
    ucs: UnifiedCloudService,
    day: date,
    key: str,
    data_type: layout.TickDataType,
    ranges: list[tuple[int, int]],
    needed_by: int,
) -> tuple[pa.Table, InputRecord, list[InvalidPeriod]]:
    """:func:`fetch_ticks`, plus the book's invalid periods that day (validated).

    They come from the footer's key-value metadata, read anyway for the row-group ranges, so
    they cost no byte more; a file without the key has none (trades and quotes never do).
    Quotes and books are read with the row in force at each range start wherever it lies, and
    with only the part of the footer those row groups need (its row-group index).
    """
    t_ticks = layout.target("ticks")
    tpath = layout.tick_path(day, key, data_type)
    uri = ucs.uri(t_ticks, tpath)
    periods: list[InvalidPeriod] = []
    res = ucs.download_from_gcs_streaming_sync(
        t_ticks,
        tpath,
        timestamp_range=list(ranges),
        columns=TICK_COLUMNS[data_type],
        use_byte_range=True,
        include_prior=True,
        # Trades keep their established reads (byte-identical runs).
        prior_state=data_type != "trades",
    )
    if data_type == "book_depth10":
        periods = decode_invalid_periods(res.key_value_metadata, uri, *layout.day_bounds_ns(day))
    if res.object_rows == 0:
        what = "trades" if data_type == "trades" else f"{data_type} rows"
        raise DataValidationError(
            uri,
            f"the {data_type} object holds no {what} (0 rows) but {needed_by} signal(s) of {day} "
            "need it",
        )
    table = schemas.validate_tick(res.table, data_type, uri, day=day)
    rec = InputRecord(t_ticks.gcs_bucket, tpath, res.generation, res.object_size, res.bytes_read)
    return table, rec, periods


#: The tick data type behind each book mode, richest first (``auto`` takes the first present).
BOOK_DATA_TYPES: dict[str, layout.TickDataType] = {"depth": "book_depth10", "quotes": "quotes"}


class MarketDataMissing(ValueError):
    """A run asked for a market data type that some of its days lack (the objects are named)."""


def tick_types_present(ucs: UnifiedCloudService, day: date, key: str) -> list[layout.TickDataType]:
    """The tick data types stored for `key` on `day`, poorest first (trades, quotes, book)."""
    t_ticks = layout.target("ticks")
    return [
        dt
        for dt in layout.TICK_DATA_TYPES
        if ucs.exists_sync(t_ticks, layout.tick_path(day, key, dt))
    ]


def resolve_market_data(
    ucs: UnifiedCloudService, config: BacktestConfig, days: list[date]
) -> dict[str, MarketData]:
    """Per instrument of the run, the market data its venue's book is built from.

    ``auto``: the richest type whose object exists on every day of the run that has the
    instrument's trades (depth, then quotes, then trades). Nautilus sets the book type per
    venue, so a venue runs on depth only if all its instruments can; otherwise its depth
    instruments fall back to quotes (or trades), with a warning. A named type must exist for
    every instrument on every such day: else :class:`MarketDataMissing` lists every missing
    object. ``trades`` is today's model and reads nothing more.
    """
    choice = config.market_data
    if choice == "trades":
        return dict.fromkeys(config.instruments, "trades")
    t_ticks = layout.target("ticks")
    missing: dict[str, dict[str, list[str]]] = {}  # key → mode → URIs of the days that lack it
    for key in config.instruments:
        missing[key] = {mode: [] for mode in BOOK_DATA_TYPES}
        for d in days:
            present = tick_types_present(ucs, d, key)
            if "trades" not in present:
                continue  # not traded that day: nothing to build a book for
            for mode, data_type in BOOK_DATA_TYPES.items():
                if data_type not in present:
                    missing[key][mode].append(ucs.uri(t_ticks, layout.tick_path(d, key, data_type)))
    if choice != "auto":
        lacking = [uri for key in config.instruments for uri in missing[key][choice]]
        if lacking:
            raise MarketDataMissing(
                f"market_data: {choice} asked for, but {len(lacking)} object(s) do not exist: "
                + ", ".join(lacking)
            )
        return dict.fromkeys(config.instruments, choice)  # type: ignore[arg-type]
    out: dict[str, MarketData] = {}
    for key in config.instruments:
        has = [mode for mode in BOOK_DATA_TYPES if not missing[key][mode]]
        out[key] = has[0] if has else "trades"  # type: ignore[assignment]
    for venue in sorted({k.split(":")[0] for k in config.instruments}):
        members = [k for k in config.instruments if k.split(":")[0] == venue]
        if any(out[k] == "depth" for k in members) and any(out[k] != "depth" for k in members):
            for k in members:
                if out[k] == "depth":
                    out[k] = "quotes" if not missing[k]["quotes"] else "trades"
                    log.warning(
                        "%s has book_depth10 on every day but shares venue %s with instruments "
                        "without it (Nautilus's book type is per venue): it runs on %s",
                        k, venue, out[k],
                    )  # fmt: skip
    return out


@dataclass
class ReadSummary:
    """What a run read: every input object, the signal intervals, and the time it took."""

    inputs: list[InputRecord] = field(default_factory=list)
    intervals: dict[str, pl.DataFrame] = field(default_factory=dict)
    read_time_s: float = 0.0
    margin_init: dict[str, float] = field(default_factory=dict)


class Prefetcher:
    """Reads day d+1 in a thread while the engine runs day d (I/O overlapped with the engine)."""

    def __init__(
        self,
        ucs: UnifiedCloudService,
        config: BacktestConfig,
        days: list[date],
        progress: ProgressFn | None,
        loader: DayLoader,
    ) -> None:
        self.ucs, self.config, self.days, self.progress = ucs, config, days, progress
        self.loader = loader
        self.inputs_by_day: dict[date, list[InputRecord]] = {}
        self.read_time_by_day: dict[date, float] = {}
        self.intervals: dict[str, pl.DataFrame] = {}
        self.ticks = 0
        self.margin_init: dict[str, float] = {}

    @property
    def inputs(self) -> list[InputRecord]:
        return [r for day in self.inputs_by_day.values() for r in day]

    def summary(self, since: date | None = None) -> ReadSummary:
        """What was read for the days from ``since`` on (a time shard's own days) or all."""
        first = since or date.min
        return ReadSummary(
            inputs=[r for d, day in self.inputs_by_day.items() if d >= first for r in day],
            intervals={
                k: v for k, v in self.intervals.items() if date.fromisoformat(k[:10]) >= first
            },
            read_time_s=sum(t for d, t in self.read_time_by_day.items() if d >= first),
            margin_init=dict(self.margin_init),
        )

    def _load(
        self, day: date
    ) -> tuple[DayInput, list[InputRecord], dict[str, pl.DataFrame], float]:
        t0 = time.perf_counter()
        d, inp, iv = self.loader(self.ucs, self.config, day)
        return d, inp, iv, time.perf_counter() - t0

    def __iter__(self) -> Iterator[DayInput]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
            nxt: Future[Any] | None = pool.submit(self._load, self.days[0]) if self.days else None
            for i, day in enumerate(self.days):
                assert nxt is not None
                day_input, inputs, intervals, dt = nxt.result()
                nxt = pool.submit(self._load, self.days[i + 1]) if i + 1 < len(self.days) else None
                self.inputs_by_day[day] = inputs
                for row in day_input.instruments.select(
                    "instrument_key", "instrument_type", "margin_init"
                ).iter_rows():
                    # Spot is a cash account: holding it uses no margin.
                    self.margin_init.setdefault(row[0], 0.0 if row[1] == "SPOT" else float(row[2]))
                for k, v in intervals.items():
                    self.intervals[f"{day.isoformat()}|{k}"] = v
                self.read_time_by_day[day] = dt
                n = sum(t.num_rows for t in day_input.trades.values())
                self.ticks += n
                if self.progress:
                    self.progress(
                        "day", i + 1, len(self.days), {"day": day.isoformat(), "ticks": n}
                    )
                yield day_input


def missing_inputs(ucs: UnifiedCloudService, config: BacktestConfig, day: date) -> list[str]:
    """URIs of the day's input objects the configuration needs that do not exist yet."""
    wanted = [
        ("instruments", layout.instruments_path(day)),
        ("signals", layout.signals_path(day, config.strategy_id)),
    ]
    wanted += [("ticks", layout.trades_path(day, k)) for k in config.instruments]
    missing = []
    for role, path in wanted:
        target = layout.target(role)  # type: ignore[arg-type]
        if not ucs.exists_sync(target, path):
            missing.append(ucs.uri(target, path))
    return missing
