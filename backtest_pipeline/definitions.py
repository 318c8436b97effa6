"""The code location: assets, checks, the one IO manager, the T+1 schedule and the inputs sensor.

Choosing a configuration: every ``configs/*.yaml`` file is one (its stem is its name). A run
uses ``resources.backtest.config.config_name`` (default ``$BACKTEST_CONFIG`` or ``demo``), e.g. in
the launchpad or with ``dagster asset materialize … --config-json``. The schedule and the sensor
launch one run per active configuration (``$BACKTEST_ACTIVE_CONFIGS`` or all files).
"""

import warnings

from dagster import Definitions, PreviewWarning, in_process_executor, load_assets_from_modules

warnings.filterwarnings("ignore", category=PreviewWarning)

from backtest_pipeline.assets import backtest, catalog, inputs  # noqa: E402
from backtest_pipeline.assets.checks import ALL_CHECKS  # noqa: E402
from backtest_pipeline.resources.io_manager import UCSIOManager  # noqa: E402
from backtest_pipeline.resources.settings import BacktestSettings  # noqa: E402
from backtest_pipeline.resources.ucs_resource import UCSResource  # noqa: E402
from backtest_pipeline.schedules import backtest_job, t_plus_1_schedule  # noqa: E402
from backtest_pipeline.sensors import inputs_ready_sensor  # noqa: E402

ucs = UCSResource.configure_at_launch()
settings = BacktestSettings.configure_at_launch()

defs = Definitions(
    assets=load_assets_from_modules([inputs, catalog, backtest]),
    asset_checks=ALL_CHECKS,
    jobs=[backtest_job],
    schedules=[t_plus_1_schedule],
    sensors=[inputs_ready_sensor],
    # In-process steps: the backtest itself runs in its own spawned process, and one process
    # per step would add ~5 s per step (a 13-step run: ~110 s instead of ~20 s).
    executor=in_process_executor,
    resources={
        "ucs": ucs,
        "backtest": settings,
        "io_manager": UCSIOManager(ucs=ucs, settings=settings),
    },
)
