"""Running a sweep's variants: its batch membership, what can be skipped, local worker processes.

Each variant is a normal run (``run_backtest``: same run_id, same objects as ``backtest run``).
What a sweep adds is the batch: ``batches/{batch}/batch.json`` in the results bucket lists the
variants' run_ids, so ``backtest compare --batch`` and the ``run_comparison`` asset find them
without a Dagster instance. Re-running the sweep re-runs only variants whose results are not
already there unchanged — a COMPLETED summary of the same run_id, range and configuration, with
the stored configuration and every result object (Parquet, report) present.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.results.writer import ResultWriter, utc_now
from backtest_pipeline.storage.base import ObjectNotFoundError
from backtest_pipeline.storage.ucs import UnifiedCloudService
from backtest_pipeline.sweep.grid import Sweep, SweepError, Variant

Status = Literal["SKIPPED", "COMPLETED", "FAILED", "QUEUED"]


@dataclass(frozen=True)
class Outcome:
    """What became of one variant in this invocation of the sweep."""

    run_id: str
    label: str
    status: Status
    detail: str = ""


def write_manifest(ucs: UnifiedCloudService, sweep: Sweep, executor: str) -> str:
    """Store the batch membership before any run starts; returns its URI."""
    target = layout.target("results")
    path = layout.batch_path(sweep.batch)
    body = {**sweep.manifest(), "executor": executor, "written_at": utc_now()}
    ucs.upload_to_gcs_sync(target, path, body)
    return ucs.uri(target, path)


def read_manifest(ucs: UnifiedCloudService, batch: str) -> dict[str, Any]:
    """A batch's membership; a batch never swept is a clear error naming the object."""
    target = layout.target("results")
    path = layout.batch_path(batch)
    try:
        return ucs.download_from_gcs_sync(target, path)
    except (ObjectNotFoundError, FileNotFoundError) as exc:
        raise SweepError(
            f"batch {batch!r} has no membership object {ucs.uri(target, path)} "
            "(run `backtest sweep … --batch NAME` first)"
        ) from exc


def unchanged(ucs: UnifiedCloudService, variant: Variant, sweep: Sweep) -> bool:
    """True when the variant's results already exist, COMPLETED, for this exact configuration."""
    writer = ResultWriter(ucs, variant.run_id)
    try:
        summary = writer.read_summary()
        stored = ucs.download_from_gcs_sync(writer.target, writer.path("backtest_config.json"))
    except (ObjectNotFoundError, FileNotFoundError):
        return False
    want = variant.config.model_dump(mode="json")
    if (
        summary.get("status") != "COMPLETED"
        or summary.get("config") != want
        or stored != want
        or summary.get("start") != sweep.start.isoformat()
        or summary.get("end") != sweep.end.isoformat()
    ):
        return False
    return all(ucs.exists_sync(writer.target, writer.path(n)) for n in layout.RESULT_OBJECTS)


def run_one(root: str, config_json: str, start: str, end: str, run_id: str) -> tuple[str, str, str]:
    """One variant in a worker process: (run_id, status, detail). Failures are results too."""
    from backtest_pipeline.run.runner import BacktestFailed, run_backtest

    config = BacktestConfig.model_validate_json(config_json)
    try:
        result = run_backtest(config, start, end, ucs=UnifiedCloudService(root), run_id=run_id)
    except BacktestFailed as exc:
        return run_id, "FAILED", str(exc)
    return run_id, "COMPLETED", f"net_pnl {result.summary['pnl']['net_pnl']:.2f}"


def run_local(
    ucs: UnifiedCloudService,
    sweep: Sweep,
    workers: int = 0,
    force: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every variant not already done, ``workers`` at a time in processes (0: one per core).

    One worker runs in this process (no start-up cost, the same code path as ``backtest run``).
    """
    note = on_outcome or (lambda o: None)
    write_manifest(ucs, sweep, "local")
    outcomes: list[Outcome] = []
    todo: list[Variant] = []
    for v in sweep.variants:
        if not force and unchanged(ucs, v, sweep):
            o = Outcome(v.run_id, v.label, "SKIPPED", "results exist unchanged")
            outcomes.append(o)
            note(o)
        else:
            todo.append(v)
    n = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    labels = {v.run_id: v.label for v in todo}
    args = [
        (ucs.root, v.config.model_dump_json(), sweep.start.isoformat(), sweep.end.isoformat(),
         v.run_id)
        for v in todo
    ]  # fmt: skip
    if n <= 1:
        for a in args:
            rid, status, detail = run_one(*a)
            o = Outcome(rid, labels[rid], status, detail)  # type: ignore[arg-type]
            outcomes.append(o)
            note(o)
        return outcomes
    # spawn, not fork: the parent may hold threads (UCS clients, rich) that fork would copy
    # in a locked state.
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, *a) for a in args]
        for fut in as_completed(futures):
            rid, status, detail = fut.result()
            o = Outcome(rid, labels[rid], status, detail)  # type: ignore[arg-type]
            outcomes.append(o)
            note(o)
    return outcomes


def variant_config_name(sweep: Sweep, variant: Variant) -> str:
    """The file stem a queued variant is loaded by (and the scope of its Dagster objects)."""
    return layout.validate_component(
        f"{sweep.base.name}-{variant.run_id.rsplit('-', 1)[-1]}", "config name"
    )


def write_variant_configs(sweep: Sweep, directory: str | Path) -> dict[str, str]:
    """One ``{name}.yaml`` per variant for the Dagster job to load; run_id → config name.

    The file holds the resolved configuration (its ``name`` is the base's, so the run_id is the
    one a local run of the variant has).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = {}
    for v in sweep.variants:
        name = variant_config_name(sweep, v)
        body = json.loads(v.config.model_dump_json())
        (d / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=True))
        names[v.run_id] = name
    return names
