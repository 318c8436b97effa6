"""The `backtest` command line: sample data, importers, single runs, the demo and the benchmark."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backtest_pipeline import layout

app = typer.Typer(
    help="Tick-level crypto execution backtests on NautilusTrader, with data behind UCS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(help="Bring external data into the storage layout.", no_args_is_help=True)
app.add_typer(import_app, name="import")
console = Console()
err = Console(stderr=True)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object (the summary, the figures) instead")
]
RootOpt = Annotated[
    str | None,
    typer.Option(
        "--root",
        help="Storage root: a path or file:///abs (local) or gs:// (GCS; emulator "
        "when STORAGE_EMULATOR_HOST is set). Default: $BACKTEST_STORAGE_ROOT or ./data.",
    ),
]
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _ucs(root: str | None):  # type: ignore[no-untyped-def]
    from backtest_pipeline.storage.ucs import UnifiedCloudService

    return UnifiedCloudService(root)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _parse_date(value: str, what: str) -> date:
    try:
        return layout.parse_day(value)
    except layout.LayoutError as exc:
        _fail(f"{what}: {exc}", 2)
        raise AssertionError from exc


@app.command("sample-data")
def sample_data(
    root: RootOpt = None,
    start: Annotated[str, typer.Option(help="First UTC day, YYYY-MM-DD")] = "2024-01-01",
    days: Annotated[int, typer.Option(min=1, max=3660)] = 3,
    instruments: Annotated[
        list[str] | None,
        typer.Option("--instruments", help="Instrument keys to generate trades for"),
    ] = None,
    trades_per_day: Annotated[int, typer.Option(min=100)] = 2_000_000,
    signal_coverage: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.10,
    seed: Annotated[int, typer.Option()] = 0,
    strategy_id: Annotated[str, typer.Option()] = "demo-strategy",
) -> None:
    """Generate realistic sample instruments, trades, funding and signals into the layout."""
    from backtest_pipeline.data.sample import generate_sample_data

    ucs = _ucs(root)
    t0 = time.perf_counter()
    try:
        report = generate_sample_data(
            ucs,
            _parse_date(start, "--start"),
            days,
            instruments or None,
            trades_per_day=trades_per_day,
            signal_coverage=signal_coverage,
            seed=seed,
            strategy_id=strategy_id,
        )
    except (ValueError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
    console.print(f"wrote sample data to {ucs.root} in {time.perf_counter() - t0:.1f} s")
    console.print_json(json.dumps(report, default=str))


@import_app.command("tardis")
def import_tardis_cmd(files: list[Path], root: RootOpt = None) -> None:
    """Tardis.dev `trades` CSV files (plain or .gz) → canonical day files."""
    from backtest_pipeline.data.importers import import_tardis

    _run_import(lambda: import_tardis(_ucs(root), files))


@import_app.command("binance")
def import_binance_cmd(
    files: list[Path],
    instrument: Annotated[
        str, typer.Option("--instrument", help="Instrument key, e.g. BINANCE:SPOT:BTC-USDT")
    ],
    root: RootOpt = None,
) -> None:
    """Binance public-data `trades` / `aggTrades` CSV or ZIP → canonical day files."""
    from backtest_pipeline.data.importers import import_binance

    _run_import(
        lambda: import_binance(_ucs(root), files, layout.validate_instrument_key(instrument))
    )


@import_app.command("signals")
def import_signals_cmd(
    file: Path,
    strategy: Annotated[str, typer.Option("--strategy", help="Strategy id the signals belong to")],
    root: RootOpt = None,
) -> None:
    """A strategy's signals (CSV or Parquet, signals schema) → validated day files."""
    from backtest_pipeline.data.importers import import_signals

    _run_import(lambda: import_signals(_ucs(root), file, layout.validate_strategy_id(strategy)))


def _run_import(fn: Any) -> None:
    try:
        report = fn()
    except (ValueError, FileNotFoundError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
    console.print_json(json.dumps(report, default=str))


def _print_summary(summary: dict[str, Any], locations: dict[str, str]) -> None:
    pnl, mets, st = summary["pnl"], summary["metrics"], summary["execution_stats"]
    t = Table(title=f"run {summary['run_id']} — {summary['status']}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v")

    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:,.4f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    sections = (
        (pnl, "net_pnl gross_pnl total_fees funding_paid"),
        (mets, "sharpe_ratio sortino_ratio max_drawdown_pct win_rate profit_factor total_trades"),
        (
            st,
            "signals operations orders_submitted orders_filled orders_canceled orders_rejected "
            "fills avg_slippage_bps ticks_processed days",
        ),
    )
    for values, keys in sections:
        for k in keys.split():
            t.add_row(k, fmt(values.get(k)))
    t.add_row("bytes read / available", f"{st['bytes_read']:,} / {st['bytes_available']:,}")
    t.add_row(
        "wall time",
        f"{st['wall_time_s']:.2f} s (engine {st.get('engine_time_s', 0):.2f} s, "
        f"{st.get('ticks_per_second', 0):,.0f} ticks/s)",
    )
    t.add_row("peak RSS", f"{st['peak_rss_mb']:,.0f} MB")
    console.print(t)
    _print_tca(st.get("tca") or {})
    console.print("[bold]results:[/]")
    for name, uri in locations.items():
        console.print(f"  {name:22s} {uri}")
    if "report.html" in locations:
        console.print(f"[bold]report:[/] {locations['report.html']}", soft_wrap=True)


def _print_tca(tca: dict[str, dict[str, Any]]) -> None:
    """Execution quality by algo (``execution_stats.tca``), as the report and Dagster show it."""
    from backtest_pipeline.results.operations import TCA_KEYS, TCA_LABELS, format_tca_value

    if not tca:
        return
    t = Table(
        title="execution quality by algo (bps, + = cost; IS = implementation shortfall)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    t.add_column("algo", style="bold", no_wrap=True)
    for k in TCA_KEYS:
        t.add_column(TCA_LABELS[k], justify="right", no_wrap=True)
    for algo, block in tca.items():
        t.add_row(algo, *(format_tca_value(k, block.get(k)) for k in TCA_KEYS))
    console.print(t)


def _run(
    config_path: Path,
    start: str,
    end: str,
    root: str | None,
    run_id: str | None,
    full_day: bool,
    as_json: bool,
    shards: int = 1,
) -> None:
    from backtest_pipeline.config import BacktestConfig
    from backtest_pipeline.run.runner import BacktestFailed, run_backtest

    try:
        config = BacktestConfig.from_yaml(config_path)
        if full_day:
            config = config.model_copy(update={"full_day": True})
        s, e = _parse_date(start, "--start"), _parse_date(end, "--end")
        if e < s:
            _fail(f"--end {e} is before --start {s}", 2)
        if run_id:
            layout.validate_run_id(run_id)
    except (ValueError, FileNotFoundError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
    ucs = _ucs(root)
    n_days = (e - s).days + 1
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
        disable=not sys.stderr.isatty() and as_json,
    ) as progress:
        task = progress.add_task("days", total=n_days, info="")
        ticks = [0]

        def on_progress(kind: str, i: int, n: int, info: dict[str, Any]) -> None:
            ticks[0] += int(info.get("ticks", 0))
            if kind == "shard":  # shards report as they finish, each a share of the days
                progress.update(task, completed=n_days * i // n, info=str(info.get("shard", "")))
                return
            progress.update(
                task, completed=i - 1, info=f"{info.get('day', '')} · {ticks[0]:,} ticks"
            )

        try:
            result = run_backtest(
                config, s, e, ucs=ucs, run_id=run_id, progress=on_progress,
                shards=shards or os.cpu_count() or 1,
            )  # fmt: skip
        except BacktestFailed as exc:
            progress.stop()
            _fail(f"run {exc.run_id} FAILED: {exc}\n  summary: {exc.summary_uri}")
        progress.update(task, completed=n_days)
    if as_json:
        print(json.dumps(result.summary, default=str))
    else:
        _print_summary(result.summary, result.locations)


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", help="Run configuration YAML (see configs/)")],
    start: Annotated[str, typer.Option(help="First UTC day")],
    end: Annotated[str, typer.Option(help="Last UTC day (inclusive)")],
    root: RootOpt = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Default: derived from config + dates")
    ] = None,
    full_day: Annotated[
        bool, typer.Option("--full-day", help="Read whole days, not only signal intervals")
    ] = False,
    as_json: JsonOpt = False,
    shards: Annotated[
        int,
        typer.Option(
            help="Time shards run in parallel processes for long runs (0: one per CPU core; "
            "results are identical to one engine's)",
            min=0,
        ),
    ] = 0,
) -> None:
    """Run one backtest over a range of days and print where the results are."""
    _run(config, start, end, root, run_id, full_day, as_json, shards)


@app.command("demo")
def demo_cmd(
    root: RootOpt = None,
    trades_per_day: Annotated[int, typer.Option(min=1000)] = 2_000_000,
) -> None:
    """Generate 3 days of sample data (if absent) and backtest the demo config over them."""
    from backtest_pipeline.data.sample import generate_sample_data

    ucs = _ucs(root)
    start = date(2024, 1, 1)
    days = layout.days_between(start, date(2024, 1, 3))
    missing = [
        d
        for d in days
        if not ucs.exists_sync(layout.target("instruments"), layout.instruments_path(d))
    ]
    if missing:
        console.print(f"generating 3 days of sample data into {ucs.root} …")
        t0 = time.perf_counter()
        generate_sample_data(ucs, start, 3, None, trades_per_day=trades_per_day, seed=0)
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    else:
        console.print(f"using the sample data already in {ucs.root}")
    _run(DEMO_CONFIG, days[0].isoformat(), days[-1].isoformat(), root, None, False, False)


@app.command("bench")
def bench_cmd(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small workload (minutes, not the reference)")
    ] = False,
    as_json: JsonOpt = False,
    reps: Annotated[
        int | None, typer.Option(min=1, help="Repetitions per figure (median; default 3, quick 1)")
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", help="Parts to skip: gcs, full, dagster, naive")
    ] = None,
) -> None:
    """Measure the targets of docs/targets.md side by side (see benchmarks/README.md)."""
    from benchmarks.bench import figures, format_table, run_bench

    out = run_bench(
        quick=quick, reps=reps, log=lambda m: err.print(f"[dim]{m}[/]"), skip=set(skip or [])
    )
    err.print(format_table(out))
    if as_json:
        print(json.dumps(figures(out)))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
