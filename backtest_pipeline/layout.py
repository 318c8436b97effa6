"""Every object path of the storage layout, and the validation of what goes into them.

The layout is the contract between the data producers, the backtests and the results readers
(see ``docs/storage.md``). Keeping every path string in this one module means a change of layout
is one edit, and means no user-supplied identifier can reach storage without passing
:func:`validate_component` first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Literal

DEFAULT_BUCKETS: Final[dict[str, str]] = {
    "instruments": "instruments-store-cefi-central-element-323112",
    "ticks": "market-data-tick-cefi-central-element-323112",
    "signals": "signals-store-cefi-central-element-323112",
    "results": "execution-store-cefi-central-element-323112",
}
BUCKET_ENV: Final[dict[str, str]] = {
    "instruments": "INSTRUMENTS_GCS_BUCKET",
    "ticks": "MARKET_DATA_GCS_BUCKET",
    "signals": "SIGNALS_GCS_BUCKET",
    "results": "EXECUTION_STORE_GCS_BUCKET",
}
BIGQUERY_DATASETS: Final[dict[str, str]] = {
    "instruments": "instruments",
    "ticks": "market_tick_data",
    "signals": "signals",
    "results": "execution_results",
}

Role = Literal["instruments", "ticks", "signals", "results"]

# Tick data types of the ticks bucket a run can replay, poorest first: a day may hold trades only,
# trades + quotes, or trades + quotes + a 10-level book (docs/storage.md).
TickDataType = Literal["trades", "quotes", "book_depth10"]
TICK_DATA_TYPES: Final[tuple[TickDataType, ...]] = ("trades", "quotes", "book_depth10")

RESULT_OBJECTS: Final[tuple[str, ...]] = (
    "summary.json",
    "orders.parquet",
    "fills.parquet",
    "positions.parquet",
    "equity_curve.parquet",
    "operations.parquet",
    "report.html",
)
RESULT_PARQUETS: Final[tuple[str, ...]] = (
    "orders.parquet",
    "fills.parquet",
    "positions.parquet",
    "equity_curve.parquet",
    "operations.parquet",
)
REPORT: Final[str] = "report.html"

_COMPONENT_RE: Final = re.compile(r"^[A-Za-z0-9._:-]+$")
MAX_COMPONENT_LEN: Final = 200
INSTRUMENT_TYPES: Final[tuple[str, ...]] = ("SPOT", "PERPETUAL", "FUTURE")


class LayoutError(ValueError):
    """A path component that would leave its prefix or is not a legal identifier."""


@dataclass(frozen=True)
class CloudTarget:
    """Where a role's objects live: the bucket (and the BigQuery dataset the live stack pairs it with)."""

    gcs_bucket: str
    bigquery_dataset: str | None = None


def bucket_for(role: Role) -> str:
    """The bucket of a role: environment override first, then the spec's default."""
    name = os.environ.get(BUCKET_ENV[role]) or DEFAULT_BUCKETS[role]
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", name) or ".." in name:
        raise LayoutError(f"bucket name {name!r} for role {role!r} is not a valid GCS bucket name")
    return name


def target(role: Role) -> CloudTarget:
    return CloudTarget(gcs_bucket=bucket_for(role), bigquery_dataset=BIGQUERY_DATASETS[role])


def validate_component(value: str, what: str) -> str:
    """Refuse anything that could escape its prefix: `..`, `/`, absolute paths, control characters.

    The allowed alphabet is the spec's ``[A-Za-z0-9._:-]``; `..` is refused even though both
    characters are legal, because some backends normalise it.
    """
    if not isinstance(value, str):
        raise LayoutError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise LayoutError(f"{what} is empty")
    if len(value) > MAX_COMPONENT_LEN:
        raise LayoutError(f"{what} {value[:40]!r}… is longer than {MAX_COMPONENT_LEN} characters")
    if ".." in value:
        raise LayoutError(f"{what} {value!r} contains '..' (path traversal)")
    if not _COMPONENT_RE.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._:-]", c)})
        raise LayoutError(
            f"{what} {value!r} contains characters outside [A-Za-z0-9._:-]: {[repr(c) for c in bad]}"
        )
    return value


def validate_instrument_key(key: str) -> str:
    """`VENUE:TYPE:BASE-QUOTE`, e.g. `BINANCE-FUTURES:PERPETUAL:BTC-USDT`."""
    validate_component(key, "instrument key")
    parts = key.split(":")
    if len(parts) != 3 or not all(parts):
        raise LayoutError(f"instrument key {key!r} is not of the form VENUE:TYPE:BASE-QUOTE")
    venue, itype, pair = parts
    if itype not in INSTRUMENT_TYPES:
        raise LayoutError(
            f"instrument key {key!r}: type {itype!r} is not one of {INSTRUMENT_TYPES}"
        )
    if pair.count("-") != 1 or pair.startswith("-") or pair.endswith("-"):
        raise LayoutError(f"instrument key {key!r}: {pair!r} is not BASE-QUOTE")
    return key


def parse_instrument_key(key: str) -> tuple[str, str, str, str]:
    """(venue, type, base, quote) of a validated key."""
    venue, itype, pair = validate_instrument_key(key).split(":")
    base, quote = pair.split("-")
    return venue, itype, base, quote


def validate_strategy_id(strategy_id: str) -> str:
    return validate_component(strategy_id, "strategy id")


def validate_run_id(run_id: str) -> str:
    return validate_component(run_id, "run_id")


def parse_day(day: str | date | datetime) -> date:
    """A UTC day from `YYYY-MM-DD` or a date; anything else is a clear error."""
    if isinstance(day, datetime):
        return day.date()
    if isinstance(day, date):
        return day
    try:
        return date.fromisoformat(str(day))
    except ValueError as exc:
        raise LayoutError(f"day {day!r} is not a YYYY-MM-DD date") from exc


def day_str(day: str | date | datetime) -> str:
    return parse_day(day).isoformat()


def days_between(start: str | date, end: str | date) -> list[date]:
    """Inclusive list of UTC days; `end` before `start` is an error, not an empty run."""
    s, e = parse_day(start), parse_day(end)
    if e < s:
        raise LayoutError(f"end day {e} is before start day {s}")
    return [s + timedelta(days=i) for i in range((e - s).days + 1)]


def day_bounds_ns(day: str | date) -> tuple[int, int]:
    """[start, end) of a UTC day in nanoseconds."""
    start_s = (parse_day(day) - date(1970, 1, 1)).days * 86_400
    return start_s * 1_000_000_000, (start_s + 86_400) * 1_000_000_000


# ---- object paths -------------------------------------------------------------------------


def instruments_path(day: str | date) -> str:
    return f"instrument_availability/by_date/day-{day_str(day)}/instruments.parquet"


def trades_prefix(day: str | date) -> str:
    return f"raw_tick_data/by_date/day-{day_str(day)}/data_type-trades/"


def trades_path(day: str | date, instrument_key: str) -> str:
    return f"{trades_prefix(day)}{validate_instrument_key(instrument_key)}.parquet"


def tick_prefix(day: str | date, data_type: TickDataType) -> str:
    """The folder of one tick data type on a day (`data_type-trades/`, `-quotes/`, `-book_depth10/`)."""
    if data_type not in TICK_DATA_TYPES:
        raise LayoutError(f"data type {data_type!r} is not one of {TICK_DATA_TYPES}")
    return f"raw_tick_data/by_date/day-{day_str(day)}/data_type-{data_type}/"


def tick_path(day: str | date, instrument_key: str, data_type: TickDataType) -> str:
    return f"{tick_prefix(day, data_type)}{validate_instrument_key(instrument_key)}.parquet"


def quotes_path(day: str | date, instrument_key: str) -> str:
    """Top of book (L1) of a day: a row at every change of best bid/ask."""
    return tick_path(day, instrument_key, "quotes")


def book_depth10_path(day: str | date, instrument_key: str) -> str:
    """10-level book snapshots of a day (each row the whole top 10, so a window starts anywhere)."""
    return tick_path(day, instrument_key, "book_depth10")


def funding_path(day: str | date, instrument_key: str) -> str:
    return (
        f"raw_tick_data/by_date/day-{day_str(day)}/data_type-funding_rates/"
        f"{validate_instrument_key(instrument_key)}.parquet"
    )


def bars_path(day: str | date, instrument_key: str) -> str:
    """Derived 1-minute bars of a day, computed once from the full trades and shared by every run.

    Signal-driven runs see prices only inside signal intervals; these bars let the equity curve
    mark positions between intervals without reading the full day again (spec execution.md).
    """
    return (
        f"raw_tick_data/by_date/day-{day_str(day)}/data_type-bars_1m/"
        f"{validate_instrument_key(instrument_key)}.parquet"
    )


def signals_path(day: str | date, strategy_id: str) -> str:
    return (
        f"signals/by_date/day-{day_str(day)}/strategy-{validate_strategy_id(strategy_id)}"
        "/signals.parquet"
    )


def results_prefix(run_id: str) -> str:
    return f"backtest_results/{validate_run_id(run_id)}/"


def result_path(run_id: str, name: str) -> str:
    if name not in RESULT_OBJECTS:
        raise LayoutError(f"{name!r} is not a result object; expected one of {RESULT_OBJECTS}")
    return f"{results_prefix(run_id)}{name}"


def config_path(run_id: str) -> str:
    return f"config/{validate_run_id(run_id)}/backtest_config.json"


def log_path(run_id: str) -> str:
    return f"logs/{validate_run_id(run_id)}/execution.log"


def all_result_paths(run_id: str) -> list[str]:
    """The 9 objects a run writes, in the results bucket."""
    return [result_path(run_id, n) for n in RESULT_OBJECTS] + [
        config_path(run_id),
        log_path(run_id),
    ]


def catalog_prefix(day: str | date) -> str:
    """Derived NautilusTrader catalog of a day's tick slices (written by the `nautilus_catalog` asset)."""
    return f"nautilus_catalog/by_date/day-{day_str(day)}/"


def asset_path(asset_key: str, partition_key: str | None) -> str:
    """Intermediate Dagster asset values that have no place in the spec layout."""
    validate_component(asset_key, "asset key")
    if partition_key is None:
        return f"dagster_assets/{asset_key}/all.parquet"
    return (
        f"dagster_assets/{asset_key}/{validate_component(partition_key, 'partition key')}.parquet"
    )


# ---- batches and comparisons (results bucket) ------------------------------------------------

COMPARISON_OBJECTS: Final[tuple[str, ...]] = ("runs.parquet", "comparison.html")


def batch_path(batch: str) -> str:
    """A sweep's membership: the base configuration, the grid and the run_id of every variant."""
    return f"batches/{validate_component(batch, 'batch')}/batch.json"


def comparison_path(comparison_id: str, name: str) -> str:
    """``comparisons/{comparison_id}/runs.parquet`` (one row per run) or ``comparison.html``."""
    if name not in COMPARISON_OBJECTS:
        raise LayoutError(
            f"{name!r} is not a comparison object; expected one of {COMPARISON_OBJECTS}"
        )
    return f"comparisons/{validate_component(comparison_id, 'comparison id')}/{name}"


# ---- shards of a distributed run (results bucket) ------------------------------------------


def shards_prefix(run_id: str, attempt: str) -> str:
    """Where one attempt of a sharded run keeps what its steps hand each other.

    The steps of a sharded run may run on different machines: a shard's result, its log and the
    steps' outputs travel through the results bucket, never a local disk. ``attempt`` (the
    orchestrator's run id) keeps two attempts of the same backtest ``run_id`` apart.
    """
    return f"shards/{validate_run_id(run_id)}/{validate_component(attempt, 'attempt')}/"


def shard_result_path(run_id: str, attempt: str, index: int, name: str) -> str:
    """One object of shard ``index`` (``result.pkl``, ``execution.log``) of an attempt."""
    if name not in ("result.pkl", "execution.log"):
        raise LayoutError(f"{name!r} is not a shard object; expected result.pkl or execution.log")
    if not isinstance(index, int) or index < 0:
        raise LayoutError(f"shard index {index!r} is not a non-negative integer")
    return f"{shards_prefix(run_id, attempt)}shard-{index}/{name}"


def step_output_path(attempt: str, step_key: str, output_name: str) -> str:
    """A step's output (a pickled value) under ``shards/steps/{attempt}/``."""
    step = re.sub(r"[\[\]]", "_", step_key)
    return (
        f"shards/steps/{validate_component(attempt, 'attempt')}/"
        f"{validate_component(step, 'step key')}/"
        f"{validate_component(output_name, 'output name')}.pkl"
    )
