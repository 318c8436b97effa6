"""The code location: assets, checks, the one IO manager, the T+1 schedule and the inputs sensor.

Choosing a configuration: every ``configs/*.yaml`` file is one (its stem is its name). A run
uses ``resources.backtest.config.config_name`` (default ``$BACKTEST_CONFIG`` or ``demo``), e.g. in
the launchpad or with ``dagster asset materialize … --config-json``. The schedule and the sensor
launch one run per active configuration (``$BACKTEST_ACTIVE_CONFIGS`` or all files).
"""

import atexit
import gc
import warnings

from dagster import Definitions, JobDefinition, PreviewWarning, load_assets_from_modules

warnings.filterwarnings("ignore", category=PreviewWarning)

# Garbage collection: a process that loads this code location (`dagster asset materialize`, a
# run worker, the code server) holds several hundred thousand long-lived objects — Dagster, the
# instance, polars, pyarrow, the definitions — and every full collection walks all of them:
# ~0.15-0.2 s each here, several per run, plus ~1 s of collections at interpreter exit after the
# run is complete. Frozen objects (gc.freeze) are skipped by the collector; they are modules and
# definitions that live as long as the process anyway. Frozen: what was loaded before this module
# (Dagster, the instance), then the code location once built (below), then what the run itself
# set up (the executor, assets/runtime.py); at exit, everything (the OS reclaims the memory, and
# what must be flushed — event log, compute logs, results — is closed explicitly, not by the
# collector).
gc.freeze()
atexit.register(gc.freeze)

from assets import backtest, catalog, comparison, inputs, runtime
from assets.checks import ALL_CHECKS
from assets.jobs import backtest_job, comparison_job
from assets.schedules import t_plus_1_schedule
from assets.sensors import chunked_backtest_sensor, inputs_ready_sensor
from assets.shards import (
    IO_MANAGER_KEY,
    backtest_chunk_job,
    backtest_stitch_job,
    sharded_backtest_job,
)
from resources.io_manager import UCSIOManager
from resources.local_instance import resume_collection
from resources.settings import BacktestSettings
from resources.step_io import UCSPickleIOManager
from resources.ucs_resource import UCSResource

ucs = UCSResource.configure_at_launch()
settings = BacktestSettings.configure_at_launch()

defs = Definitions(
    assets=load_assets_from_modules([inputs, catalog, backtest, comparison]),
    asset_checks=ALL_CHECKS,
    jobs=[
        backtest_job,
        comparison_job,
        sharded_backtest_job,
        backtest_chunk_job,
        backtest_stitch_job,
    ],
    schedules=[t_plus_1_schedule],
    sensors=[inputs_ready_sensor, chunked_backtest_sensor],
    # In-process steps: the backtest itself runs in its own spawned process, and one process
    # per step would add ~5 s per step (a 13-step run: ~110 s instead of ~20 s). That process
    # is started with the run, so it is ready when the backtest step comes (assets/runtime.py).
    executor=runtime.in_process_with_warm_backtest,
    resources={
        "ucs": ucs,
        "backtest": settings,
        "io_manager": UCSIOManager(ucs=ucs, settings=settings),
        # the sharded job's step outputs (shard plans), readable from any worker
        IO_MANAGER_KEY: UCSPickleIOManager(ucs=ucs),
    },
)

gc.freeze()  # the code location is built: its objects live as long as the process
resume_collection()  # paused while a run's command loaded it (resources/local_instance.py)


def sharded_job() -> JobDefinition:
    """The sharded job with the code location's resources, for ``build_reconstructable_job``.

    Python callers that execute it on a multi-process executor (tests, benchmarks) need a target
    each step process can import by name: ``build_reconstructable_job("definitions", "sharded_job")``.
    """
    return defs.get_job_def(sharded_backtest_job.name)
