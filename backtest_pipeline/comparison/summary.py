"""The comparison for people reading it elsewhere (the Dagster UI): a Markdown table and a plot.

Figures are rounded and labelled with their unit here, once, so the asset's metadata reads like
the leaderboard of ``backtest compare`` rather than a dump of floats.
"""

from __future__ import annotations

import base64
import json

from backtest_pipeline.comparison.html import bps, count, money, num2, pct, ratio
from backtest_pipeline.comparison.table import Comparison, eq_column
from backtest_pipeline.results.report import figure_png


def leaderboard_markdown(comparison: Comparison, currency: str = "USDT") -> str:
    """The leaderboard as a Markdown table (money rounded to cents, % and bps labelled)."""
    head = (
        f"| # | run_id | configuration differences | net PnL ({currency}) | return | Sharpe | "
        "Sortino | max drawdown | trades | fill ratio (all) | shortfall mean (all) | "
        "shortfall p90 (all) |"
    )
    sep = "|" + " --- |" * 12
    lines = [head, sep]
    for r in comparison.runs.to_dicts():
        diff = json.loads(r["config_diff"] or "{}")
        label = ", ".join(f"`{k}`={v}" for k, v in diff.items()) or "(same)"
        if r["status"] != "COMPLETED":
            label = f"**{r['status']}** {label}"
        lines.append(
            f"| {r['rank']} | `{r['run_id']}` | {label} | {money(r['net_pnl'])} | "
            f"{pct(r['return_pct'])} | {num2(r['sharpe_ratio'])} | {num2(r['sortino_ratio'])} | "
            f"{pct(r['max_drawdown_pct'])} | {count(r['total_trades'])} | "
            f"{ratio(r[eq_column('ALL', 'fill_ratio')])} | "
            f"{bps(r[eq_column('ALL', 'shortfall_mean_bps')])} | "
            f"{bps(r[eq_column('ALL', 'shortfall_p90_bps')])} |"
        )
    return "\n".join(lines)


def comparison_png(comparison: Comparison) -> bytes:
    """Net PnL and mean shortfall per run, side by side (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = comparison.runs.to_dicts()
    names = [f"#{r['rank']} {r['run_id'][-8:]}" for r in rows]
    pnl = [r["net_pnl"] or 0.0 for r in rows]
    sf = [r[eq_column("ALL", "shortfall_mean_bps")] or 0.0 for r in rows]
    height = max(2.4, 0.28 * len(rows) + 1.0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.0, height), dpi=80, sharey=True)
    try:
        y = list(range(len(rows)))[::-1]
        a1.barh(y, pnl, color=["#2a7" if v >= 0 else "#c33" for v in pnl])
        a1.set_title("net PnL", fontsize=9)
        a2.barh(y, sf, color="#1f77b4")
        a2.set_title("shortfall mean, all algos (bps)", fontsize=9)
        a1.set_yticks(y, names, fontsize=7)
        for ax in (a1, a2):
            ax.axvline(0, color="#888", lw=0.8)
            ax.tick_params(labelsize=7)
        return figure_png(fig)
    finally:
        plt.close(fig)


def plot_markdown(comparison: Comparison) -> str:
    """The plot as Markdown with a data-URI image (shown inline by the Dagster UI)."""
    data = base64.b64encode(comparison_png(comparison)).decode()
    return f"![comparison {comparison.comparison_id}](data:image/png;base64,{data})"
