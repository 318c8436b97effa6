"""The `backtest` command line: sample data, importers, single runs, the demo and the benchmark."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Final

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
# What each `market_data` value means to a reader of the summary.
MARKET_DATA_LABELS: Final = {
    "depth": "depth (10-level book + trades, L2_MBP)",
    "quotes": "quotes (top of book + trades, L1_MBP)",
    "trades": "trades (L1_MBP book moved by each trade)",
}
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _ucs(root: str | None):  # type: ignore[no-untyped-def]
    from backtest_pipeline.storage.ucs import UnifiedCloudService

    return UnifiedCloudService(root)


def _fail(message: str, code: int = 1) -> None:
    # Not wrapped: an error names paths and keys that a user copies, and logs grep whole lines.
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
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
    book: Annotated[
        bool,
        typer.Option(
            "--book",
            help="Also write quotes and a 10-level book built from the trades (trades at the "
            "touch, varying spread, depth a large order walks); other files are unchanged",
        ),
    ] = False,
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
            book=book,
        )
    except (ValueError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
    console.print(f"wrote sample data to {ucs.root} in {time.perf_counter() - t0:.1f} s")
    console.print_json(json.dumps(report, default=str))


BookIntervalOpt = Annotated[
    int,
    typer.Option(
        "--book-interval-ms",
        min=0,
        help="Rebuilt books are written as one 10-level snapshot per this many ms at most "
        "(the last state of each interval; 0 = after every update message)",
    ),
]


@import_app.command("tardis")
def import_tardis_cmd(
    files: list[Path],
    root: RootOpt = None,
    book_interval_ms: BookIntervalOpt = 100,
) -> None:
    """Tardis.dev CSVs (plain or .gz): `trades`, `quotes`, `book_snapshot_N`, `incremental_book_L2`.

    The type of each file is read from its header.
    """
    from backtest_pipeline.data.importers import import_tardis_files

    _run_import(lambda: import_tardis_files(_ucs(root), files, book_interval_ms=book_interval_ms))


@import_app.command("binance")
def import_binance_cmd(
    files: list[Path],
    instrument: Annotated[
        str, typer.Option("--instrument", help="Instrument key, e.g. BINANCE:SPOT:BTC-USDT")
    ],
    root: RootOpt = None,
) -> None:
    """Binance public-data `trades` / `aggTrades` / `bookTicker` CSV or ZIP → canonical day files."""
    from backtest_pipeline.data.importers import import_binance_files

    _run_import(
        lambda: import_binance_files(_ucs(root), files, layout.validate_instrument_key(instrument))
    )


@import_app.command("capture")
def import_capture_cmd(
    files: list[Path],
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument",
            help="Instrument key; default: from the capture's symbol (USD-M or spot by its "
            "depth messages)",
        ),
    ] = None,
    root: RootOpt = None,
    book_interval_ms: BookIntervalOpt = 100,
) -> None:
    """Binance websocket captures (`local_ns {json}` a line, plain or .gz) → trades, quotes, book.

    Files of one call are one stream, in the order given. Depth sequence gaps are reported;
    no book is written from a gap until the next REST snapshot line.
    """
    from backtest_pipeline.data.importers import import_capture

    _run_import(
        lambda: import_capture(_ucs(root), files, instrument, book_interval_ms=book_interval_ms)
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

    from backtest_pipeline.results.formatting import plain as fmt

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
    t.add_row("bytes read (all inputs)", f"{st['bytes_read']:,}")
    # Per tick data type, over the objects the run touched: what signal pruning saved.
    ticks: dict[str, list[int]] = {}
    for i in summary.get("inputs") or []:
        for kind in layout.TICK_DATA_TYPES:
            if f"/data_type-{kind}/" in i["path"]:
                acc = ticks.setdefault(kind, [0, 0])
                acc[0] += int(i["bytes_read"])
                acc[1] += int(i["bytes_total"])
    for kind, (got, total) in ticks.items():
        share = f" ({got / total:.1%})" if total else ""
        t.add_row(f"{kind} read / stored", f"{got / 1e6:,.1f} / {total / 1e6:,.1f} MB{share}")
    t.add_row(
        "wall time",
        f"{st['wall_time_s']:.2f} s (engine {st.get('engine_time_s', 0):.2f} s, "
        f"{st.get('ticks_per_second', 0):,.0f} ticks/s)",
    )
    t.add_row("peak RSS", f"{st['peak_rss_mb']:,.0f} MB")
    console.print(t)
    # Which data each instrument's orders met: the same configuration fills differently on each.
    for key, kind in (st.get("market_data") or {}).items():
        console.print(f"[bold]market data:[/] {key}: {MARKET_DATA_LABELS.get(kind, kind)}",
                      soft_wrap=True)  # fmt: skip
    _print_tca(st.get("tca") or {})
    console.print("[bold]results:[/]")
    for name, uri in locations.items():
        console.print(f"  {name:22s} {uri}", soft_wrap=True)
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
            help="Time-shard processes run at a time for long runs (0: one per CPU core; "
            "1: one engine; no shard streams more than 61 days, so a long range has more "
            "shards than this; results are identical to one engine's)",
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
    trades: Annotated[
        bool,
        typer.Option(
            "--trades",
            help="Trades only, no quotes or book: sample data into ./data-trades unless --root "
            "says otherwise, run on the trades as before books existed",
        ),
    ] = False,
) -> None:
    """Generate 3 days of sample data (if absent) and backtest the demo config over them.

    By default the data holds trades, quotes and a 10-level book, and the configuration's
    ``market_data: auto`` runs it on the book (depth).
    """
    from backtest_pipeline.data.sample import generate_sample_data

    # The trade-only demo has a root of its own: `market_data: auto` runs on the richest data
    # present, so one root holding a book would run both demos on depth.
    if trades and root is None and not os.environ.get("BACKTEST_STORAGE_ROOT"):
        root = "data-trades"
    ucs = _ucs(root)
    start = date(2024, 1, 1)
    days = layout.days_between(start, date(2024, 1, 3))
    key = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
    t_ticks = layout.target("ticks")

    def book_held(d: date) -> list[bool]:
        paths = (layout.quotes_path(d, key), layout.book_depth10_path(d, key))
        return [ucs.exists_sync(t_ticks, p) for p in paths]

    if trades:
        booked = [d.isoformat() for d in days if any(book_held(d))]
        if booked:
            _fail(
                f"demo --trades: {ucs.root} holds quotes or a book of {key} on "
                f"{', '.join(booked)}, so `market_data: auto` would not run on trades; give "
                "--root a directory without them (the default is ./data-trades)",
                2,
            )
    missing = [
        d
        for d in days
        if not ucs.exists_sync(layout.target("instruments"), layout.instruments_path(d))
        or (not trades and not all(book_held(d)))
    ]
    if missing:
        what = "sample trades" if trades else "sample trades, quotes and a 10-level book"
        console.print(f"generating 3 days of {what} into {ucs.root} …", soft_wrap=True)
        t0 = time.perf_counter()
        generate_sample_data(
            ucs, start, 3, None, trades_per_day=trades_per_day, seed=0, book=not trades
        )
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    else:
        console.print(f"using the sample data already in {ucs.root}", soft_wrap=True)
    how = "its trades" if trades else "its 10-level book and trades (market_data: auto → depth)"
    console.print(f"running {DEMO_CONFIG.name} on {key}: {how}", soft_wrap=True)
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
        list[str] | None,
        typer.Option(
            "--skip",
            help="Parts to skip (repeat or comma-separate): gcs, full, long, dagster, naive, book",
        ),
    ] = None,
    year: Annotated[
        bool,
        typer.Option(
            "--year",
            help="Measure a whole year instead: 365 days of the reference workload (generated "
            "once, ~17 GB, cached and resumable) run as `backtest run` runs a long range",
        ),
    ] = False,
    year_days: Annotated[
        int, typer.Option(min=3, help="Days of the --year run (the measurement is 365)")
    ] = 365,
    year_trades_per_day: Annotated[
        int | None,
        typer.Option(min=100, help="Trades per day of the --year run (default: the reference)"),
    ] = None,
) -> None:
    """Measure the targets of docs/targets.md side by side (see benchmarks/README.md)."""
    from benchmarks.bench import SKIPPABLE, figures, format_table, run_bench, run_year, year_figures

    if year:
        if quick or skip or reps is not None:
            _fail("--year runs one measured year: --quick, --skip and --reps do not apply", 2)
        yout = run_year(year_days, year_trades_per_day, log=lambda m: err.print(f"[dim]{m}[/]"))
        err.print(format_table(yout, year=True))
        if as_json:
            print(json.dumps(year_figures(yout)))
        return
    parts = {p.strip() for s in skip or [] for p in s.split(",") if p.strip()}
    unknown = sorted(parts - set(SKIPPABLE))
    if unknown:
        _fail(f"--skip {', '.join(unknown)}: unknown part (known: {', '.join(SKIPPABLE)})", 2)
    out = run_bench(quick=quick, reps=reps, log=lambda m: err.print(f"[dim]{m}[/]"), skip=parts)
    err.print(format_table(out))
    if as_json:
        print(json.dumps(figures(out)))


@app.command("sweep")
def sweep_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", help="Base run configuration YAML (see configs/)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="KEY=V1,V2,… over a dotted key, e.g. risk.max_order_quantity=1,5"
        ),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Sweep YAML: grid, variants, config, start, end")
    ] = None,
    start: Annotated[str | None, typer.Option(help="First UTC day")] = None,
    end: Annotated[str | None, typer.Option(help="Last UTC day (inclusive)")] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Batch id (default: derived from the sweep)")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Variants run at once in processes (0: one per CPU core)")
    ] = 0,
    dagster: Annotated[
        bool, typer.Option("--dagster", help="Queue the variants on the Dagster instance")
    ] = False,
    configs_out: Annotated[
        Path | None,
        typer.Option(
            "--configs-out", help="--dagster: where variant YAMLs go (default .sweeps/BATCH)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run variants already done")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan")] = False,
    root: RootOpt = None,
) -> None:
    """Run variants of one configuration over the same days, tagged with one batch id."""
    from backtest_pipeline.config import BacktestConfig
    from backtest_pipeline.sweep import grid as grid_mod
    from backtest_pipeline.sweep import runs

    try:
        spec = grid_mod.read_sweep_file(file) if file else {"grid": {}, "variants": []}
        base_path = config or (Path(str(spec["config"])) if spec.get("config") else None)
        if base_path is None:
            _fail("no base configuration: give --config or `config:` in the sweep file", 2)
            return
        if file and not base_path.is_absolute() and not base_path.exists():
            base_path = file.parent / base_path
        grid = dict(spec["grid"])
        for opt in set_ or []:
            key, values = grid_mod.parse_set(opt)
            grid[key] = values
        s, e = start or spec.get("start"), end or spec.get("end")
        if s is None or e is None:
            _fail("give --start and --end (or start:/end: in the sweep file)", 2)
        sweep = grid_mod.build_sweep(
            BacktestConfig.from_yaml(base_path),
            _parse_date(str(s), "--start"),
            _parse_date(str(e), "--end"),
            grid,
            spec["variants"],
            batch or spec.get("batch"),
        )
    except (ValueError, FileNotFoundError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
        return
    t = Table(
        title=f"sweep {sweep.batch}: {len(sweep.variants)} variants, {sweep.start}..{sweep.end}"
    )
    for col in ("#", "variant", "run_id"):
        t.add_column(col)
    for v in sweep.variants:
        t.add_row(str(v.index), v.label, v.run_id)
    console.print(t)
    for dup, first in sweep.duplicates:
        console.print(f"[yellow]variant {dup} is the same configuration as {first}: run once[/]")
    if dry_run:
        return
    ucs = _ucs(root)
    if dagster:
        _sweep_on_dagster(ucs, sweep, configs_out, force)
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("variants", total=len(sweep.variants))

        def note(o: runs.Outcome) -> None:
            progress.advance(task)
            style = {"FAILED": "red", "SKIPPED": "dim"}.get(o.status, "green")
            progress.console.print(f"[{style}]{o.status:9s}[/] {o.run_id}  {o.label}  {o.detail}")

        outcomes = runs.run_local(ucs, sweep, workers=workers, force=force, on_outcome=note)
    failed = [o for o in outcomes if o.status == "FAILED"]
    counts = {k: sum(o.status == k for o in outcomes) for k in ("COMPLETED", "SKIPPED", "FAILED")}
    console.print(
        f"batch {sweep.batch}: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
    )
    console.print(f"compare them: backtest compare --batch {sweep.batch}")
    if failed:
        raise typer.Exit(1)


def _sweep_on_dagster(ucs: Any, sweep: Any, configs_out: Path | None, force: bool) -> None:
    """Queue the variants through ``launch`` (a subprocess: the library imports no Dagster)."""
    import subprocess

    from backtest_pipeline.sweep import runs

    if not os.environ.get("DAGSTER_HOME"):
        _fail("--dagster needs DAGSTER_HOME (the instance whose queue runs the variants)", 2)
    out_dir = (configs_out or Path(".sweeps") / sweep.batch).resolve()
    names = runs.write_variant_configs(sweep, out_dir)
    todo = [v for v in sweep.variants if force or not runs.unchanged(ucs, v, sweep)]
    for v in sweep.variants:
        if v not in todo:
            console.print(f"[dim]SKIPPED   {v.run_id}  {v.label}  results exist unchanged[/]")
    runs.write_manifest(ucs, sweep, "dagster")
    if not todo:
        console.print(f"batch {sweep.batch}: nothing to queue")
        return
    cmd = [
        sys.executable, "-m", "launch", "--configs", ",".join(names[v.run_id] for v in todo),
        "--configs-dir", str(out_dir), "--start", sweep.start.isoformat(),
        "--end", sweep.end.isoformat(), "--batch", sweep.batch, "--trigger", "sweep",
    ]  # fmt: skip
    env = {**os.environ, "BACKTEST_STORAGE_ROOT": ucs.root}
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        _fail(f"launch exited with {proc.returncode}; nothing more was queued", 1)
    console.print(f"queued {len(todo)} run(s) tagged backtest/batch={sweep.batch}")
    console.print(f"once they finish: backtest compare --batch {sweep.batch}")


@app.command("compare")
def compare_cmd(
    run_ids: Annotated[list[str] | None, typer.Argument(help="run_ids to compare")] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Compare the runs of a sweep's batch")
    ] = None,
    comparison_id: Annotated[
        str | None, typer.Option("--id", help="Comparison id (default: the batch, or cmp-HASH)")
    ] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank runs side by side and write comparisons/{id}/runs.parquet and comparison.html."""
    from backtest_pipeline.comparison import store
    from backtest_pipeline.comparison import table as cmp

    if bool(run_ids) == bool(batch):
        _fail("give either RUN_ID… or --batch NAME", 2)
    ucs = _ucs(root)
    try:
        if batch:
            comparison = cmp.batch_comparison(ucs, batch)
            if comparison_id:
                comparison = cmp.Comparison(
                    comparison_id, comparison.runs, comparison.differing_keys, comparison.equity
                )
        else:
            comparison = cmp.build_comparison(ucs, run_ids or [], comparison_id)
        locations = store.write_comparison(ucs, comparison)
    except (ValueError, layout.LayoutError) as exc:
        _fail(str(exc), 2)
        return
    if as_json:
        print(json.dumps({"comparison_id": comparison.comparison_id, "results": locations,
                          "runs": comparison.runs.to_dicts()}, default=str))  # fmt: skip
        return
    _print_comparison(comparison)
    console.print("[bold]comparison:[/]")
    for name, uri in locations.items():
        console.print(f"  {name:16s} {uri}")


def _short_label(diff_json: str) -> str:
    """``base_ms=5, max_order_quantity=1``: the last part of each differing key (the full keys
    are in runs.parquet and comparison.html), whole numbers without their ``.0``."""
    diff = json.loads(diff_json or "{}")

    def value(v: Any) -> str:
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    return ", ".join(f"{k.split('.')[-1]}={value(v)}" for k, v in diff.items()) or "(same)"


def _print_comparison(comparison: Any) -> None:
    from backtest_pipeline.comparison import html as fmt
    from backtest_pipeline.comparison.table import ALGOS, eq_column

    rows = comparison.runs.to_dicts()
    ranges = sorted({f"{r['start']}..{r['end']}" for r in rows if r["start"]})
    one_range = len(ranges) <= 1
    cols = (("net_pnl", "net PnL", fmt.money), ("sharpe_ratio", "Sharpe", fmt.num2),
            ("sortino_ratio", "Sortino", fmt.num2), ("max_drawdown_pct", "max DD", fmt.pct),
            ("total_trades", "trades", fmt.count))  # fmt: skip
    title = f"comparison {comparison.comparison_id} — ranked by net PnL"
    # The config differences are what a reader ranks by, so they get the width; run_ids (long,
    # alike) follow as a legend, which keeps the table readable in an 80-column terminal or log.
    t = Table(title=title + (f" — {ranges[0]}" if one_range and ranges else ""))
    t.add_column("#", justify="right", min_width=2, no_wrap=True)
    t.add_column("config differences", overflow="fold", min_width=20, ratio=1)
    if not one_range:
        t.add_column("range", no_wrap=True)
    for _, head, _ in cols:
        t.add_column(head, justify="right", no_wrap=True, min_width=len(head))
    for r in rows:
        label = _short_label(r["config_diff"]) or "(base)"
        if r["status"] != "COMPLETED":
            label = f"[red]{r['status']}[/] {label}"
        rng = [] if one_range else [f"{r['start']}..{r['end']}"]
        t.add_row(str(r["rank"]), label, *rng, *(f(r[c]) for c, _, f in cols))
    console.print(t)
    q = Table(title="execution quality by algo: fill ratio, shortfall mean / p90 (bps)")
    q.add_column("#", justify="right", min_width=2, no_wrap=True)
    for a in ALGOS:
        q.add_column(a, justify="right", no_wrap=True)
    for r in rows:
        cells = []
        for a in ALGOS:
            fr, mean, p90 = (r[eq_column(a, k)] for k in ("fill_ratio", "shortfall_mean_bps",
                                                         "shortfall_p90_bps"))  # fmt: skip
            cells.append(
                "—" if fr is None and mean is None
                else f"{'—' if fr is None else f'{100 * fr:.0f}%'} "
                f"{fmt.num2(mean)}/{fmt.num2(p90)}"
            )  # fmt: skip
        q.add_row(str(r["rank"]), *cells)
    console.print(q)
    for r in rows:
        console.print(f"  #{r['rank']:<3} {r['run_id']}", soft_wrap=True)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
