"""Sweeps as a researcher uses them: knobs, bad input, a 7-variant batch, skip-unchanged, compare.

The comparison is checked against each run's own ``summary.json`` and ``operations.parquet``,
read here straight from the files with json/pyarrow (not through the product's readers), and
its execution-quality figures are recomputed here from the spec's definitions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from test_engine_units import BTC, FakeCtx, S, group_of
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.config import AlgoConfig, BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.signals.windows import apply_execution_window
from backtest_pipeline.storage.ucs import UnifiedCloudService
from backtest_pipeline.sweep.grid import SweepError, build_sweep, parse_set, read_sweep_file
from backtest_pipeline.trading.orchestrator import Orchestrator, Signal

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
DAY = "2024-01-01"
runner = CliRunner()
GRID = [
    "--set", "venues.BINANCE-FUTURES.latency.base_ms=5,50",
    "--set", "algo.limit_offset_bps=0,5,-5",
]  # fmt: skip
EXTRA = {"algo.twap_slices": 3, "algo.execution_window_scale": 0.5}


def results_dir(root: Path) -> Path:
    return root / layout.bucket_for("results")


# ---- the configuration's algo knobs ----------------------------------------------------------


def test_default_knobs_leave_the_config_json_and_run_id_as_before() -> None:
    base = BacktestConfig.from_yaml(DEMO)
    assert "algo" not in base.model_dump(mode="json")
    assert base.run_id("2024-01-01", "2024-01-03") == "BT-20240101-20240103-15b26962"
    tuned = BacktestConfig.model_validate(
        {**base.model_dump(mode="json"), "algo": {"limit_offset_bps": 2.0}}
    )
    assert tuned.model_dump(mode="json")["algo"]["limit_offset_bps"] == 2.0
    assert tuned.run_id("2024-01-01", "2024-01-03") != base.run_id("2024-01-01", "2024-01-03")
    assert BacktestConfig.model_validate(tuned.model_dump(mode="json")) == tuned


def test_speed_and_log_settings_never_change_the_run_id() -> None:
    """The feed and the engine's log level change how a run goes, never its results."""
    base = BacktestConfig.from_yaml(DEMO)
    dumped = base.model_dump(mode="json")
    assert "engine_feed" not in dumped and "engine_log_level" not in dumped
    for update in ({"engine_feed": "intervals"}, {"engine_log_level": "INFO"}):
        other = base.model_copy(update=update)
        assert other.run_id("2024-01-01", "2024-01-03") == base.run_id("2024-01-01", "2024-01-03")
        ((field, value),) = update.items()
        assert other.model_dump(mode="json")[field] == value  # kept where it is not the default
    with pytest.raises(ValueError, match="engine_log_level"):
        BacktestConfig.model_validate({**dumped, "engine_log_level": "LOUD"})


def test_orchestrator_twap_slices_and_limit_offsets() -> None:
    ctx = FakeCtx()
    orch = Orchestrator(ctx, group_of, twap_slice_s=10.0, twap_slices=4)
    orch.on_signal(Signal("t", 0, BTC, 1.0, 120.0, "TWAP"))  # 12 slices by twap_slice_s
    ctx.run_until(200 * S)
    assert [x[0] for x in ctx.sent] == [0, 30 * S, 60 * S, 90 * S]
    # +10 bps passive: a buy below the reference, a sell above; the signal's price is the ref
    ctx = FakeCtx()
    orch = Orchestrator(ctx, group_of, limit_offset_bps=10.0)
    orch.on_signal(Signal("b", 0, BTC, 1.0, 10.0, "LIMIT", 99.0))
    assert ctx.sent[-1][5] == pytest.approx(99.0 * (1 - 0.001))
    ctx.pos = 1.0
    orch.on_signal(Signal("s", 20 * S, BTC, 0.0, 10.0, "LIMIT"))  # no price: the last trade
    assert ctx.sent[-1][2] == "SELL" and ctx.sent[-1][5] == pytest.approx(100.0 * 1.001)
    # source "last": the signal's price is ignored (None: the host joins the last trade)
    ctx = FakeCtx()
    Orchestrator(ctx, group_of, limit_price_source="last").on_signal(
        Signal("x", 0, BTC, 1.0, 10.0, "LIMIT", 99.0)
    )
    assert ctx.sent[-1][5] is None


def test_execution_window_override_and_scale() -> None:
    sig = pl.DataFrame({"signal_id": ["a", "b"], "execution_window_s": [10.0, 60.0]})
    assert apply_execution_window(sig, AlgoConfig()) is sig
    out = apply_execution_window(sig, AlgoConfig(execution_window_scale=0.5))
    assert out["execution_window_s"].to_list() == [5.0, 30.0]
    out = apply_execution_window(sig, AlgoConfig(execution_window_s=20, execution_window_scale=2))
    assert out["execution_window_s"].to_list() == [40.0, 40.0]


# ---- bad input: a clear error, and nothing runs or is written ---------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "risk.max_order_qty=1,5"], "unknown key 'risk.max_order_qty'"),
        (["--set", "venues.BINANCE-FUTURES.latency.base=5"], "'base' is not a field"),
        (["--set", "risk.max_order_quantity=1,abc"], "risk.max_order_quantity: Input should be"),
        (["--set", "algo.limit_price_source=signal,touch"], "algo.limit_price_source"),
        (["--set", "algo.twap_slices=2.5"], "algo.twap_slices"),
        (["--set", "risk.max_order_quantity="], "empty grid: key 'risk.max_order_quantity'"),
        ([], "empty grid: nothing to sweep"),
        (["--set", "risk=1"], "key 'risk' is a section"),
    ],
)
def test_bad_sweep_input_names_the_problem_and_runs_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root = tmp_path / "root"
    res = runner.invoke(
        app,
        ["sweep", "--config", str(DEMO), "--start", DAY, "--end", DAY, "--root", str(root), *args],
        terminal_width=200,
    )
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()), res.output
    assert not root.exists() or not any(root.rglob("*")), "a rejected sweep wrote something"


def test_bad_sweep_file(tmp_path: Path) -> None:
    f = tmp_path / "sweep.yaml"
    f.write_text("grid:\n  risk.max_order_quantity: 3\n")
    with pytest.raises(SweepError, match=r"grid.risk.max_order_quantity must be a list"):
        read_sweep_file(f)
    f.write_text("grid: {risk.max_order_quantity: [1]}\nstart_day: 2024-01-01\n")
    res = runner.invoke(app, ["sweep", "--file", str(f), "--config", str(DEMO)])
    assert res.exit_code == 2 and "unknown keys ['start_day']" in res.output


def test_same_configuration_twice_runs_once() -> None:
    base = BacktestConfig.from_yaml(DEMO)
    sweep = build_sweep(base, DAY, DAY, dict([parse_set("risk.max_order_quantity=5,5.0,1")]))
    assert len(sweep.variants) == 2 and sweep.duplicates == [(1, 0)]


# ---- a sweep of 7 variants end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sweep") / "root"
    ucs = UnifiedCloudService(str(root))
    generate_sample_data(ucs, date(2024, 1, 1), 1, None, trades_per_day=20_000, seed=7)
    sweep_file = root.parent / "sweep.yaml"
    sweep_file.write_text(json.dumps({"variants": [EXTRA]}))  # JSON is YAML
    args = ["sweep", "--config", str(DEMO), *GRID, "--file", str(sweep_file)]
    args += ["--start", DAY, "--end", DAY, "--root", str(root), "--batch", "knobs"]
    res = runner.invoke(app, [*args, "--workers", "2"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return {"root": root, "ucs": ucs, "args": args, "output": res.output}


def _summary(root: Path, run_id: str) -> dict[str, Any]:
    return json.loads(
        (results_dir(root) / "backtest_results" / run_id / "summary.json").read_text()
    )


def _parquet(root: Path, run_id: str, name: str) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(results_dir(root) / "backtest_results" / run_id / name))


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((results_dir(root) / "batches" / "knobs" / "batch.json").read_text())


def _tca(ops: pl.DataFrame, algo: str) -> tuple[int, float, float, float]:
    """(operations, fill ratio, notional-weighted mean and p90 of shortfall) by the spec."""
    d = ops if algo == "ALL" else ops.filter(pl.col("algo") == algo)
    w = (d["target_quantity"] * d["arrival_price"]).to_numpy()
    isf = d["implementation_shortfall_bps"].to_numpy()
    return (
        d.height,
        float(d["filled_quantity"].sum() / d["target_quantity"].sum()),
        float((isf * w).sum() / w.sum()),
        float(np.percentile(isf, 90)),
    )


@pytest.mark.slow
def test_sweep_runs_every_variant_as_a_normal_run(swept: dict[str, Any]) -> None:
    root = swept["root"]
    manifest = _manifest(root)
    run_ids = [r["run_id"] for r in manifest["runs"]]
    assert len(run_ids) == len(set(run_ids)) == 7
    base = json.loads(json.dumps(BacktestConfig.from_yaml(DEMO).model_dump(mode="json")))
    for r in manifest["runs"]:
        summary = _summary(root, r["run_id"])
        assert summary["status"] == "COMPLETED"
        stored = json.loads(
            (results_dir(root) / "config" / r["run_id"] / "backtest_config.json").read_text()
        )
        assert stored == summary["config"]
        # the resolved configuration = the base with exactly the variant's overrides
        expect = json.loads(json.dumps(base))
        for key, value in r["overrides"].items():
            node = expect
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        got = BacktestConfig.model_validate(stored)
        assert got == BacktestConfig.model_validate(expect)
        assert got.run_id(DAY, DAY) == r["run_id"]  # deterministic, as a plain `backtest run`
    # the knobs acted: LIMIT prices moved by the offset (passively), TWAP in at most 3 children
    by_label = {r["label"]: r["run_id"] for r in manifest["runs"]}
    off = by_label["venues.BINANCE-FUTURES.latency.base_ms=5, algo.limit_offset_bps=5"]
    orders, ops = _parquet(root, off, "orders.parquet"), _parquet(root, off, "operations.parquet")
    signals = pl.read_parquet(
        root / layout.bucket_for("signals") / layout.signals_path(DAY, "demo-strategy")
    )
    limits = (
        orders.filter(pl.col("order_type") == "LIMIT")
        .join(ops.select("operation_id", "signal_id"), on="operation_id")
        .join(signals.select("signal_id", "limit_price"), on="signal_id")
        .filter(pl.col("limit_price").is_not_null() & pl.col("price").is_not_null())
    )
    assert limits.height > 0
    for side, price, lim in limits.select("side", "price", "limit_price").iter_rows():
        want = lim * (1 - 5e-4) if side == "BUY" else lim * (1 + 5e-4)
        assert abs(price - want) <= 0.1 + 1e-9, (side, price, lim)  # BTC tick 0.1, passive
        assert (price < lim) if side == "BUY" else (price > lim)
    twap = by_label["algo.twap_slices=3, algo.execution_window_scale=0.5"]
    orders, ops = _parquet(root, twap, "orders.parquet"), _parquet(root, twap, "operations.parquet")
    per_op = (
        orders.join(ops.select("operation_id", "algo"), on="operation_id")
        .filter(pl.col("algo") == "TWAP")
        .group_by("operation_id")
        .len()
    )
    assert per_op.height > 0 and per_op["len"].max() == 3


@pytest.mark.slow
def test_comparison_agrees_with_each_runs_own_summary(swept: dict[str, Any]) -> None:
    root = swept["root"]
    res = runner.invoke(app, ["compare", "--batch", "knobs", "--root", str(root)])
    assert res.exit_code == 0, res.output
    table = pl.from_arrow(pq.read_table(results_dir(root) / "comparisons/knobs/runs.parquet"))
    manifest = _manifest(root)
    assert sorted(table["run_id"].to_list()) == sorted(r["run_id"] for r in manifest["runs"])
    assert table["net_pnl"].to_list() == sorted(table["net_pnl"].to_list(), reverse=True)
    assert table["rank"].to_list() == list(range(1, 8))
    for row in table.iter_rows(named=True):
        s = _summary(root, row["run_id"])
        for k in ("net_pnl", "gross_pnl", "total_fees", "funding_paid"):
            assert row[k] == s["pnl"][k], k
        for k in ("sharpe_ratio", "sortino_ratio", "max_drawdown_pct", "total_trades"):
            assert row[k] == s["metrics"][k], k
        assert (row["start"], row["end"]) == (s["start"], s["end"]) == (DAY, DAY)
        ops = _parquet(root, row["run_id"], "operations.parquet")
        for algo in ("MARKET", "LIMIT", "TWAP", "ALL"):
            n, fr, mean, p90 = _tca(ops, algo)
            a = algo.lower()
            assert row[f"{a}_operations"] == n
            assert math.isclose(row[f"{a}_fill_ratio"], fr, rel_tol=1e-9)
            assert math.isclose(row[f"{a}_shortfall_mean_bps"], mean, rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(row[f"{a}_shortfall_p90_bps"], p90, rel_tol=1e-9, abs_tol=1e-9)
        diff = json.loads(row["config_diff"])
        assert set(diff) >= {"venues.BINANCE-FUTURES.latency.base_ms"}
    out = " ".join(res.output.split())
    assert "comparison knobs" in out and "comparison.html" in out


@pytest.mark.slow
def test_rerun_skips_unchanged_variants(swept: dict[str, Any]) -> None:
    root = swept["root"]
    manifest = _manifest(root)
    first = manifest["runs"][0]["run_id"]
    stamps = {r["run_id"]: _summary(root, r["run_id"])["created_at"] for r in manifest["runs"]}
    res = runner.invoke(app, swept["args"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "0 completed, 7 skipped, 0 failed" in res.output
    assert {r: _summary(root, r)["created_at"] for r in stamps} == stamps
    # a variant whose results are gone (or not COMPLETED) is run again; the others are not
    (results_dir(root) / "backtest_results" / first / "summary.json").unlink()
    res = runner.invoke(app, [*swept["args"], "--workers", "1"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "1 completed, 6 skipped, 0 failed" in res.output
    assert _summary(root, first)["status"] == "COMPLETED"


# ---- comparison.html as a person sees it; the Dagster asset -----------------------------------

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
CELL = re.compile(
    r'<td class="v[^"]*" data-run="([^"]+)" data-col="([^"]+)" data-value="([^"]*)">([^<]*)</td>'
)


def _browser(args: list[str]) -> str:
    base = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars"]  # fmt: skip
    return subprocess.run(base + args, capture_output=True, text=True, timeout=90).stdout


@pytest.mark.slow
def test_comparison_html_in_headless_chromium(swept: dict[str, Any]) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    root = swept["root"]
    res = runner.invoke(app, ["compare", "--batch", "knobs", "--root", str(root)])
    assert res.exit_code == 0, res.output
    page = results_dir(root) / "comparisons" / "knobs" / "comparison.html"
    text = page.read_text()
    # self-contained: no script, stylesheet, image or font fetched from anywhere
    assert not re.search(r"<(script|link|img|iframe)\b", text)
    assert "url(" not in text and "src=" not in text
    links = re.findall(r"href='([^']*)'", text)
    assert links and all(x.startswith("../../backtest_results/") for x in links)
    assert all((page.parent / x).resolve().is_file() for x in links), "a report link is broken"
    assert text.count("<svg") >= 3
    dom = _browser(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()])
    cells = {(r, c): (v, shown) for r, c, v, shown in CELL.findall(dom)}
    run_ids = [r["run_id"] for r in _manifest(root)["runs"]]
    assert {r for r, _ in cells} == set(run_ids)
    for rid in run_ids:
        s = _summary(root, rid)
        net = s["pnl"]["net_pnl"]
        assert cells[(rid, "net_pnl")] == (repr(net), f"{net:,.2f}")
        for k in ("sharpe_ratio", "sortino_ratio"):
            v = s["metrics"][k]
            assert cells[(rid, k)] == (repr(v), f"{v:,.2f}"), k
        dd = s["metrics"]["max_drawdown_pct"]
        assert cells[(rid, "max_drawdown_pct")] == (repr(dd), f"{dd:,.2f} %")
        assert cells[(rid, "total_trades")][1] == f"{s['metrics']['total_trades']:,}"
        _, fr, mean, _ = _tca(_parquet(root, rid, "operations.parquet"), "ALL")
        assert cells[(rid, "all_fill_ratio")][1] == f"{100 * fr:,.1f} %"
        assert cells[(rid, "all_shortfall_mean_bps")][1] == f"{mean:,.2f} bps"
    # the leaderboard order on the page is the net PnL order
    order = [r for r, c, _, _ in CELL.findall(dom) if c == "net_pnl"]
    nets = [_summary(root, r)["pnl"]["net_pnl"] for r in order]
    assert nets == sorted(nets, reverse=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "comparison_html.png"
    _browser(["--virtual-time-budget=5000", "--window-size=1500,1500", f"--screenshot={shot}",
              page.as_uri()])  # fmt: skip
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_run_comparison_asset_materializes_the_batch(swept: dict[str, Any]) -> None:
    from dagster import DagsterInstance, materialize

    from assets.comparison import run_comparison
    from resources.ucs_resource import UCSResource

    root = swept["root"]
    table = results_dir(root) / "comparisons" / "knobs" / "runs.parquet"
    table.unlink(missing_ok=True)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [run_comparison],
            resources={"ucs": UCSResource(root=str(root))},
            run_config={"ops": {"run_comparison": {"config": {"batch": "knobs"}}}},
            instance=instance,
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags["backtest/batch"] == "knobs"
    meta = result.asset_materializations_for_node("run_comparison")[0].metadata
    board = meta["leaderboard"].value
    runs = pl.from_arrow(pq.read_table(table))
    assert meta["runs"].value == runs.height == 7
    for rid in runs["run_id"]:
        net = _summary(root, rid)["pnl"]["net_pnl"]
        line = next(x for x in board.splitlines() if rid in x)
        assert f"| {net:,.2f} |" in line  # money rounded to cents
        assert " bps |" in line and " % |" in line
        assert runs.filter(pl.col("run_id") == rid)["net_pnl"].item() == net
    best = max(runs["net_pnl"])
    assert meta["best_net_pnl"].value == round(best, 2)
    assert meta["plot"].value.startswith("![comparison knobs](data:image/png;base64,")
    assert meta["comparison_html"].value.endswith("comparisons/knobs/comparison.html")


def test_comparison_job_is_in_the_definitions() -> None:
    from definitions import defs

    job = defs.resolve_job_def("comparison_job")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"run_comparison"}
    backtest = defs.resolve_job_def("backtest_job")
    assert "run_comparison" not in {
        k.to_user_string() for k in backtest.asset_layer.selected_asset_keys
    }


def test_compare_needs_runs_that_exist(tmp_path: Path) -> None:
    root = tmp_path / "r"
    res = runner.invoke(app, ["compare", "BT-20240101-20240101-deadbeef", "--root", str(root)])
    assert res.exit_code == 2 and "has no results" in res.output
    res = runner.invoke(app, ["compare", "--batch", "nope", "--root", str(root)])
    assert res.exit_code == 2 and "batch 'nope' has no membership object" in " ".join(
        res.output.split()
    )


@pytest.mark.slow
def test_compare_by_run_ids_and_a_batch_with_a_member_missing(swept: dict[str, Any]) -> None:
    root = swept["root"]
    manifest = _manifest(root)
    a, b = (r["run_id"] for r in manifest["runs"][:2])
    res = runner.invoke(app, ["compare", b, a, "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    digest = hashlib.sha256(f"{min(a, b)}|{max(a, b)}".encode()).hexdigest()[:8]
    assert out["comparison_id"] == f"cmp-{digest}"
    assert (results_dir(root) / "comparisons" / f"cmp-{digest}" / "runs.parquet").is_file()
    rows = {r["run_id"]: r for r in out["runs"]}
    assert set(rows) == {a, b}
    # only the LIMIT offset differs between the first two variants of the grid (the first has
    # the default algo knobs, which its stored configuration leaves out)
    assert json.loads(rows[a]["config_diff"]) == {"algo.limit_offset_bps": 0.0}
    assert json.loads(rows[b]["config_diff"]) == {"algo.limit_offset_bps": 5.0}
    # a member still queued (no summary yet) is a MISSING row, ranked last, not an error
    ghost = "BT-20240101-20240101-00000000"
    plus = {**manifest, "batch": "plus", "runs": [*manifest["runs"], {"run_id": ghost}]}
    (results_dir(root) / "batches" / "plus").mkdir(parents=True, exist_ok=True)
    (results_dir(root) / "batches" / "plus" / "batch.json").write_text(json.dumps(plus))
    res = runner.invoke(app, ["compare", "--batch", "plus", "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    runs = json.loads(res.output)["runs"]
    assert runs[-1]["run_id"] == ghost and runs[-1]["status"] == "MISSING"
    assert runs[-1]["net_pnl"] is None and runs[-1]["rank"] == 8


def test_dry_run_validates_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = runner.invoke(
        app,
        [
            "sweep",
            "--config",
            str(DEMO),
            *GRID,
            "--start",
            DAY,
            "--end",
            DAY,
            "--root",
            str(root),
            "--dry-run",
        ],  # fmt: skip
        terminal_width=200,
    )
    assert res.exit_code == 0, res.output
    base = BacktestConfig.from_yaml(DEMO)
    sweep = build_sweep(
        base, DAY, DAY, dict(parse_set(x) for x in GRID if x != "--set"), batch=None
    )
    assert len(sweep.variants) == 6
    assert all(v.run_id in res.output for v in sweep.variants)
    assert sweep.batch in res.output and sweep.batch.startswith("sweep-demo-")
    assert not root.exists()


def test_window_knobs_reach_both_read_paths(tmp_path: Path) -> None:
    """The CLI path (``load_day``) and the Dagster path (``stages.load_signals``) both see the
    scaled windows, and the tick intervals they fetch follow them."""
    from backtest_pipeline.run import stages
    from backtest_pipeline.run.inputs import load_day

    ucs = UnifiedCloudService(str(tmp_path / "root"))
    generate_sample_data(ucs, date(2024, 1, 1), 1, None, trades_per_day=2_000, seed=1)
    base = BacktestConfig.from_yaml(DEMO)
    half = BacktestConfig.model_validate(
        {**base.model_dump(mode="json"), "algo": {"execution_window_scale": 0.5}}
    )
    day = date(2024, 1, 1)
    raw = pl.from_arrow(stages.load_signals(ucs, base, day))["execution_window_s"]
    dag = pl.from_arrow(stages.load_signals(ucs, half, day))["execution_window_s"]
    cli = load_day(ucs, half, day)[0].signals["execution_window_s"]
    assert raw.len() > 0
    assert dag.to_list() == cli.to_list() == [w * 0.5 for w in raw.to_list()]
    span = {
        name: int((iv["end_ns"] - iv["start_ns"]).sum())
        for name, iv in (
            ("base", stages.compute_intervals(stages.load_signals(ucs, base, day), base, day)),
            ("half", stages.compute_intervals(stages.load_signals(ucs, half, day), half, day)),
        )
    }
    assert span["half"] < span["base"]
