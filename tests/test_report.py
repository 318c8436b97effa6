"""``report.html`` opened as a colleague would: from disk, in headless Chromium, with no network.

The page must be self-contained (no script, stylesheet, image or font fetched from anywhere),
and the figures it shows must be the run's own: net PnL, Sharpe and the rest of the headline,
and every cell of the execution-quality table, read back from the rendered DOM and compared
with ``summary.json`` to the precision shown. A screenshot is kept under ``artifacts/``.
"""

from __future__ import annotations

import html
import re
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.data.sample import generate_sample_data
from backtest_pipeline.run.runner import BacktestFailed, BacktestResult, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
START, END = date(2024, 1, 1), date(2024, 1, 2)
HEADLINE = {  # key → (section of summary.json, decimals shown, scale)
    "net_pnl": ("pnl", 2, 1.0),
    "gross_pnl": ("pnl", 2, 1.0),
    "total_fees": ("pnl", 2, 1.0),
    "funding_paid": ("pnl", 2, 1.0),
    "sharpe_ratio": ("metrics", 3, 1.0),
    "sortino_ratio": ("metrics", 3, 1.0),
    "max_drawdown_pct": ("metrics", 2, 1.0),
    "total_trades": ("metrics", 0, 1.0),
    "win_rate": ("metrics", 1, 100.0),
    "profit_factor": ("metrics", 3, 1.0),
}
TCA_DECIMALS = {"operations": 0, "intended_notional": 0, "fill_ratio": 3}  # the rest: 2 (bps)


def _chromium(args: list[str]) -> str:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars"]  # fmt: skip
    return subprocess.run(base + args, capture_output=True, text=True, timeout=90).stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[UnifiedCloudService, BacktestResult]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); the browser test needs it")
    ucs = UnifiedCloudService(str(tmp_path_factory.mktemp("report")))
    generate_sample_data(ucs, START, 2, None, trades_per_day=30_000, seed=3)
    config = BacktestConfig.from_yaml(REPO / "configs" / "demo.yaml")
    return ucs, run_backtest(config, START, END, ucs=ucs)


def _number(text: str) -> float | None:
    text = html.unescape(text).strip()
    if text == "—":
        return None
    m = re.match(r"^-?[\d,]+(\.\d+)?", text)
    assert m, text
    return float(m.group(0).replace(",", ""))


def _cells(dom: str, attrs: str) -> dict[tuple[str, ...], str]:
    """Text of the elements carrying ``data-*`` attributes, keyed by their values."""
    out = {}
    for m in re.finditer(rf"<(?:td|div) [^>]*?{attrs}[^>]*>([^<]*)<", dom):
        out[m.groups()[:-1]] = m.groups()[-1]
    return out


def _close(shown: float | None, value: float | None, decimals: int, scale: float = 1.0) -> bool:
    if value is None:
        return shown is None
    return shown is not None and abs(shown - value * scale) <= 0.5 * 10**-decimals + 1e-9


@pytest.mark.slow  # a browser start
def test_report_is_self_contained_and_shows_the_summary_figures(run) -> None:  # type: ignore[no-untyped-def]
    ucs, result = run
    path = Path(result.locations["report.html"].removeprefix("file://"))
    text = path.read_text()
    # nothing to fetch: no script or stylesheet source, no link, no remote url of any kind
    assert not re.search(r"<script|<link|<img|@import|url\(", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}
    summary = ucs.download_from_gcs_sync(
        layout.target("results"), layout.result_path(result.run_id, "summary.json")
    )
    assert summary["results"]["report.html"] == result.locations["report.html"]

    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", path.as_uri()])
    assert f"Backtest {result.run_id}" in dom and "<svg" in dom
    shown = {k[0]: v for k, v in _cells(dom, r'data-key="([a-z_]+)"').items()}
    for key, (section, decimals, scale) in HEADLINE.items():
        value = summary[section][key]
        assert _close(_number(shown[key]), value, decimals, scale), (key, shown[key], value)
    assert summary["pnl"]["net_pnl"] != 0.0 and summary["metrics"]["sharpe_ratio"] is not None

    tca = summary["execution_stats"]["tca"]
    cells = _cells(dom, r'data-algo="([A-Z]+)" data-key="([a-z0-9_]+)"')
    assert {algo for algo, _ in cells} == set(tca) and "ALL" in tca
    for (algo, key), text_ in cells.items():
        value = tca[algo][key]
        assert _close(_number(text_), value, TCA_DECIMALS.get(key, 2)), (algo, key, text_, value)
    assert len(cells) == len(tca) * len(tca["ALL"])
    # the shortfall histogram has one series per algo, with the operations counted
    for algo in (a for a in tca if a != "ALL"):
        assert f"{algo} ({tca[algo]['operations']})" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _chromium(["--window-size=1100,2600", f"--screenshot={shot}", path.as_uri()])
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.slow  # shares the browser test's run
def test_a_failed_rerun_leaves_no_report(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ucs, result = run
    t_res = layout.target("results")
    report_path = layout.result_path(result.run_id, "report.html")
    assert ucs.exists_sync(t_res, report_path)
    bad = layout.trades_path(END, "BINANCE-FUTURES:PERPETUAL:BTC-USDT")
    good = ucs.download_bytes_sync(layout.target("ticks"), bad)
    ucs.upload_to_gcs_sync(layout.target("ticks"), bad, b"PAR1 truncated", format="bytes")
    try:
        config = BacktestConfig.from_yaml(REPO / "configs" / "demo.yaml")
        with pytest.raises(BacktestFailed):
            run_backtest(config, START, END, ucs=ucs)
    finally:
        ucs.upload_to_gcs_sync(layout.target("ticks"), bad, good, format="bytes")
    assert not ucs.exists_sync(t_res, report_path)
    summary = ucs.download_from_gcs_sync(t_res, layout.result_path(result.run_id, "summary.json"))
    assert summary["status"] == "FAILED"


def test_long_series_are_reduced_keeping_every_extreme() -> None:
    from backtest_pipeline.results.report import MAX_POINTS, reduce_series

    rng = np.random.default_rng(1)
    x = np.arange(200_000, dtype=np.int64)
    y = np.cumsum(rng.normal(size=x.size))
    y[123_457] = y.max() + 50.0  # a one-sample spike must survive
    rx, ry = reduce_series(x, y)
    assert rx.size <= MAX_POINTS and np.all(np.diff(rx) > 0)
    assert ry.max() == y.max() and ry.min() == y.min()
    assert (rx[0], rx[-1]) == (x[0], x[-1]) and np.array_equal(ry, y[rx])
    short = np.arange(10)
    assert reduce_series(short, short * 2.0)[0] is short


def test_figures_are_formatted_to_the_precision_the_report_states() -> None:
    from backtest_pipeline.results.formatting import format_figure
    from backtest_pipeline.results.operations import format_tca_value

    assert format_figure("money", 1234.567, "USDT") == "1,234.57 USDT"
    assert format_figure("share", 0.4092) == "40.9 %"
    assert format_figure("ratio", None) == "—" and format_figure("ratio", float("nan")) == "—"
    assert format_tca_value("opportunity_cost_bps", -3e-17) == "0.00"
    assert format_tca_value("intended_notional", 955490.08) == "955,490"
