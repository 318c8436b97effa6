"""Isolation (issue 6): concurrent runs never write into each other's results.

Ten `backtest run` processes with ten different configurations (latency, risk limits, name) run
at the same time over the same days and the same input objects. Each must write exactly its own
seven objects under its own run_id, leave the inputs untouched, and produce exactly what the same
run produces when it runs alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run.runner import run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from tests._reliability import (
    DAY1,
    DAY2,
    ROLES,
    Snapshot,
    comparable_summary,
    demo_config,
    load_snapshot,
    make_snapshot,
    parquet_results,
    summary_of,
)

N_RUNS = 10


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return make_snapshot(tmp_path_factory.mktemp("snapshot"), trades_per_day=6_000, seed=23)


def _configs() -> list[BacktestConfig]:
    base = demo_config().model_dump(mode="json")
    out = []
    for i in range(N_RUNS):
        raw = json.loads(json.dumps(base))
        raw["name"] = f"iso-{i}"
        raw["venues"]["BINANCE-FUTURES"]["latency"]["base_ms"] = 5.0 * i
        raw["risk"]["max_order_quantity"] = [5.0, 0.2, 0.05][i % 3]
        raw["fill_model"]["prob_slippage"] = 0.0 if i % 2 == 0 else 0.5
        out.append(BacktestConfig.model_validate(raw))
    return out


def _inputs(ucs: UnifiedCloudService) -> dict[tuple[str, str], bytes]:
    return {
        (r, p): ucs.download_bytes_sync(layout.target(r), p)
        for r in ROLES[:3]
        for p in ucs.list_files_sync(layout.target(r), "")
    }


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """Comparable across roots: no result URIs, and input versions compared separately."""
    out = comparable_summary(summary)
    out.pop("results")
    out["inputs"] = [{k: v for k, v in i.items() if k != "generation"} for i in out["inputs"]]
    return out


@pytest.mark.slow
def test_ten_concurrent_runs_are_isolated_and_equal_their_solo_runs(
    gcs_ucs: UnifiedCloudService, snapshot: Snapshot, tmp_path: Path
) -> None:
    """On the GCS emulator: one HTTP server shared by all writers, as in production.

    (The local root is not repeated here to keep the test near a minute on 2 cores — ten processes
    each import NautilusTrader; its writes are temp-file + rename, covered in test_reliability_faults.)
    """
    ucs = gcs_ucs
    load_snapshot(ucs, snapshot)
    inputs_before = _inputs(ucs)
    configs = _configs()
    run_ids = [c.run_id(DAY1, DAY2) for c in configs]
    assert len(set(run_ids)) == N_RUNS, "distinct configurations must derive distinct run_ids"

    # Alone: one after the other, each in a fresh UCS on a private copy of the inputs.
    solo_root = tmp_path / "solo"
    solo_results: dict[str, tuple[dict[str, bytes], dict[str, Any]]] = {}
    env_backup = os.environ.get("STORAGE_EMULATOR_HOST")
    solo = UnifiedCloudService(str(solo_root))
    load_snapshot(solo, snapshot)
    for cfg, rid in zip(configs, run_ids, strict=True):
        res = run_backtest(cfg, DAY1, DAY2, ucs=UnifiedCloudService(str(solo_root)))
        assert res.run_id == rid and res.status == "COMPLETED"
        solo_results[rid] = (parquet_results(solo, rid), _comparable(summary_of(solo, rid)))
    assert os.environ.get("STORAGE_EMULATOR_HOST") == env_backup
    # The configurations really differ in outcome (else "equal to alone" proves little).
    assert (
        len({json.dumps(s["pnl"], sort_keys=True) for _p, s in solo_results.values()})
        >= N_RUNS // 2
    )

    # Together: ten processes started at once.
    root = "gs://" if ucs.is_gcs else ucs.root
    procs = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        path = tmp_path / f"config-{i}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "backtest_pipeline.cli",
                    "run",
                    "--config",
                    str(path),
                    "--start",
                    DAY1.isoformat(),
                    "--end",
                    DAY2.isoformat(),
                    "--root",
                    root,
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    elapsed = time.perf_counter() - t0
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    printed = [json.loads(out.strip().splitlines()[-1]) for out, _err in outputs]
    assert [s["run_id"] for s in printed] == run_ids
    print(f"\n{N_RUNS} concurrent runs on {ucs.backend.name}: {elapsed:.1f} s")

    # Only the runs' own objects in the results bucket, and the inputs untouched.
    listed = set(ucs.list_files_sync(layout.target("results"), ""))
    expected = {p for rid in run_ids for p in layout.all_result_paths(rid)}
    assert listed == expected, (
        f"unexpected: {sorted(listed - expected)[:5]} missing: {sorted(expected - listed)[:5]}"
    )
    assert _inputs(ucs) == inputs_before

    for cfg, rid in zip(configs, run_ids, strict=True):
        parquet, summary = solo_results[rid]
        assert parquet_results(ucs, rid) == parquet, (
            f"{rid}: Parquet differs from the run done alone"
        )
        got = summary_of(ucs, rid)
        assert got["status"] == "COMPLETED" and got["config"] == cfg.model_dump(mode="json")
        assert _comparable(got) == summary, f"{rid}: summary differs from the run done alone"
        for i in got["inputs"]:  # versions recorded are those of the shared input objects
            assert (
                i["generation"]
                == ucs.stat_sync(layout.CloudTarget(i["bucket"]), i["path"]).generation
            )
        stored = ucs.download_from_gcs_sync(layout.target("results"), layout.config_path(rid))
        assert BacktestConfig.model_validate(stored) == cfg
        log = ucs.download_from_gcs_sync(
            layout.target("results"), layout.log_path(rid), format="text"
        )
        others = [r for r in run_ids if r != rid]
        assert rid in log and not any(o in log for o in others), f"{rid}: log mentions another run"
