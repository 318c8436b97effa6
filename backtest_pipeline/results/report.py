"""Small renderings of a run for humans: the equity-curve PNG and flat metric dicts.

Kept out of the asset code so they are tested without Dagster; matplotlib runs on the Agg
backend (no display on servers or in the Dagster daemon).
"""

import base64
import io
from typing import Any

import polars as pl


def equity_png(equity: pl.DataFrame, title: str = "equity") -> bytes:
    """A small PNG of portfolio value (and drawdown) over time."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(6.4, 3.6), dpi=80, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        if equity.height:
            ts = (
                equity["ts_event"].cast(pl.Datetime("ns", "UTC")).to_list()
                if equity["ts_event"].dtype != pl.Datetime
                else equity["ts_event"].to_list()
            )
            ax1.plot(ts, equity["portfolio_value"].to_list(), lw=1.0, color="#1f77b4")
            ax2.fill_between(
                ts, equity["drawdown_pct"].to_list(), 0, color="#d62728", alpha=0.4, lw=0
            )
        ax1.set_title(title, fontsize=9)
        ax1.set_ylabel("portfolio", fontsize=8)
        ax2.set_ylabel("dd %", fontsize=8)
        for ax in (ax1, ax2):
            ax.tick_params(labelsize=7)
        fig.autofmt_xdate()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


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
