"""Runs side by side: one row per run with what differs, its range, PnL, risk and execution quality.

The figures are read back from each run's own result objects (``summary.json`` for PnL and the
metrics, ``operations.parquet`` for execution quality by algo), never recomputed from a sweep's
memory, so a comparison of runs made weeks apart by different entry points is as exact as one
made right after a sweep. A run that failed or has not finished yet still gets its row (with its
status and no figures): a leaderboard that silently drops variants misleads.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.results.operations import tca_by_algo
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.ucs import UnifiedCloudService

ALGOS = ("MARKET", "LIMIT", "TWAP", "ALL")
PNL_KEYS = ("net_pnl", "gross_pnl", "total_fees", "funding_paid")
METRIC_KEYS = (
    "sharpe_ratio",
    "sortino_ratio",
    "max_drawdown_pct",
    "win_rate",
    "profit_factor",
    "total_trades",
)
#: execution-quality figures per algo: column suffix → key of ``tca_by_algo``
EQ_KEYS = {
    "operations": "operations",
    "fill_ratio": "fill_ratio",
    "shortfall_mean_bps": "implementation_shortfall_bps_mean",
    "shortfall_p90_bps": "implementation_shortfall_bps_p90",
}


def eq_column(algo: str, figure: str) -> str:
    """``market_fill_ratio``, ``all_shortfall_p90_bps``, …: the runs.parquet column of a figure."""
    return f"{algo.lower()}_{figure}"


SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int64(),
    "run_id": pl.Utf8(),
    "status": pl.Utf8(),
    "label": pl.Utf8(),
    "config_name": pl.Utf8(),
    "config_diff": pl.Utf8(),
    "start": pl.Utf8(),
    "end": pl.Utf8(),
    "days": pl.Int64(),
    "starting_balance": pl.Float64(),
    **{k: pl.Float64() for k in PNL_KEYS},
    "return_pct": pl.Float64(),
    **{k: (pl.Int64() if k == "total_trades" else pl.Float64()) for k in METRIC_KEYS},
    "fills": pl.Int64(),
    **{
        eq_column(a, f): (pl.Int64() if f == "operations" else pl.Float64())
        for a in ALGOS
        for f in EQ_KEYS
    },
}


class ComparisonError(ValueError):
    """Runs that cannot be compared as asked (none given, an unknown run_id)."""


@dataclass(frozen=True)
class Comparison:
    """The leaderboard (``runs``, best net PnL first), the keys that differ, and each equity curve."""

    comparison_id: str
    runs: pl.DataFrame
    differing_keys: list[str]
    equity: dict[str, pl.DataFrame]


def comparison_id_for(run_ids: Sequence[str]) -> str:
    """``cmp-{hash}`` of the set of runs: the same runs compared again overwrite one comparison."""
    digest = hashlib.sha256("|".join(sorted(set(run_ids))).encode()).hexdigest()[:8]
    return f"cmp-{digest}"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested configuration as dotted keys (the keys ``backtest sweep --set`` takes)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _read_parquet(ucs: UnifiedCloudService, run_id: str, name: str) -> pl.DataFrame | None:
    target = layout.target("results")
    try:
        data = ucs.download_bytes_sync(target, layout.result_path(run_id, name))
    except (ObjectNotFoundError, FileNotFoundError):
        return None
    return pl.from_arrow(pq.ParquetFile(io.BytesIO(data)).read())  # type: ignore[return-value]


def _complete(config: dict[str, Any]) -> dict[str, Any]:
    """Every key with its value, the defaults the stored JSON leaves out (``algo``) included.

    Without it a run at the default algo knobs and one with a knob set would differ in every
    ``algo.*`` key (absent vs value) instead of the one that was changed.
    """
    try:
        parsed = BacktestConfig.model_validate(config)
    except ValueError:  # a configuration of another version of the product: compare as stored
        return config
    return {**parsed.model_dump(mode="json"), "algo": parsed.algo.model_dump(mode="json")}


def _summary(ucs: UnifiedCloudService, run_id: str) -> dict[str, Any] | None:
    try:
        return ResultWriter(ucs, run_id).read_summary()
    except (ObjectNotFoundError, FileNotFoundError):
        return None


def build_comparison(
    ucs: UnifiedCloudService,
    run_ids: Sequence[str],
    comparison_id: str | None = None,
    labels: dict[str, str] | None = None,
    missing_ok: bool = False,
) -> Comparison:
    """Read every run's results and lay them side by side, ranked by net PnL.

    ``missing_ok``: a run without a summary (a batch variant still queued) gets a MISSING row
    instead of being an error.
    """
    ids = list(dict.fromkeys(layout.validate_run_id(r) for r in run_ids))
    if not ids:
        raise ComparisonError("no runs to compare: give run_ids or a batch with runs")
    cid = layout.validate_component(comparison_id or comparison_id_for(ids), "comparison id")
    summaries = {r: _summary(ucs, r) for r in ids}
    absent = [r for r, s in summaries.items() if s is None]
    if absent and not missing_ok:
        target = layout.target("results")
        where = ucs.uri(target, layout.result_path(absent[0], "summary.json"))
        raise ComparisonError(f"run {absent[0]!r} has no results ({where} does not exist)")
    flat = {r: flatten(_complete(s.get("config") or {})) for r, s in summaries.items() if s}
    all_keys = sorted({k for f in flat.values() for k in f})
    differing = [k for k in all_keys if len({json.dumps(f.get(k)) for f in flat.values()}) > 1]
    rows: list[dict[str, Any]] = []
    equity: dict[str, pl.DataFrame] = {}
    for r in ids:
        s = summaries[r]
        row: dict[str, Any] = {"run_id": r, "status": "MISSING" if s is None else s["status"]}
        diff = {k: flat[r].get(k) for k in differing} if r in flat else {}
        row["config_diff"] = json.dumps(diff, sort_keys=True)
        row["label"] = (labels or {}).get(r) or (
            ", ".join(f"{k}={v}" for k, v in diff.items()) or "(same configuration)"
        )
        if s is not None:
            days = s.get("days") or []
            row.update(
                config_name=(s.get("config") or {}).get("name"),
                start=s.get("start") or (days[0] if days else None),
                end=s.get("end") or (days[-1] if days else None),
                days=len(days),
            )
        if s is not None and s["status"] == "COMPLETED":
            pnl, mets = s.get("pnl") or {}, s.get("metrics") or {}
            bal = s.get("starting_balance")
            row.update({k: pnl.get(k) for k in PNL_KEYS})
            row.update({k: mets.get(k) for k in METRIC_KEYS})
            row["starting_balance"] = bal
            row["return_pct"] = (
                100.0 * pnl["net_pnl"] / bal if bal and pnl.get("net_pnl") is not None else None
            )
            row["fills"] = (s.get("execution_stats") or {}).get("fills")
            ops = _read_parquet(ucs, r, "operations.parquet")
            if ops is not None and ops.height:
                tca = tca_by_algo(ops)
                for algo in ALGOS:
                    for fig, key in EQ_KEYS.items():
                        row[eq_column(algo, fig)] = (tca.get(algo) or {}).get(key)
            eq = _read_parquet(ucs, r, "equity_curve.parquet")
            if eq is not None:
                equity[r] = eq.select("ts_event", "portfolio_value", "drawdown_pct")
        rows.append(row)
    frame = pl.DataFrame(
        [{k: row.get(k) for k in SCHEMA if k != "rank"} for row in rows],
        schema={k: v for k, v in SCHEMA.items() if k != "rank"},
        orient="row",
    )
    frame = (
        frame.sort("net_pnl", descending=True, nulls_last=True, maintain_order=True)
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
        .select(list(SCHEMA))
    )
    return Comparison(cid, frame, differing, equity)


def batch_comparison(ucs: UnifiedCloudService, batch: str) -> Comparison:
    """The comparison of a sweep's batch (its id is the batch's), from its membership object."""
    from backtest_pipeline.sweep.runs import read_manifest

    manifest = read_manifest(ucs, batch)
    runs = manifest.get("runs") or []
    labels = {r["run_id"]: r.get("label") or "" for r in runs}
    return build_comparison(
        ucs, [r["run_id"] for r in runs], comparison_id=batch, labels=labels, missing_ok=True
    )
