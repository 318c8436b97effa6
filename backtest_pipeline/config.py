"""The typed run configuration: everything that decides a backtest's result, and nothing else.

It is pydantic so that the CLI (YAML), Dagster (`Config` builds on pydantic) and the summary
(`config` echoed back, enough to re-run) all share one validated model, and so that the run_id
can be derived from its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from backtest_pipeline import layout


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyConfig(_Strict):
    """Milliseconds; the base is added to insert/update/cancel as in Nautilus's `LatencyModel`."""

    base_ms: float = Field(20.0, ge=0)
    insert_ms: float = Field(0.0, ge=0)
    update_ms: float = Field(0.0, ge=0)
    cancel_ms: float = Field(0.0, ge=0)


class FeeOverride(_Strict):
    maker_fee: float | None = Field(None, gt=-0.01, lt=0.01)
    taker_fee: float | None = Field(None, gt=-0.01, lt=0.01)


class VenueConfig(_Strict):
    """One exchange of the run. The venue name is the instrument key's first part."""

    starting_balance: float = Field(100_000.0, gt=0)
    latency: LatencyConfig = LatencyConfig()
    fees: FeeOverride = FeeOverride()


class RiskLimits(_Strict):
    """Pre-trade limits; `None` disables a limit. Notional is in the account currency."""

    max_order_quantity: float | None = Field(None, gt=0)
    max_order_notional: float | None = Field(None, gt=0)
    max_position_notional: float | None = Field(None, gt=0)
    max_gross_leverage: float | None = Field(None, gt=0)
    limit_price_band_pct: float | None = Field(5.0, gt=0)


class FillModelConfig(_Strict):
    """Nautilus `FillModel` probabilities, liquidity tracking and queue position.

    Defaults follow what NautilusTrader 1.231 was measured to do with each data type
    (docs/execution.md, *Market data and fills*).
    """

    prob_fill_on_limit: float = Field(1.0, ge=0, le=1)
    prob_slippage: float = Field(0.0, ge=0, le=1)
    # L1 books (trades, quotes). Off by default: in 1.231, on trade-built books a market order
    # that meets a level marked consumed gets neither a fill nor an event (until a print of a
    # different size), and on quote books a resting limit misses every print of the same size
    # after the first (upstream #5017); see tests/test_engine_run.py, tests/test_engine_books.py.
    liquidity_consumption: bool = False
    # L2 books (`book_depth10`): on by default, as measured correct there (a level's size is not
    # filled twice until a new snapshot re-states it).
    depth_liquidity_consumption: bool = True
    # Nautilus's `queue_position` for resting limit orders. None = by data type: on with quotes
    # (the queue ahead is the displayed size, worked off by trades at its price); off with
    # depth (1.231 clears every queue at each OrderBookDepth10 snapshot, putting an order back
    # at the front) and with trades (no displayed size to queue behind).
    queue_position: bool | None = None
    random_seed: int = 42

    def queue_position_for(self, book: MarketData) -> bool:
        """Whether a venue whose book comes from ``book`` tracks queue positions."""
        if self.queue_position is not None:
            return self.queue_position
        return book == "quotes"


MarketData = Literal["depth", "quotes", "trades"]
MarketDataChoice = Literal["auto", "depth", "quotes", "trades"]

#: Fields added after run ids were first derived. At their defaults they are left out of the
#: hash, so every configuration written before them keeps its run_id (and its results' place).
_HASH_NEUTRAL_DEFAULTS: dict[tuple[str, ...], object] = {
    ("market_data",): "auto",
    ("fill_model", "depth_liquidity_consumption"): True,
    ("fill_model", "queue_position"): None,
}


class AlgoConfig(_Strict):
    """How the execution algos work a signal: the knobs a sweep varies besides risk and venues.

    The defaults are the behaviour of the product before these knobs existed, and a configuration
    that leaves them all at their defaults omits the whole section from its JSON, so its
    ``run_id`` and stored configuration stay those of earlier runs.
    """

    twap_slices: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="TWAP children per operation; None: window / twap_slice_s",
    )
    limit_price_source: Literal["signal", "last"] = Field(
        "signal",
        description="signal: the signal's limit_price, else the last trade; last: always the "
        "last trade of the venue (the signal's limit_price ignored)",
    )
    limit_offset_bps: float = Field(
        0.0,
        ge=-1000,
        le=1000,
        description="LIMIT price moved away from the reference by this many bps (positive: "
        "passive — a buy below, a sell above; negative: more aggressive)",
    )
    execution_window_scale: float = Field(
        1.0, gt=0, le=1000, description="every signal's execution_window_s multiplied by this"
    )
    execution_window_s: float | None = Field(
        None, gt=0, description="every signal's execution_window_s replaced by this (then scaled)"
    )

    @property
    def changes_windows(self) -> bool:
        return self.execution_window_s is not None or self.execution_window_scale != 1.0


class BacktestConfig(_Strict):
    """A backtest configuration as stored in `configs/*.yaml`."""

    name: str = "backtest"
    strategy_id: str
    instruments: list[str] = Field(min_length=1)
    venues: dict[str, VenueConfig] = Field(default_factory=dict)
    primary_venue: str | None = None
    account_currency: str = "USDT"
    risk: RiskLimits = RiskLimits()
    fill_model: FillModelConfig = FillModelConfig()
    equity_interval_s: float = Field(60.0, gt=0)
    metrics_interval_s: float = Field(3600.0, gt=0)
    lookback_s: float = Field(5.0, ge=0)
    grace_s: float = Field(5.0, ge=0)
    full_day: bool = False
    twap_slice_s: float = Field(10.0, gt=0)
    router_drift_bps_per_s: float = Field(0.0, ge=0)
    allow_spot_short: bool = False
    use_bars_for_marks: bool = True
    # Which market data the venues' books are built from, per instrument: `auto` = the richest
    # type present on every day of the run (depth > quotes > trades); a named type must exist
    # for every instrument on every day (docs/execution.md, *Market data and fills*).
    market_data: MarketDataChoice = "auto"
    # What the engine is handed: `operations` = a market only while an order of ours works there
    # (from a signal until its operation's last order is final); `intervals` = every tick of the
    # signal intervals. The outputs are identical (engine/feed.py); `operations` is faster.
    engine_feed: Literal["operations", "intervals"] = "operations"
    # What NautilusTrader itself writes to the run's `execution.log` (the product's own lines are
    # always there). `INFO` adds every order event and a banner per engine call: a year's log
    # grows to ~0.5 GB and the run spends ~8 % of its CPU writing it, while every order's events
    # are in `orders.parquet` anyway. Like `engine_feed`, it never changes a result.
    engine_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    algo: AlgoConfig = AlgoConfig()

    @model_serializer(mode="wrap")
    def _omit_default_algo(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``algo`` out at its defaults: runs from before the knobs keep their run_id."""
        data = handler(self)
        if self.algo == AlgoConfig() and isinstance(data, dict):
            data.pop("algo", None)
        if self.engine_feed == "operations" and isinstance(data, dict):
            data.pop("engine_feed", None)  # the default: stored configurations stay as they were
        if self.engine_log_level == "WARNING" and isinstance(data, dict):
            data.pop("engine_log_level", None)
        return data

    @field_validator("strategy_id")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return layout.validate_strategy_id(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return layout.validate_component(v, "config name")

    @field_validator("instruments")
    @classmethod
    def _instruments(cls, v: list[str]) -> list[str]:
        for key in v:
            layout.validate_instrument_key(key)
        if len(set(v)) != len(v):
            raise ValueError(f"instruments contain duplicates: {v}")
        return v

    @model_validator(mode="after")
    def _venues(self) -> BacktestConfig:
        needed = {k.split(":")[0] for k in self.instruments}
        unknown = set(self.venues) - needed
        if unknown:
            raise ValueError(
                f"venues {sorted(unknown)} have no instrument in the run; instruments use {sorted(needed)}"
            )
        if self.primary_venue is not None and self.primary_venue not in needed:
            raise ValueError(f"primary_venue {self.primary_venue!r} is not a venue of the run")
        return self

    def venue(self, name: str) -> VenueConfig:
        """Venues not listed in the file run with the defaults (20 ms latency, file fees)."""
        return self.venues.get(name, VenueConfig())

    @property
    def venue_names(self) -> list[str]:
        return sorted({k.split(":")[0] for k in self.instruments})

    def canonical_json(self) -> str:
        """Sorted, default-complete JSON: the same configuration always hashes the same."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def hash_json(self) -> str:
        """:meth:`canonical_json` without the later fields still at their defaults (run ids)."""
        data = self.model_dump(mode="json")
        for path, default in _HASH_NEUTRAL_DEFAULTS.items():
            parent = data
            for part in path[:-1]:
                parent = parent[part]
            if parent.get(path[-1]) == default:
                del parent[path[-1]]
        # The feed and the engine's log level change how fast a run is, never its results.
        data.pop("engine_feed", None)
        data.pop("engine_log_level", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def run_id(self, start: date | str, end: date | str) -> str:
        """`BT-YYYYMMDD-YYYYMMDD-<hash>`: a re-run of the same work overwrites instead of piling up."""
        s, e = layout.parse_day(start), layout.parse_day(end)
        digest = hashlib.sha256(
            f"{self.hash_json()}|{s.isoformat()}|{e.isoformat()}".encode()
        ).hexdigest()[:8]
        return f"BT-{s:%Y%m%d}-{e:%Y%m%d}-{digest}"

    @classmethod
    def from_yaml(cls, path: str | Path) -> BacktestConfig:
        return cls.model_validate(read_yaml_mapping(path, "config file"))


RunStatus = Literal["COMPLETED", "FAILED"]


# ---- named configurations: the files of configs/ -----------------------------------------------

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def default_configs_dir() -> str:
    """The directory of named configurations: ``$BACKTEST_CONFIGS_DIR`` or the repository's."""
    return os.environ.get("BACKTEST_CONFIGS_DIR") or str(CONFIGS_DIR)


def config_names(configs_dir: str | Path | None = None) -> list[str]:
    """Names (file stems) of every configuration file, sorted."""
    d = Path(configs_dir or default_configs_dir())
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def active_config_names(configs_dir: str | Path | None = None) -> list[str]:
    """Configurations the schedule runs: ``$BACKTEST_ACTIVE_CONFIGS`` (comma list) or all files."""
    names = config_names(configs_dir)
    wanted = [
        n.strip() for n in os.environ.get("BACKTEST_ACTIVE_CONFIGS", "").split(",") if n.strip()
    ]
    if not wanted:
        return names
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise ValueError(
            f"BACKTEST_ACTIVE_CONFIGS names unknown configurations {missing}; have {names}"
        )
    return [n for n in names if n in wanted]


def load_config(name: str, configs_dir: str | Path | None = None) -> BacktestConfig:
    """``configs/{name}.yaml`` parsed and validated; the name cannot leave the directory."""
    layout.validate_component(name, "config name")
    path = Path(configs_dir or default_configs_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"configuration {name!r}: {path} does not exist; known: {config_names(configs_dir)}"
        )
    return BacktestConfig.from_yaml(path)


def read_yaml_mapping(
    path: str | Path, what: str, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with errors that name the file and the problem.

    A missing file stays a ``FileNotFoundError`` unless the caller's own error type is asked for
    (a sweep reports every bad input as one error type)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        missing = FileNotFoundError if error is ValueError else error
        raise missing(f"{what} {p} does not exist") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{what} {p} must hold a mapping, got {type(raw).__name__}")
    return raw
