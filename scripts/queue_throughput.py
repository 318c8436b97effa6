"""Runs/min of small backtest runs through the local run queue at a given concurrency.

Why: per-run overhead (process start, code location import, the backtest's own process), not the
queue, bounds how many runs a machine completes; this measures it the way users launch runs
(``launch`` → ``QueuedRunCoordinator`` → ``dagster-daemon`` →
``DefaultRunLauncher``) in a temp ``DAGSTER_HOME`` and storage root, with tiny sample data.

    uv run python scripts/queue_throughput.py --runs 8 --concurrency 2
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--trades-per-day", type=int, default=2_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="queue-throughput-"))
    home, root, configs = tmp / "home", tmp / "root", tmp / "configs"
    os.environ.update(
        DAGSTER_HOME=str(home),
        BACKTEST_STORAGE_ROOT=str(root),
        BACKTEST_CONFIGS_DIR=str(configs),
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    from dagster import DagsterInstance

    import launch
    import local_queue
    from backtest_pipeline.data.sample import generate_sample_data
    from backtest_pipeline.storage.ucs import UnifiedCloudService

    # no per-strategy limit: measure the machine, not the tag limit
    local_queue.write_instance_yaml(home, max_concurrent_runs=args.concurrency, tag_limits=[])
    generate_sample_data(
        UnifiedCloudService(str(root)), "2024-01-01", 1, trades_per_day=args.trades_per_day
    )
    base = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    configs.mkdir()
    names = []
    for i in range(args.runs):
        cfg = {**base, "name": f"tp-{i:03d}", "venues": json.loads(json.dumps(base["venues"]))}
        cfg["venues"]["BINANCE-FUTURES"]["latency"] = {"base_ms": 10.0 + i}
        (configs / f"tp-{i:03d}.yaml").write_text(yaml.safe_dump(cfg))
        names.append(cfg["name"])

    with DagsterInstance.get() as instance:
        t = time.monotonic()
        run_ids = launch.submit(instance, launch.plan(names, "2024-01-01", "2024-01-01"))
        submit_s = time.monotonic() - t
        with local_queue.daemon(home, tmp / "daemon.log") as proc:
            statuses = local_queue.wait_for_runs(instance, run_ids, timeout_s=3600, proc=proc)
        windows = local_queue.run_windows(instance, run_ids)
    ok = sum(s.value == "SUCCESS" for s in statuses.values())
    stats = {
        "concurrency": args.concurrency,
        "succeeded": ok,
        "submit_s": round(submit_s, 1),
        "max_in_flight": local_queue.max_overlap(windows),
        **local_queue.throughput(windows),
    }
    print(json.dumps(stats))
    return 0 if ok == len(run_ids) else 1


if __name__ == "__main__":
    sys.exit(main())
