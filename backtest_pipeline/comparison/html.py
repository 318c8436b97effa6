"""``comparison.html``: the leaderboard and its charts as one file that opens with no network.

The charts are hand-written inline SVG: a few bars and polylines need no plotting library, the
file stays small (tens of kB for dozens of runs) and renders the same in any browser, offline,
attached to a mail. Every figure cell carries its exact value (``data-value``) beside the
rounded text people read, so a test, or a colleague's script, can check one against the other.
Each run_id links to that run's ``report.html`` by a relative path (the same results bucket).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import polars as pl

from backtest_pipeline.comparison.table import ALGOS, Comparison, eq_column
from backtest_pipeline.results.formatting import format_figure
from backtest_pipeline.results.writer import utc_now

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


money = partial(format_figure, "money")
num2 = partial(format_figure, "num2")
pct = partial(format_figure, "pct")
bps = partial(format_figure, "bps")
ratio = partial(format_figure, "share")  # a fill ratio, shown as a share
count = partial(format_figure, "count")


#: leaderboard columns: (runs.parquet column, header, formatter)
LEADERBOARD: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("net_pnl", "net PnL", money),
    ("return_pct", "return", pct),
    ("total_fees", "fees", money),
    ("funding_paid", "funding paid", money),
    ("sharpe_ratio", "Sharpe", num2),
    ("sortino_ratio", "Sortino", num2),
    ("max_drawdown_pct", "max drawdown", pct),
    ("total_trades", "trades", count),
    ("win_rate", "win rate", ratio),
    ("fills", "fills", count),
)
EQ_FIGURES: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("operations", "ops", count),
    ("fill_ratio", "fill ratio", ratio),
    ("shortfall_mean_bps", "shortfall mean", bps),
    ("shortfall_p90_bps", "shortfall p90", bps),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12.5px}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f5f5f5;position:sticky;top:0}
td.l,th.l{text-align:left} td.cfg{text-align:left;white-space:normal;max-width:380px}
tr:hover td{background:#fafafa} .neg{color:#b22} .pos{color:#176} .st{font-size:11px}
.sw{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
svg text{font-size:11px;fill:#333}
"""


def _cell(run_id: str, col: str, value: Any, fmt: Callable[[Any], str]) -> str:
    cls = ""
    if isinstance(value, int | float) and col in ("net_pnl", "return_pct"):
        cls = " pos" if value > 0 else " neg" if value < 0 else ""
    raw = "" if value is None else repr(value)
    return (
        f'<td class="v{cls}" data-run="{html.escape(run_id)}" data-col="{col}" '
        f'data-value="{raw}">{html.escape(fmt(value))}</td>'
    )


def _bars(
    names: Sequence[str], values: Sequence[float | None], colors: Sequence[str], unit: str
) -> str:
    """Horizontal bars around zero, one per run, labelled with the value."""
    row_h, left, width = 22, 150, 520
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "<p class='sub'>no values</p>"
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return left + (v - lo) / span * width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 110}" '
        f'height="{row_h * len(names) + 10}" role="img">',
        f'<line x1="{x(0):.1f}" y1="0" x2="{x(0):.1f}" y2="{row_h * len(names)}" stroke="#999"/>',
    ]
    for i, (n, v, c) in enumerate(zip(names, values, colors, strict=True)):
        y = i * row_h + 4
        parts.append(f'<text x="4" y="{y + 12}">{html.escape(n)}</text>')
        if v is None or not math.isfinite(v):
            parts.append(f'<text x="{x(0) + 4:.1f}" y="{y + 12}">—</text>')
            continue
        x0, x1 = sorted((x(0), x(v)))
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" '
            f'fill="{c}"/>'
        )
        parts.append(f'<text x="{x1 + 4:.1f}" y="{y + 12}">{v:,.2f}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _equity_lines(comparison: Comparison, colors: dict[str, str], max_points: int = 600) -> str:
    """Portfolio value of every run over time, one polyline each (downsampled for size)."""
    curves = {r: df for r, df in comparison.equity.items() if df.height}
    if not curves:
        return "<p class='sub'>no equity curves</p>"
    w, h, pad = 760, 280, 60

    def ns(df: pl.DataFrame) -> pl.Series:
        ts = df["ts_event"]
        return ts.dt.epoch("ns") if ts.dtype == pl.Datetime else ts.cast(pl.Int64)

    t_lo = min(int(ns(df).min()) for df in curves.values())  # type: ignore[arg-type]
    t_hi = max(int(ns(df).max()) for df in curves.values())  # type: ignore[arg-type]
    v_lo = min(float(df["portfolio_value"].min()) for df in curves.values())  # type: ignore[arg-type]
    v_hi = max(float(df["portfolio_value"].max()) for df in curves.values())  # type: ignore[arg-type]
    t_span, v_span = (t_hi - t_lo) or 1, (v_hi - v_lo) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + pad + 10}" height="{h + 40}" '
        'role="img">',
        f'<rect x="{pad}" y="10" width="{w}" height="{h}" fill="none" stroke="#ccc"/>',
        f'<text x="4" y="20">{v_hi:,.0f}</text><text x="4" y="{h + 10}">{v_lo:,.0f}</text>',
    ]
    for r, df in curves.items():
        step = max(1, df.height // max_points)
        sub = df.gather_every(step)
        if sub.height and df.height and step > 1:
            sub = pl.concat([sub, df.tail(1)])
        xs = (ns(sub) - t_lo).cast(pl.Float64) / t_span * w + pad
        ys = 10 + h - (sub["portfolio_value"] - v_lo) / v_span * h
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs.to_list(), ys.to_list(), strict=True))
        parts.append(
            f'<polyline fill="none" stroke="{colors[r]}" stroke-width="1.3" points="{pts}">'
            f"<title>{html.escape(r)}</title></polyline>"
        )
    parts.append(f'<text x="{pad}" y="{h + 30}">portfolio value over the run</text></svg>')
    return "".join(parts)


def comparison_html(comparison: Comparison) -> str:
    """The whole page: headline, leaderboard, execution quality by algo, charts, differences."""
    df = comparison.runs
    rows = df.to_dicts()
    colors = {r["run_id"]: PALETTE[i % len(PALETTE)] for i, r in enumerate(rows)}
    ranges = sorted({f"{r['start']} … {r['end']}" for r in rows if r["start"]})
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>comparison {html.escape(comparison.comparison_id)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Comparison <code>{html.escape(comparison.comparison_id)}</code></h1>",
        f"<p class='sub'>{len(rows)} runs · range {html.escape(', '.join(ranges) or '—')} · "
        f"written {utc_now()} · money in the account currency, ranked by net PnL</p>",
        "<h2>Leaderboard</h2><table id='leaderboard'><thead><tr>",
        "<th>#</th><th class='l'>run_id</th><th class='l'>configuration differences</th>"
        "<th class='l'>range</th><th>status</th>",
        *(f"<th>{h}</th>" for _, h, _ in LEADERBOARD),
        "</tr></thead><tbody>",
    ]
    for r in rows:
        rid = r["run_id"]
        out.append(
            f"<tr data-run='{html.escape(rid)}'><td>{r['rank']}</td>"
            f"<td class='l'><span class='sw' style='background:{colors[rid]}'></span>"
            # relative: the run's report beside the comparison in the same bucket, no network
            f"<a href='../../backtest_results/{html.escape(rid)}/report.html'>"
            f"<code>{html.escape(rid)}</code></a></td>"
            f"<td class='cfg'>{html.escape(r['label'] or '')}</td>"
            f"<td class='l'>{html.escape(str(r['start']))} … {html.escape(str(r['end']))}</td>"
            f"<td class='st'>{html.escape(r['status'])}</td>"
        )
        out.extend(_cell(rid, c, r[c], f) for c, _, f in LEADERBOARD)
        out.append("</tr>")
    out.append("</tbody></table>")
    out.append(
        "<h2>Execution quality by algo</h2><p class='sub'>from each run's operations.parquet: "
        "fill ratio = filled ÷ intended quantity; implementation shortfall in bps (positive = "
        "cost), mean weighted by intended notional, p90 unweighted</p>"
        "<table id='execution'><thead><tr><th rowspan='2'>#</th>"
        "<th class='l' rowspan='2'>run_id</th>"
    )
    out.extend(f"<th colspan='{len(EQ_FIGURES)}'>{a}</th>" for a in ALGOS)
    out.append("</tr><tr>")
    out.extend(f"<th>{h}</th>" for _ in ALGOS for _, h, _ in EQ_FIGURES)
    out.append("</tr></thead><tbody>")
    for r in rows:
        rid = r["run_id"]
        out.append(f"<tr><td>{r['rank']}</td><td class='l'><code>{html.escape(rid)}</code></td>")
        out.extend(
            _cell(rid, eq_column(a, f), r[eq_column(a, f)], fmt)
            for a in ALGOS
            for f, _, fmt in EQ_FIGURES
        )
        out.append("</tr>")
    out.append("</tbody></table>")
    names = [f"#{r['rank']} {r['run_id'][-8:]}" for r in rows]
    cols = [colors[r["run_id"]] for r in rows]
    out.append("<h2>Net PnL</h2>")
    out.append(_bars(names, [r["net_pnl"] for r in rows], cols, ""))
    out.append("<h2>Implementation shortfall, all algos (mean, bps)</h2>")
    out.append(_bars(names, [r[eq_column("ALL", "shortfall_mean_bps")] for r in rows], cols, ""))
    out.append("<h2>Equity curves</h2>")
    out.append(_equity_lines(comparison, colors))
    if comparison.differing_keys:
        out.append("<h2>Configuration keys that differ</h2><ul>")
        out.extend(f"<li><code>{html.escape(k)}</code></li>" for k in comparison.differing_keys)
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)
