"""Wall time of one backtest on two Celery workers against the one-engine run, outputs compared.

The deployment of ``tests/test_distributed.py`` (deploy/celery/: Postgres instance, daemon, Redis,
two ``dagster-celery`` workers). The one-engine figure is ``run_backtest`` in this process (what
``backtest run`` does once NautilusTrader is imported); the two-worker figure runs from
``launch`` queueing the run to the run's SUCCESS in the instance (queue, run process, the plan,
two shard steps in parallel, the stitch and the result writing). Target: two-worker ≤ 1.2 ×
one-engine ÷ 2, with the four Parquet outputs byte-identical.

    uv run python -m benchmarks.distributed --days 20 --trades-per-day 1000000 --full-day
"""

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_distributed import digests, one_engine, running_cluster, submit, wait  # noqa: E402

from backtest_pipeline import layout  # noqa: E402
from backtest_pipeline.data.sample import generate_sample_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", default="2024-03-01")
    p.add_argument("--days", type=int, default=20)
    p.add_argument("--trades-per-day", type=int, default=1_000_000)
    p.add_argument("--full-day", action="store_true", help="stream every tick (engine-bound)")
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    start = date.fromisoformat(args.start)

    configs = Path(tempfile.mkdtemp(prefix="bench-configs-"))
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["name"], cfg["full_day"] = "bench_dist", bool(args.full_day)
    (configs / "bench_dist.yaml").write_text(yaml.safe_dump(cfg))

    def data(ucs):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        generate_sample_data(
            ucs, start, args.days, trades_per_day=args.trades_per_day, seed=args.seed
        )
        print(f"sample data: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    with running_cluster(data, {"BACKTEST_CONFIGS_DIR": str(configs)}) as c:
        bt_id, want, one_s = one_engine(c, start, args.days, "bench_dist")
        t0 = time.perf_counter()
        run_id = submit(start, args.days, "bench_dist", shards=2)
        status = wait(run_id, timeout_s=3600)
        two_s = time.perf_counter() - t0
        same = digests(c.ucs(), bt_id) == want
        summary = c.ucs().download_from_gcs_sync(
            layout.target("results"), layout.result_path(bt_id, "summary.json")
        )
    out = {
        "days": args.days,
        "trades_per_day": args.trades_per_day,
        "full_day": bool(args.full_day),
        "one_engine_s": round(one_s, 1),
        "two_workers_s": round(two_s, 1),
        "status": status.value,
        "outputs_identical": same,
        "ratio_two_workers_to_one_engine": round(two_s / one_s, 3),
        "target_ratio": 0.6,
        "shards": summary["execution_stats"].get("shards"),
    }
    print(json.dumps(out))
    return 0 if same and status.value == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
