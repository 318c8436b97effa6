"""The code location loads through Dagster's own tools, from the repository's top level.

``workspace.yaml`` (what ``dagster dev`` and the UI load) and the ``dg`` CLI's project settings
in ``pyproject.toml`` both point at the top-level ``definitions`` module; these run the real
commands in a fresh process, so a broken import, a name clash or a stale path fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_workspace_definitions_validate(tmp_path: Path) -> None:
    res = _run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Validation successful for code location backtest_pipeline" in out


@pytest.mark.slow
def test_dg_lists_and_checks_the_definitions(tmp_path: Path) -> None:
    res = _run([str(BIN / "dg"), "check", "defs"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "All definitions loaded successfully" in res.stdout + res.stderr
    res = _run([str(BIN / "dg"), "list", "defs", "--json"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = res.stdout
    for name in ("backtest_run", "equity_curve", "backtest_job", "t_plus_1_schedule",
                 "inputs_ready_sensor", "tick_slices_sorted"):  # fmt: skip
        assert name in listed, f"{name} missing from `dg list defs`"
