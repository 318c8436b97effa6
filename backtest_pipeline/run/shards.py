"""Time shards: a long run split into day ranges that run in parallel processes, stitched exactly.

One NautilusTrader engine is single-threaded (~170k ticks/s here), so a five-year run on one
engine is bounded by one core. A run's days are therefore split into consecutive shards, one
process each. Shard *k* cannot know the state the one-engine run has when it reaches its first
day, so it starts ``WARMUP_DAYS`` earlier from the run's initial state and speculates: with
target-position signals, two runs that pass through the same flat (or same) position with
nothing working forget where they came from. Before a shard's days are accepted, its state at
the boundary is compared with the state its predecessor actually ended with:

* equal positions (signed quantity and average open price of every open position) and, on both
  sides, no working order and no unfinished operation — then every order, fill and funding
  payment after the boundary is the same as the one-engine run's (ids are functions of the
  signal, not of the run's history);
* account balances differ by a constant offset; the only decisions they feed, the gross-leverage
  checks, are replayed with the true equity and must give the same outcome, word for word;
* on quotes and 10-level books, the venue's book, bid/ask and last price are re-stated by the
  data before our next order (each interval, and each jump of the operations feed, starts from
  the quote or snapshot in force), and queue positions belong to working orders, of which a
  quiet boundary has none. What the data does not re-state is liquidity our own fills consumed
  on a depth book (``depth_liquidity_consumption``): it lives until the next snapshot, so a
  boundary where a depth instrument's last fill is not followed by a snapshot read is not
  quiet (``BoundaryState.consumed_books``) and is re-run. So is one where the two sides last
  read different book rows for an instrument (``books_in_force``: a warm-up day without book
  rows for it), since that row is what the next day's first interval may start from.

A boundary that fails either test is not guessed at: the shard is merged into its predecessor
and that merged range is run again from the verified state, so the result is always the
one-engine run's (in the worst case, at the one-engine run's speed). Runs whose course depends
on more than this state are never sharded (`refusal`).

Two ways to run the same protocol: :func:`run_sharded` runs every shard as a process on this
machine (the CLI); :func:`run_one_shard` and :func:`stitch` are the same steps for an
orchestrator that runs each shard wherever it has a worker: a shard's result travels through the
results bucket (``layout.shards_prefix``), and the stitch reads them back, checks every boundary
and re-runs a failed one itself. Chunked backfills are sharded runs whose shards are the chunks
(:func:`plan_chunks`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.storage.ucs import RetryPolicy, UnifiedCloudService
from backtest_pipeline.trading.risk import PreTradeRisk

if TYPE_CHECKING:
    from backtest_pipeline.engine.output import EngineOutput
    from backtest_pipeline.run.inputs import ProgressFn, ReadSummary

log = logging.getLogger("backtest_pipeline.shards")

WARMUP_DAYS = 1
MIN_DAYS_PER_SHARD = 3  # below this, a warm-up day and a process start cost more than they save
# A sharded run's processes each stream at most this many days, warm-up included (more shards
# than processes at a time when the range is long), so a shard's memory is bounded by about two months whatever the
# run's length: a process that replays half a year grows by ~1 MB a day (its outputs and the
# heap's fragments), which set a year's peak at 1.6 times a 3-day run's. Each extra shard costs
# one process start and its warm-up days (~2 s in all here, ~2 % of a year's run).
MAX_DAYS_PER_SHARD = 61


@dataclass(frozen=True)
class ShardPlan:
    """The days one process streams: ``warmup`` leading days that only build state, then its own."""

    index: int
    days: tuple[date, ...]
    warmup: int
    final: bool
    # What each instrument's book is built from (``run/inputs.resolve_market_data``), resolved
    # once for the whole run so that every shard replays the same data types.
    market_data: tuple[tuple[str, str], ...] = ()

    @property
    def own_days(self) -> tuple[date, ...]:
        return self.days[self.warmup :]

    def label(self) -> str:
        own = self.own_days
        return f"shard {self.index} ({own[0]}..{own[-1]}, {self.warmup} warm-up day(s))"


def plan_shards(
    days: list[date],
    shards: int,
    warmup_days: int | None = None,
    max_days: int | None = None,
) -> list[ShardPlan]:
    """Split ``days`` into consecutive ranges of near-equal length, one process each.

    ``shards`` is how many processes run at a time: a range of more than ``shards × max_days``
    days (``MAX_DAYS_PER_SHARD`` by default) gets more, shorter shards, a multiple of
    ``shards``, so that no process streams more than ``max_days`` days (its warm-up included),
    which
    :func:`run_sharded` runs ``shards`` at a time. ``shards`` = 1 is the one-engine run and is
    never split.
    """
    warmup_days = WARMUP_DAYS if warmup_days is None else warmup_days
    max_days = MAX_DAYS_PER_SHARD if max_days is None else max_days
    if max_days < MIN_DAYS_PER_SHARD:
        raise ValueError(f"max_days must be at least {MIN_DAYS_PER_SHARD}, got {max_days}")
    n = max(1, min(shards, len(days) // MIN_DAYS_PER_SHARD))
    if n > 1 and max_days > warmup_days:
        # The fewest shards whose processes each stream at most ``max_days`` (warm-up included),
        # rounded up to whole rounds of ``shards`` processes: a last round with idle slots would
        # leave cores waiting on one shard at the end.
        need = -(-(len(days) - warmup_days) // (max_days - warmup_days))
        if need > n:
            n = -(-need // shards) * shards
    # Equal work per process: every shard but the first also streams its warm-up days, so the
    # first gets that many more days of its own.
    per = (len(days) + (n - 1) * warmup_days) / n
    bounds = [0] + [min(len(days), round(per + i * (per - warmup_days))) for i in range(n - 1)]
    bounds.append(len(days))
    plans = []
    for i in range(n):
        lo, hi = bounds[i], bounds[i + 1]
        w = min(warmup_days, lo)
        plans.append(ShardPlan(i, tuple(days[lo - w : hi]), w, final=i == n - 1))
    return plans


def plan_chunks(
    days: Sequence[date],
    chunks: Sequence[tuple[date, date]],
    warmup_days: int | None = None,
) -> list[ShardPlan]:
    """One shard per chunk ``(first, last)`` of ``days`` (a chunked backfill's calendar chunks).

    The chunks must cover ``days`` consecutively, each day once; every chunk but the first also
    streams the ``warmup_days`` before it, exactly as :func:`plan_shards` does.
    """
    warmup_days = WARMUP_DAYS if warmup_days is None else warmup_days
    days = list(days)
    own = [d for a, b in chunks for d in days if a <= d <= b]
    if not chunks or own != days:
        raise ValueError(
            f"chunks {[(str(a), str(b)) for a, b in chunks]} do not cover the days "
            f"{days[0] if days else None}..{days[-1] if days else None} consecutively, once each"
        )
    plans, lo = [], 0
    for i, (_a, b) in enumerate(chunks):
        hi = lo + sum(1 for d in days[lo:] if d <= b)
        w = min(warmup_days, lo)
        plans.append(ShardPlan(i, tuple(days[lo - w : hi]), w, final=i == len(chunks) - 1))
        lo = hi
    return plans


def with_market_data(plans: Sequence[ShardPlan], market_data: Mapping[str, str]) -> list[ShardPlan]:
    """``plans`` with the run's market data per instrument attached (each shard replays it)."""
    md = tuple(sorted(market_data.items()))
    return [dataclasses.replace(p, market_data=md) for p in plans]


def refusal(config: BacktestConfig, market_data: Mapping[str, str] | None = None) -> str | None:
    """Why this run's course depends on more than the hand-off state (None: it may be sharded).

    Quotes and depth books are no reason (see the module docstring); liquidity consumption on
    an L1 book (trades or quotes) is: 1.231 keeps a level's consumed size until a print or quote
    of another size at that price arrives, which no snapshot bounds, so no boundary could be
    shown to have forgotten it.
    """
    fm = config.fill_model
    if fm.prob_fill_on_limit not in (0.0, 1.0) or fm.prob_slippage not in (0.0, 1.0):
        return "the fill model draws random numbers, whose state no shard can know"
    if fm.liquidity_consumption:
        l1 = sorted(k for k in config.instruments if (market_data or {}).get(k) != "depth")
        if l1:
            return (
                f"liquidity_consumption on the L1 books of {l1} keeps per-level state in the "
                "venue's book that no data re-states"
            )
    spot = [k for k in config.instruments if k.split(":")[1] == "SPOT"]
    if spot:
        return f"spot instruments {spot} trade on cash accounts whose balances gate orders"
    return None


@dataclass
class ShardResult:
    plan: ShardPlan
    out: EngineOutput
    reads: ReadSummary
    wall_s: float
    peak_rss_mb: float
    process_s: float = 0.0  # from the parent's launch to the result read back
    # Wall-clock instants (epoch seconds) of that launch and read-back: when each process ran.
    launched_at: float = 0.0
    returned_at: float = 0.0


def _run_shard(
    config_json: str, root: str, retry: RetryPolicy, plan: ShardPlan, log_dir: str
) -> ShardResult:
    """One shard in its own (spawned) process: its own engine, its own log, its own reads."""
    from backtest_pipeline.engine.driver import run_engine
    from backtest_pipeline.run.inputs import Prefetcher, load_day

    t0 = time.perf_counter()
    config = BacktestConfig.model_validate_json(config_json)
    ucs = UnifiedCloudService(root, retry=retry)
    market_data: dict[str, Any] = dict(plan.market_data)
    loader = functools.partial(load_day, market_data=market_data)
    prefetch = Prefetcher(ucs, config, list(plan.days), None, loader)
    out = run_engine(
        config,
        iter(prefetch),
        log_dir=Path(log_dir),
        warmup_days=plan.warmup if plan.index > 0 else None,
        final=plan.final,
        market_data=market_data or None,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return ShardResult(plan, out, prefetch.summary(plan.own_days[0]), time.perf_counter() - t0, rss)


class ShardFailed(RuntimeError):
    """A shard's process failed; the message carries its error."""


def _die_with_parent() -> None:
    """In the shard process before exec: SIGKILL it when the process that started it dies.

    A worker killed in the middle of a shard must not leave its engine running on the machine
    (PR_SET_PDEATHSIG, Linux): the orchestrator runs the shard again elsewhere.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _launch(
    config: BacktestConfig,
    ucs: UnifiedCloudService,
    plan: ShardPlan,
    workdir: Path,
    die_with_parent: bool = False,
) -> ShardResult:
    """Run one shard in a fresh interpreter (``python -m`` this module) and collect its result.

    A fresh interpreter rather than ``multiprocessing``: spawn would re-import the caller's main
    module (breaking any script without a ``__main__`` guard), and fork would inherit a
    NautilusTrader logger that is initialised once per process. The request and the result
    travel as pickles in the run's private work directory.
    """
    d = workdir / f"shard-{plan.index}"
    d.mkdir(parents=True, exist_ok=True)
    req, res, err = d / "request.pkl", d / "result.pkl", d / "stderr.txt"
    res.unlink(missing_ok=True)
    t0, launched_at = time.perf_counter(), time.time()
    req.write_bytes(pickle.dumps((config.model_dump_json(), ucs.root, ucs.retry, plan, str(d))))
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backtest_pipeline.run.shards", str(req)],
            stdout=subprocess.DEVNULL,
            stderr=f,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None,
        )
        try:
            # Reaped with its own resource usage: the process's peak memory over its whole
            # life, the pickling of its outputs after the engine included.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not res.exists():
        tail = err.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ShardFailed(f"{plan.label()} failed (exit {proc.returncode}): {tail[0]}")
    # Unpickled from the file, not from its bytes read whole: the bytes of a long shard's
    # outputs would sit beside the frames they become.
    with res.open("rb") as f:
        outcome = pickle.load(f)
    if isinstance(outcome, BaseException):
        raise outcome
    outcome.process_s = time.perf_counter() - t0
    outcome.peak_rss_mb = max(outcome.peak_rss_mb, usage.ru_maxrss / 1024.0)
    outcome.launched_at, outcome.returned_at = launched_at, time.time()
    return outcome


def _merge(a: ShardPlan, b: ShardPlan) -> ShardPlan:
    return ShardPlan(a.index, a.days + b.own_days, a.warmup, b.final, a.market_data)


def _boundary_ok(
    prev: ShardResult, cur: ShardResult, prev_offset: dict[str, Decimal], risk: PreTradeRisk
) -> tuple[bool, dict[str, Decimal], str]:
    """Whether ``cur`` continues ``prev`` exactly; the balance offset of ``cur``; why not."""
    end, start = prev.out.end_state, cur.out.start_state
    assert end is not None and start is not None
    if not end.same_course(start):
        why = (
            f"positions {end.positions} vs {start.positions}, working orders "
            f"{len(end.open_orders)}/{len(start.open_orders)}, unfinished operations "
            f"{len(end.open_operations)}/{len(start.open_operations)}, depth books with our "
            f"consumed liquidity {list(end.consumed_books)}/{list(start.consumed_books)}"
        )
        if end.books_in_force != start.books_in_force:
            why += f", book rows in force {end.books_in_force} vs {start.books_in_force}"
        return False, {}, why
    offset = {v: d + prev_offset.get(v, Decimal(0)) for v, d in end.balance_offsets(start).items()}
    shift = float(sum(offset.values()))
    for intent, snap, reason in cur.out.risk_log:
        again = risk.check(intent, dataclasses.replace(snap, equity=snap.equity + shift))
        if again != reason:
            return False, {}, f"a leverage check turns with the true equity: {reason!r} → {again!r}"
    return True, offset, ""


def run_sharded(
    config: BacktestConfig,
    plans: list[ShardPlan],
    ucs: UnifiedCloudService,
    workdir: Path,
    progress: ProgressFn | None = None,
    parallel: int | None = None,
) -> tuple[EngineOutput, ReadSummary]:
    """Run ``plans`` as processes, ``parallel`` at a time (default: all at once), in order.

    Any boundary that is not exact is merged and re-run.
    """
    results: dict[int, ShardResult] = {}
    workers = max(1, min(parallel or len(plans), len(plans)))
    # Threads only wait on the shard processes; each process runs one engine. The pool starts
    # the shards in plan order, so a long run's early shards finish (and are checked) first.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool:
        futures = {p.index: pool.submit(_launch, config, ucs, p, workdir) for p in plans}
        for i, fut in futures.items():
            results[i] = fut.result()
            if progress:
                progress("shard", len(results), len(plans), {"shard": results[i].plan.label()})

    def rerun(merged: ShardPlan) -> ShardResult:
        res = _launch(config, ucs, merged, workdir)
        if progress:
            progress("shard", len(plans), len(plans), {"shard": res.plan.label()})
        return res

    ordered, offsets, merges = _settle(config, results, rerun)
    _join_logs(workdir, ordered)
    return _stitch(config, ordered, offsets, merges)


def _settle(
    config: BacktestConfig,
    results: dict[int, ShardResult],
    rerun: Callable[[ShardPlan], ShardResult],
) -> tuple[list[ShardResult], dict[str, Decimal], list[str]]:
    """Check every boundary in order; the first one that is not exact is merged and re-run.

    Repeated until every boundary holds: the shards in order, the balance offset of the last
    one, and why each merged boundary was not exact.
    """
    risk = PreTradeRisk(config.risk, config.account_currency)
    merges: list[str] = []
    while True:
        ordered = [results[i] for i in sorted(results)]
        offsets: dict[str, Decimal] = {}
        for prev, cur in zip(ordered, ordered[1:], strict=False):
            ok, offsets, why = _boundary_ok(prev, cur, offsets, risk)
            if not ok:
                merged = _merge(prev.plan, cur.plan)
                merges.append(f"{cur.plan.own_days[0]}: {why}")
                log.info("boundary %s not exact (%s): re-running %s",
                         cur.plan.own_days[0], why, merged.label())  # fmt: skip
                del results[cur.plan.index]
                results[merged.index] = rerun(merged)
                break
        else:
            return ordered, offsets, merges


# ---- the same protocol as steps of an orchestrator ------------------------------------------


def run_one_shard(
    config: BacktestConfig,
    ucs: UnifiedCloudService,
    plan: ShardPlan,
    run_id: str,
    attempt: str,
) -> str:
    """Run one shard in a fresh local process and store its result in the results bucket.

    Called by a step on any worker: nothing it produces stays on that worker's disk. The shard's
    process dies with its caller (a killed worker leaves no engine behind). Returns the stored
    result's path (``layout.shard_result_path``); the stitch reads it from there.
    """
    results = layout.target("results")
    with tempfile.TemporaryDirectory(prefix=f"shard-{run_id}-{plan.index}-") as tmp:
        res = _launch(config, ucs, plan, Path(tmp), die_with_parent=True)
        part = Path(tmp) / f"shard-{plan.index}" / "execution.log"
        log_text = part.read_text(errors="replace") if part.exists() else ""
    log_path = layout.shard_result_path(run_id, attempt, plan.index, "execution.log")
    ucs.upload_to_gcs_sync(results, log_path, log_text, format="text")
    path = layout.shard_result_path(run_id, attempt, plan.index, "result.pkl")
    # The result last: its presence vouches for the log beside it.
    ucs.upload_to_gcs_sync(results, path, pickle.dumps(res), format="bytes")
    return path


def stitch(
    config: BacktestConfig,
    ucs: UnifiedCloudService,
    stored: Sequence[tuple[ShardPlan, str]],
    run_id: str,
    workdir: Path,
) -> tuple[EngineOutput, ReadSummary]:
    """Read the stored shard results, check every boundary, re-run any that fails here.

    ``stored``: each shard's plan and the attempt that stored its result (a re-executed run
    reuses the shards its parent completed). The exactness check is :func:`run_sharded`'s: a
    boundary that is not exact is merged with its predecessor and that range re-run (in a local
    process) from the verified state. The shards' logs are joined into ``workdir/execution.log``.
    """
    target = layout.target("results")
    results: dict[int, ShardResult] = {}
    for p, attempt in sorted(stored, key=lambda s: s[0].index):
        path = layout.shard_result_path(run_id, attempt, p.index, "result.pkl")
        try:
            res = pickle.loads(ucs.download_bytes_sync(target, path))
        except Exception as exc:
            raise ShardFailed(f"{p.label()}: no stored result at {ucs.uri(target, path)}") from exc
        if not isinstance(res, ShardResult) or res.plan != p:
            raise ShardFailed(f"{p.label()}: {ucs.uri(target, path)} holds another shard's result")
        results[p.index] = res
        d = workdir / f"shard-{p.index}"
        d.mkdir(parents=True, exist_ok=True)
        log_path = layout.shard_result_path(run_id, attempt, p.index, "execution.log")
        if ucs.exists_sync(target, log_path):
            text = ucs.download_from_gcs_sync(target, log_path, format="text")
            (d / "execution.log").write_text(text, encoding="utf-8")
    ordered, offsets, merges = _settle(
        config, results, lambda merged: _launch(config, ucs, merged, workdir)
    )
    _join_logs(workdir, ordered)
    return _stitch(config, ordered, offsets, merges)


def discard(ucs: UnifiedCloudService, run_id: str, attempts: Sequence[str]) -> None:
    """Remove the stored shard objects of ``attempts`` once the run's results are written."""
    target = layout.target("results")
    for attempt in sorted(set(attempts)):
        for path in ucs.list_files_sync(target, layout.shards_prefix(run_id, attempt)):
            ucs.delete_sync(target, path)


def _join_logs(workdir: Path, shards: list[ShardResult]) -> None:
    """One ``execution.log`` for the run, each shard's part under its own heading."""
    with (workdir / "execution.log").open("w", encoding="utf-8") as f:
        for r in shards:
            part = workdir / f"shard-{r.plan.index}" / "execution.log"
            f.write(f"===== {r.plan.label()} =====\n")
            if part.exists():
                # Streamed in blocks (a shard's log of half a year is ~0.25 GB): the same text
                # as reading it whole, without holding it.
                with part.open(errors="replace") as src:
                    shutil.copyfileobj(src, f, 1 << 20)


def _stitch(
    config: BacktestConfig,
    shards: list[ShardResult],
    offsets: dict[str, Decimal],
    merges: list[str],
) -> tuple[EngineOutput, ReadSummary]:
    from backtest_pipeline.engine.output import EngineOutput, avg_slippage_bps
    from backtest_pipeline.run.inputs import ReadSummary

    outs = [r.out for r in shards]
    last = outs[-1]
    stats: dict[str, Any] = {}
    for key in last.stats:
        values = [o.stats[key] for o in outs]
        if key == "avg_slippage_bps":
            stats[key] = avg_slippage_bps([t for o in outs for t in o.slippage_terms])
        elif all(isinstance(v, int | float) for v in values):
            stats[key] = sum(values)
        else:
            stats[key] = values[-1]
    stats["peak_rss_mb_shards"] = max(r.peak_rss_mb for r in shards)
    t0 = min(r.launched_at for r in shards)
    stats["shards"] = {
        "count": len(shards),
        "warmup_days": max(r.plan.warmup for r in shards),
        "merged_boundaries": merges,
        "wall_time_s": [round(r.wall_s, 3) for r in shards],
        "process_time_s": [round(r.process_s, 3) for r in shards],
        # When each shard's process ran, in seconds from the first launch (a long run's shards
        # run a few at a time; a stitched run's shards may have run anywhere, in any order).
        "process_spans_s": [
            [round(r.launched_at - t0, 3), round(r.returned_at - t0, 3)] for r in shards
        ],
    }
    balances = {v: b + float(offsets.get(v, 0)) for v, b in last.final_balances.items()}
    out = EngineOutput(
        orders=pl.concat([o.orders for o in outs]),
        order_status_history=pl.concat([o.order_status_history for o in outs]),
        fills=pl.concat([o.fills for o in outs]),
        funding=pl.concat([o.funding for o in outs]),
        marks=pl.concat([o.marks for o in outs]),
        operations=pl.concat([o.operations for o in outs]),
        stats=stats,
        final_balances=balances,
        market_refs=pl.concat([o.market_refs for o in outs]),
        market_data=dict(sorted({k: v for o in outs for k, v in o.market_data.items()}.items())),
        intervals={
            k: v for r in shards for k, v in r.out.intervals.items() if k in r.plan.own_days
        },
        engine_order_ids=sorted({i for o in outs for i in o.engine_order_ids}),
        slippage_terms=[t for o in outs for t in o.slippage_terms],
    )
    reads = ReadSummary(
        inputs=[i for r in shards for i in r.reads.inputs],
        intervals={k: v for r in shards for k, v in r.reads.intervals.items()},
        read_time_s=sum(r.reads.read_time_s for r in shards),
        margin_init={k: v for r in shards for k, v in r.reads.margin_init.items()},
    )
    return out, reads


def _main(request: str) -> int:
    """Entry point of a shard process: read the request, run, write the result (or the error)."""
    req = Path(request)
    config_json, root, retry, plan, log_dir = pickle.loads(req.read_bytes())
    try:
        outcome: Any = _run_shard(config_json, root, retry, plan, log_dir)
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        outcome = exc
    tmp = req.with_name("result.tmp")
    # Pickled into the file as it is made, not into bytes first (a long shard's outputs would be
    # held twice at its end, its peak).
    try:
        with tmp.open("wb") as f:
            pickle.dump(outcome, f, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an unpicklable error still reaches the parent
        tmp.write_bytes(
            pickle.dumps(ShardFailed(f"{plan.label()}: {type(outcome).__name__}: {exc}"))
        )
    tmp.replace(req.with_name("result.pkl"))
    return 0


if __name__ == "__main__":
    # Through the importable module, so what is pickled names its classes, not ``__main__``'s.
    from backtest_pipeline.run import shards as _shards

    raise SystemExit(_shards._main(sys.argv[1]))
