"""A sweep: variants of one run configuration, over dotted keys, all validated before any runs.

Why here and not in the YAML files of ``configs/``: a researcher varies two or three knobs of one
configuration; writing the cartesian product by hand is where typos creep in. Every key is
checked against the configuration's model (``venues.BINANCE-FUTURES.latency.base_ms``: a field
path, with free keys only where the model has a mapping) and every variant is validated as a
whole, so one bad value stops the sweep before any run starts and the error names it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, read_yaml_mapping

#: Top-level keys of a sweep file.
FILE_KEYS = ("config", "batch", "start", "end", "grid", "variants")


class SweepError(ValueError):
    """A sweep that cannot run as given: what is wrong, naming the key, value or variant."""


@dataclass(frozen=True)
class Variant:
    """One configuration of the sweep: the base with ``overrides`` (dotted key → value) applied."""

    index: int
    overrides: dict[str, Any]
    config: BacktestConfig
    run_id: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.overrides.items()) or "(base)"


@dataclass(frozen=True)
class Sweep:
    """The validated sweep: its base, the grid as asked, its days, its batch id and variants."""

    base: BacktestConfig
    grid: dict[str, list[Any]]
    explicit: list[dict[str, Any]]
    start: date
    end: date
    batch: str
    variants: list[Variant]
    duplicates: list[tuple[int, int]]  # (variant, the earlier variant with the same run_id)

    def manifest(self) -> dict[str, Any]:
        """The batch membership as stored in the results bucket (``batches/{batch}/batch.json``)."""
        return {
            "batch": self.batch,
            "base_config": self.base.model_dump(mode="json"),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "grid": self.grid,
            "variants_explicit": self.explicit,
            "runs": [
                {"run_id": v.run_id, "index": v.index, "overrides": v.overrides, "label": v.label}
                for v in self.variants
            ],
        }


def _show(v: Any) -> str:
    return "null" if v is None else json.dumps(v) if not isinstance(v, str) else v


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → X (the part of an optional field that can hold a sub-configuration)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def check_key(dotted: str) -> None:
    """A dotted key must name one leaf field of the configuration (mapping keys are free)."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise SweepError(f"key {dotted!r} is not a dotted key like risk.max_order_quantity")
    node: Any = BacktestConfig
    where = "the configuration"
    for i, part in enumerate(parts):
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                raise SweepError(
                    f"unknown key {dotted!r}: {part!r} is not a field of {where}; "
                    f"its fields are {sorted(fields)}"
                )
            node = _unwrap(fields[part].annotation)
            where = ".".join(parts[: i + 1])
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
            where = ".".join(parts[: i + 1])
        else:
            raise SweepError(
                f"unknown key {dotted!r}: {'.'.join(parts[:i])!r} is a value, not a section"
            )
    if (isinstance(node, type) and issubclass(node, BaseModel)) or typing.get_origin(node) is dict:
        raise SweepError(f"key {dotted!r} is a section; sweep one of its fields, e.g. {dotted}.…")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[parts[-1]] = value


def parse_set(option: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` → (key, [v1, v2]); each value parsed as a YAML scalar (5 → int, null)."""
    if "=" not in option:
        raise SweepError(f"--set {option!r} is not KEY=V1,V2,…")
    key, _, raw = option.partition("=")
    key = key.strip()
    values = [v.strip() for v in raw.split(",")] if raw.strip() else []
    if any(v == "" for v in values):
        raise SweepError(f"--set {option!r} has an empty value between commas")
    parsed = []
    for v in values:
        try:
            parsed.append(yaml.safe_load(v))
        except yaml.YAMLError as exc:
            raise SweepError(f"--set {key}: value {v!r} is not a valid scalar: {exc}") from exc
    return key, parsed


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep file (YAML): ``grid`` (key → list of values) and/or ``variants`` (a list of
    key → value mappings), optionally ``config``, ``batch``, ``start`` and ``end``."""
    p = Path(path)
    raw = read_yaml_mapping(p, "sweep file", SweepError)
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise SweepError(f"sweep file {p}: unknown keys {unknown}; allowed {list(FILE_KEYS)}")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file {p}: grid must map keys to lists of values")
    for k, vs in grid.items():
        if not isinstance(vs, list):
            raise SweepError(f"sweep file {p}: grid.{k} must be a list of values, got {vs!r}")
    variants = raw.get("variants") or []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise SweepError(f"sweep file {p}: variants must be a list of key → value mappings")
    return {**raw, "grid": {str(k): v for k, v in grid.items()}, "variants": variants}


def derive_batch(
    base: BacktestConfig,
    grid: dict[str, list[Any]],
    explicit: list[dict[str, Any]],
    start: date,
    end: date,
) -> str:
    """``sweep-{name}-{hash}``: the same sweep asked again is the same batch (and is skipped)."""
    payload = json.dumps(
        [base.canonical_json(), grid, explicit, start.isoformat(), end.isoformat()],
        sort_keys=True,
        default=str,
    )
    return f"sweep-{base.name}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def build_sweep(
    base: BacktestConfig,
    start: date | str,
    end: date | str,
    grid: dict[str, list[Any]],
    explicit: list[dict[str, Any]] | None = None,
    batch: str | None = None,
) -> Sweep:
    """Every variant, validated; raises :class:`SweepError` naming the first problem found."""
    explicit = explicit or []
    s, e = layout.parse_day(start), layout.parse_day(end)
    if e < s:
        raise SweepError(f"end {e} is before start {s}")
    for key, values in grid.items():
        check_key(key)
        if not values:
            raise SweepError(f"empty grid: key {key!r} has no values")
    for i, ov in enumerate(explicit):
        if not ov:
            raise SweepError(f"variants[{i}] is empty: give at least one key → value")
        for key in ov:
            check_key(key)
    if not grid and not explicit:
        raise SweepError("empty grid: nothing to sweep (give --set KEY=V1,V2 or a sweep file)")
    keys = list(grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]
    if not keys:
        combos = []
    all_overrides = combos + [dict(ov) for ov in explicit]
    base_tree = base.model_dump(mode="json")
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    duplicates: list[tuple[int, int]] = []
    for i, ov in enumerate(all_overrides):
        tree = json.loads(json.dumps(base_tree))
        for key, value in ov.items():
            _set(tree, key, value)
        try:
            config = BacktestConfig.model_validate(tree)
        except ValidationError as exc:
            raise SweepError(_variant_error(i, ov, exc)) from exc
        run_id = config.run_id(s, e)
        if run_id in seen:
            duplicates.append((i, seen[run_id]))
            continue
        seen[run_id] = i
        variants.append(Variant(i, ov, config, run_id))
    name = batch or derive_batch(base, grid, explicit, s, e)
    layout.validate_component(name, "batch")
    return Sweep(base, grid, explicit, s, e, name, variants, duplicates)


def _variant_error(i: int, overrides: dict[str, Any], exc: ValidationError) -> str:
    label = ", ".join(f"{k}={_show(v)}" for k, v in overrides.items())
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(configuration)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        problems.append(f"{loc}: {err['msg']}{shown}")
    return f"variant {i} ({label}) is not a valid configuration: " + "; ".join(problems)
