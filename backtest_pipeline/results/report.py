"""Renderings of a run for humans: ``report.html``, the equity-curve PNG and flat metric dicts.

Kept out of the asset code so they are tested without Dagster; matplotlib runs on the Agg
backend (no display on servers or in the Dagster daemon).
"""

import base64
import io
import json
import math
import threading
from datetime import UTC, datetime
from html import escape
from typing import Any

import numpy as np
import polars as pl

from backtest_pipeline.results.formatting import format_figure, plain

#: At most this many points per line of the equity PNG: the figure is 512 pixels wide, so a
#: longer curve is drawn as each column's low and high (a year of minutes is 0.5 M rows).
PLOT_POINTS = 2048


def plot_series(equity: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time (``datetime64[ns]``), portfolio value and drawdown to draw, at most ``PLOT_POINTS``.

    Why buckets of low and high rather than every k-th row: a sampled curve can miss the very
    trough that the drawdown panel is there to show; the envelope keeps every extreme.
    """
    ts = equity["ts_event"].cast(pl.Datetime("ns", "UTC")).dt.replace_time_zone(None)
    frame = pl.DataFrame({"ts": ts, "v": equity["portfolio_value"], "dd": equity["drawdown_pct"]})
    if frame.height > PLOT_POINTS:
        per = -(-frame.height // (PLOT_POINTS // 2))
        lows_highs = (
            frame.with_row_index("i")
            .group_by((pl.col("i") // per).alias("b"), maintain_order=True)
            .agg(
                pl.col("ts").first(),
                pl.concat_list(pl.col("v").min(), pl.col("v").max()).alias("v"),
                pl.concat_list(pl.col("dd").min(), pl.col("dd").min()).alias("dd"),
            )
        )
        frame = lows_highs.explode("v", "dd").select("ts", "v", "dd")
    return frame["ts"].to_numpy(), frame["v"].to_numpy(), frame["dd"].to_numpy()


#: One drawing at a time: matplotlib's font and text caches are shared by every figure of a
#: process, and a warm-up (:func:`warm_up_plots`) may draw in another thread.
_DRAWING = threading.Lock()


def equity_png(equity: pl.DataFrame, title: str = "equity") -> bytes:
    """A small PNG of portfolio value (and drawdown) over time.

    Drawn on a bare Agg figure (no pyplot state machine, no ``tight_layout`` pass) from NumPy
    arrays: it is rendered in the Dagster step after the engine, where every 0.1 s is waited for.
    """
    with _DRAWING:
        return _equity_png(equity, title)


def warm_up_plots() -> None:
    """Import matplotlib and draw a throwaway equity PNG.

    Why: a process's first drawing also loads the fonts and fills the text caches (~0.1 s on
    top of the imports). The Dagster run does this while ``backtest_run`` waits for its engine,
    so that ``backtest_summary``'s plot, drawn after the engine, costs only itself.
    """
    equity_png(
        pl.DataFrame(
            {
                "ts_event": pl.Series([0, 60_000_000_000], dtype=pl.Int64).cast(
                    pl.Datetime("ns", "UTC")
                ),
                "portfolio_value": [1.0, 1.0],
                "drawdown_pct": [0.0, 0.0],
            }
        ),
        "warm-up",
    )


def _equity_png(equity: pl.DataFrame, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=80)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if equity.height:
        ts, value, drawdown = plot_series(equity)
        ax1.plot(ts, value, lw=1.0, color="#1f77b4")
        ax2.fill_between(ts, drawdown, 0, color="#d62728", alpha=0.4, lw=0)
    ax1.set_title(title, fontsize=9)
    ax1.set_ylabel("portfolio", fontsize=8)
    ax2.set_ylabel("dd %", fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=7)
    for label in ax2.get_xticklabels():
        label.set_rotation(20)
        label.set_horizontalalignment("right")
    fig.subplots_adjust(left=0.13, right=0.98, top=0.93, bottom=0.16, hspace=0.08)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure laid out and encoded as PNG bytes, for a data URI in Markdown."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def equity_markdown(equity: pl.DataFrame, title: str = "equity") -> str:
    """Markdown embedding the PNG as a data URI (Dagster renders it behind "Show Markdown")."""
    data = base64.b64encode(equity_png(equity, title)).decode()
    return f"![{title}](data:image/png;base64,{data})"


def flat_metrics(summary: dict[str, Any]) -> dict[str, float | int | str | None]:
    """PnL, metrics and the headline execution stats as one flat dict (metadata, CLI tables)."""
    out: dict[str, float | int | str | None] = {}
    out.update(summary.get("pnl") or {})
    out.update(summary.get("metrics") or {})
    stats = summary.get("execution_stats") or {}
    for k in (
        "ticks_processed",
        "ticks_per_second",
        "fills",
        "orders_submitted",
        "bytes_read",
        "bytes_available",
        "wall_time_s",
        "engine_time_s",
        "days",
    ):
        if k in stats:
            out[k] = stats[k]
    return out


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"

# How each flat figure is labelled and rounded for people (asset metadata, the UI): money to the
# cent in the account currency, ratios to 3 places, percentages and bps named as such.
FIGURE_UNITS: dict[str, tuple[str, str]] = {
    "gross_pnl": ("gross_pnl", "money"),
    "net_pnl": ("net_pnl", "money"),
    "total_fees": ("total_fees", "money"),
    "funding_paid": ("funding_paid", "money"),
    "sharpe_ratio": ("sharpe_ratio", "ratio"),
    "sortino_ratio": ("sortino_ratio", "ratio"),
    "profit_factor": ("profit_factor", "ratio"),
    "max_drawdown_pct": ("max_drawdown (%)", "pct"),
    "win_rate": ("win_rate (%)", "share"),
    "avg_slippage_bps": ("avg_slippage (bps)", "bps"),
    "wall_time_s": ("wall_time (s)", "seconds"),
    "engine_time_s": ("engine_time (s)", "seconds"),
}


def sparkline(values: np.ndarray, width: int = 48) -> str:
    """A one-line unicode plot: visible in any text field (the Dagster UI shows text metadata
    inline, images only behind a click). Each character is the mean of its slice of the series."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ""
    chunks = np.array_split(v, min(width, v.size))
    means = np.array([c.mean() for c in chunks])
    lo, hi = float(means.min()), float(means.max())
    if hi == lo:
        return SPARK_BLOCKS[0] * len(means)
    idx = np.rint((means - lo) / (hi - lo) * (len(SPARK_BLOCKS) - 1)).astype(int)
    return "".join(SPARK_BLOCKS[i] for i in idx)


def account_currency(summary: dict[str, Any]) -> str:
    """The currency money figures are in: the summary's own, else its configuration's."""
    config = summary.get("config") or {}
    return str(summary.get("account_currency") or config.get("account_currency", "USDT"))


def people_figures(summary: dict[str, Any]) -> dict[str, float | int]:
    """The run's figures rounded and labelled with their unit, for a UI's metadata: numbers stay
    numbers (Dagster plots them across materializations), only their names say the unit."""
    ccy = account_currency(summary)
    stats = summary.get("execution_stats") or {}
    flat = {**flat_metrics(summary), "avg_slippage_bps": stats.get("avg_slippage_bps")}
    out: dict[str, float | int] = {}
    for key, value in flat.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        label, kind = FIGURE_UNITS.get(key, (key, "count"))
        if kind == "money":
            out[f"{label} ({ccy})"] = round(float(value), 2)
        elif kind == "share":
            out[label] = round(100 * float(value), 2)
        elif kind in ("pct", "bps", "seconds"):
            out[label] = round(float(value), 2)
        elif kind == "ratio":
            out[label] = round(float(value), 3)
        else:
            out[label] = int(value) if float(value).is_integer() else round(float(value), 1)
    return out


def headline_markdown(summary: dict[str, Any]) -> str:
    """The report's headline figures as a two-column Markdown table, formatted as the report."""
    ccy = account_currency(summary)
    figures = {**(summary.get("pnl") or {}), **(summary.get("metrics") or {})}
    rows = [
        f"| {label} | {format_figure(kind, figures.get(key), ccy)} |"
        for key, label, kind in HEADLINE
    ]
    slip = (summary.get("execution_stats") or {}).get("avg_slippage_bps")
    rows.append(f"| Avg slippage | {'—' if slip is None else f'{slip:.2f} bps'} |")
    return "| figure | value |\n| --- | --- |\n" + "\n".join(rows)


# --------------------------------------------------------------------------------------------
# report.html: one self-contained page per run
# --------------------------------------------------------------------------------------------
# Hand-made inline SVG rather than a plotting library: the page must open with no network, and
# a library inlined into every report (plotly.js: megabytes) would outweigh the whole report
# (84 kB for the 3-day demo, rendered in 25 ms) and the few hundred lines here. Long
# series are reduced to the min and max of each pixel column, which keeps every peak and
# trough visible at any run length.

MAX_POINTS = 1200  # per series: about two points per horizontal pixel of a chart
CHART_W, CHART_H = 960, 260
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 74, 16, 14, 28
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
HEADLINE = (
    ("net_pnl", "Net PnL", "money"),
    ("gross_pnl", "Gross PnL", "money"),
    ("total_fees", "Fees", "money"),
    ("funding_paid", "Funding paid", "money"),
    ("sharpe_ratio", "Sharpe", "ratio"),
    ("sortino_ratio", "Sortino", "ratio"),
    ("max_drawdown_pct", "Max drawdown", "pct"),
    ("total_trades", "Trades", "count"),
    ("win_rate", "Win rate", "share"),
    ("profit_factor", "Profit factor", "ratio"),
)
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin-bottom:16px}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:8px}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;background:#fafafa}
.card .k{color:#666;font-size:12px}.card .v{font-size:18px;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px;max-height:480px}
svg text{font:11px system-ui,sans-serif;fill:#444}.note{color:#666;font-size:12px}
"""


def _epoch_ns(df: pl.DataFrame, col: str = "ts_event") -> np.ndarray:
    s = df[col]
    s = s.dt.epoch("ns") if isinstance(s.dtype, pl.Datetime) else s.cast(pl.Int64)
    return s.to_numpy()


def reduce_series(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[Any, Any]:
    """At most ``max_points`` points: per equal-count bucket, its first, min, max and last."""
    n = x.size
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 4)
    idx = np.arange(n)
    b = idx * buckets // n
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:], n] - 1
    # where in each bucket its min and max lie, so the points stay in time order
    arg_min = np.array(
        [s + int(np.argmin(y[s : e + 1])) for s, e in zip(starts, ends, strict=True)]
    )
    arg_max = np.array(
        [s + int(np.argmax(y[s : e + 1])) for s, e in zip(starts, ends, strict=True)]
    )
    keep = np.unique(np.concatenate([starts, ends, arg_min, arg_max]))
    return x[keep], y[keep]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt_tick(v: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (100,050 not 100k)."""
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:,.{decimals}f}"


def _time_label(ns: int, span_ns: int) -> str:
    t = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return t.strftime("%m-%d %H:%M") if span_ns < 4 * 86_400 * 10**9 else t.strftime("%Y-%m-%d")


def line_svg(
    series: list[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    *,
    height: int = CHART_H,
    fill: bool = False,
    step: bool = False,
    x_range: tuple[int, int] | None = None,
) -> str:
    """A time chart (x in epoch ns) of one or more series as inline SVG, with axes and legend."""
    w, h = CHART_W, height
    pw, ph = w - _PAD_L - _PAD_R, h - _PAD_T - _PAD_B
    xs = [s[1] for s in series if s[1].size]
    ys = [s[2] for s in series if s[2].size]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img">',
             f"<title>{escape(title)}</title>"]  # fmt: skip
    if not xs:
        parts.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    x0, x1 = x_range or (int(min(x.min() for x in xs)), int(max(x.max() for x in xs)))
    y0, y1 = float(min(y.min() for y in ys)), float(max(y.max() for y in ys))
    if fill:
        y0, y1 = min(y0, 0.0), max(y1, 0.0)
    if y1 == y0:
        y0, y1 = y0 - 1.0, y1 + 1.0
    pad = (y1 - y0) * 0.04
    y0, y1 = y0 - (0 if fill and y0 == 0 else pad), y1 + (0 if fill and y1 == 0 else pad)
    span = max(1, x1 - x0)

    def px(x: np.ndarray) -> np.ndarray:
        return _PAD_L + (x.astype(np.float64) - x0) / span * pw

    def py(y: np.ndarray) -> np.ndarray:
        return _PAD_T + (y1 - y) / (y1 - y0) * ph

    ticks = _nice_ticks(y0, y1)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for t in ticks:
        yy = float(py(np.array([t]))[0])
        parts.append(
            f'<line x1="{_PAD_L}" x2="{w - _PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{_PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{_fmt_tick(t, step)}</text>'
        )
    for i in range(6):
        xv = x0 + span * i // 5
        xx = float(px(np.array([xv]))[0])
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        parts.append(
            f'<text x="{xx:.1f}" y="{h - 8}" text-anchor="{anchor}">{_time_label(xv, span)}</text>'
        )
    parts.append(
        f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>'
    )
    for i, (label, x, y) in enumerate(series):
        if not x.size:
            continue
        color = COLORS[i % len(COLORS)] if not fill else "#d62728"
        if step and x.size > 1:
            x = np.repeat(x, 2)[1:]
            y = np.repeat(y, 2)[:-1]
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px(x), py(y), strict=True))
        if fill:
            zero = float(py(np.array([0.0]))[0])
            first, last = float(px(x[:1])[0]), float(px(x[-1:])[0])
            parts.append(f'<polygon points="{first:.1f},{zero:.1f} {pts} {last:.1f},{zero:.1f}" '
                         f'fill="{color}" fill-opacity="0.35" stroke="{color}" stroke-width="1"/>')  # fmt: skip
        else:
            parts.append(
                f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.3"/>'
            )
        if len(series) > 1:
            parts.append(f'<text x="{_PAD_L + 8}" y="{_PAD_T + 14 + 14 * i}" fill="{color}" '
                         f'style="fill:{color}">{escape(label)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(values: dict[str, np.ndarray], title: str, bins: int = 24) -> str:
    """Side-by-side histograms of a figure per group (shared bins), as inline SVG."""
    w, h = CHART_W, 240
    pw, ph = w - _PAD_L - _PAD_R, h - _PAD_T - _PAD_B
    finite = {k: v[np.isfinite(v)] for k, v in values.items()}
    allv = np.concatenate([v for v in finite.values()]) if finite else np.zeros(0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img">',
             f"<title>{escape(title)}</title>"]  # fmt: skip
    if allv.size == 0:
        parts.append(
            f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no operations</text></svg>'
        )
        return "".join(parts)
    lo, hi = float(allv.min()), float(allv.max())
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in finite.items()}
    top = max(int(c.max()) for c in counts.values()) or 1
    groups = len(counts)
    bw = pw / bins
    for t in _nice_ticks(0, top, 4):
        yy = _PAD_T + ph - t / top * ph
        parts.append(
            f'<line x1="{_PAD_L}" x2="{w - _PAD_R}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{_PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end">{t:g}</text>')
    for g, (label, c) in enumerate(counts.items()):
        color = COLORS[g % len(COLORS)]
        for i, n in enumerate(c):
            if not n:
                continue
            bh = n / top * ph
            x = _PAD_L + i * bw + g * bw / groups
            parts.append(f'<rect x="{x:.1f}" y="{_PAD_T + ph - bh:.1f}" width="{bw / groups:.1f}" '
                         f'height="{bh:.1f}" fill="{color}"><title>{escape(label)}: {n} in '
                         f"[{edges[i]:.2f}, {edges[i + 1]:.2f}) bps</title></rect>")  # fmt: skip
        parts.append(f'<text x="{w - _PAD_R - 8}" y="{_PAD_T + 14 + 14 * g}" text-anchor="end" '
                     f'style="fill:{color}">{escape(label)} ({int(c.sum())})</text>')  # fmt: skip
    for t in _nice_ticks(lo, hi, 8):
        xx = _PAD_L + (t - lo) / (hi - lo) * pw
        parts.append(f'<text x="{xx:.1f}" y="{h - 8}" text-anchor="middle">{t:g}</text>')
    parts.append(
        f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: list[str], rows: list[list[str]], table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table{ident}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render_report_html(
    summary: dict[str, Any],
    equity: pl.DataFrame,
    positions: pl.DataFrame,
    operations: pl.DataFrame,
) -> str:
    """``report.html``: the run's headline figures, charts, execution quality, inputs, config.

    Every number shown comes from ``summary`` or the result tables as written; cells carry
    ``data-key`` (and ``data-algo``) attributes so that a reader or a test can find them.
    """
    from backtest_pipeline.results.operations import TCA_KEYS, TCA_LABELS, format_tca_value

    ccy = str(summary.get("account_currency") or "")
    figures = {**(summary.get("pnl") or {}), **(summary.get("metrics") or {})}
    stats = summary.get("execution_stats") or {}
    cfg = summary.get("config") or {}
    run_id = str(summary.get("run_id", ""))
    cards = "".join(
        f'<div class="card"><div class="k">{escape(label)}</div>'
        f'<div class="v" data-key="{key}">{escape(format_figure(kind, figures.get(key), ccy))}'
        "</div></div>"
        for key, label, kind in HEADLINE
    )
    eq_ts = _epoch_ns(equity) if equity.height else np.zeros(0, dtype=np.int64)
    x_range = (int(eq_ts[0]), int(eq_ts[-1])) if eq_ts.size else None
    ex, ey = reduce_series(
        eq_ts, equity["portfolio_value"].to_numpy() if equity.height else np.zeros(0)
    )
    dx, dy = reduce_series(
        eq_ts, equity["drawdown_pct"].to_numpy() if equity.height else np.zeros(0)
    )
    equity_svg = line_svg([("portfolio value", ex, ey)], "equity", x_range=x_range)
    dd_svg = line_svg(
        [("drawdown %", dx, dy)], "drawdown %", height=150, fill=True, x_range=x_range
    )
    pos_series = []
    for key in sorted(positions["instrument_key"].unique().to_list()) if positions.height else []:
        p = positions.filter(pl.col("instrument_key") == key)
        px_, py_ = reduce_series(_epoch_ns(p), p["quantity"].to_numpy())
        pos_series.append((key, px_, py_))
    pos_svg = line_svg(pos_series, "positions", height=200, step=True, x_range=x_range)
    tca = stats.get("tca") or {}
    tca_rows = [
        [f"<td>{escape(algo)}</td>"]
        + [
            f'<td data-algo="{escape(algo)}" data-key="{k}">'
            f"{escape(format_tca_value(k, block.get(k)))}</td>"
            for k in TCA_KEYS
        ]
        for algo, block in tca.items()
    ]
    tca_html = _table(["algo", *(TCA_LABELS[k] for k in TCA_KEYS)], tca_rows, "tca")
    by_algo = {
        algo: operations.filter(pl.col("algo") == algo)["implementation_shortfall_bps"].to_numpy()
        for algo in sorted(operations["algo"].unique().to_list())
    } if operations.height else {}  # fmt: skip
    hist = histogram_svg(by_algo, "implementation shortfall (bps) by algo")
    status_rows = (
        operations.group_by("algo", "status").len().sort("algo", "status").rows()
        if operations.height
        else []
    )
    status_html = _table(
        ["algo", "status", "operations"],
        [[f"<td>{escape(a)}</td>", f"<td>{escape(s)}</td>", f"<td>{n:,}</td>"] for a, s, n in status_rows],
    )  # fmt: skip
    stat_keys = ("signals", "operations", "orders_submitted", "orders_filled", "orders_canceled",
                 "orders_rejected", "fills", "avg_slippage_bps", "ticks_processed", "days",
                 "bytes_read", "bytes_available", "wall_time_s", "engine_time_s",
                 "ticks_per_second", "peak_rss_mb")  # fmt: skip
    stats_html = _table(
        ["statistic", "value"],
        [[f"<td>{k}</td>", f'<td data-key="{k}">{escape(plain(stats.get(k)))}</td>'] for k in stat_keys if k in stats],
    )  # fmt: skip
    inputs = summary.get("inputs") or []
    inputs_html = _table(
        ["object", "generation", "bytes", "bytes read"],
        [
            [f"<td>gs://{escape(i['bucket'])}/{escape(i['path'])}</td>",
             f"<td>{escape(str(i.get('generation', '')))}</td>",
             f"<td>{int(i.get('bytes_total', 0)):,}</td>", f"<td>{int(i.get('bytes_read', 0)):,}</td>"]
            for i in inputs
        ],
    )  # fmt: skip
    market = stats.get("market_data") or {}
    md = ", ".join(f"{escape(k)}: {escape(v)}" for k, v in market.items()) or "—"
    title = f"Backtest {run_id}"
    sub = (
        f"{escape(str(cfg.get('name', '')))} · strategy {escape(str(cfg.get('strategy_id', '')))}"
        f" · {escape(str(summary.get('start', '')))} … {escape(str(summary.get('end', '')))}"
        f" · {escape(str(summary.get('status', '')))} · created {escape(str(summary.get('created_at', '')))}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><h1>{escape(title)}</h1><div class="sub">{sub}</div>
<div class="cards" id="headline">{cards}</div>
<h2>Equity and drawdown</h2>{equity_svg}{dd_svg}
<h2>Positions</h2>{pos_svg}
<h2>Execution quality by algo</h2>
<p class="note">Basis points, positive = a cost, against a paper trade at the arrival price
(market data: {md}). Means weighted by intended notional (target quantity × arrival price);
IS = implementation shortfall = fill ratio × (execution cost + fees) + opportunity cost.</p>
{tca_html}
<h3>Distribution of implementation shortfall</h3>{hist}
<h3>Operations by status</h3>{status_html}
<h2>Execution statistics</h2>{stats_html}
<h2>Inputs</h2><details><summary>{len(inputs)} objects read</summary>{inputs_html}</details>
<h2>Configuration</h2><pre id="config">{escape(json.dumps(cfg, indent=2, default=str))}</pre>
</body></html>
"""
