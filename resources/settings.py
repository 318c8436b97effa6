"""Which backtest configuration a run uses: one resource, set per run by run config or tags.

Every asset of a run (and the IO manager, which scopes intermediate objects by configuration)
reads the same value, so the configuration is chosen in one place:
``resources: {backtest: {config: {config_name: two-venues}}}``. Configurations are the
``configs/*.yaml`` files; adding a file is all it takes to add one (see README / definitions).
"""

import os
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig, default_configs_dir, load_config


class BacktestSettings(ConfigurableResource):
    """The run's configuration name (a ``configs/*.yaml`` stem) and where configurations live."""

    config_name: str = Field(
        default_factory=lambda: os.environ.get("BACKTEST_CONFIG", "demo"),
        description="Stem of a configs/*.yaml file, e.g. 'demo' or 'two_venues'.",
    )
    configs_dir: str = Field(default_factory=default_configs_dir)

    @property
    def scope(self) -> str:
        """The storage scope of this run's intermediate objects (validated config name)."""
        return layout.validate_component(self.config_name, "config name")

    def load(self) -> BacktestConfig:
        return load_config(self.config_name, self.configs_dir)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Stop the run's warm backtest process if the run ended before using it.

        The first input steps start it ahead of ``backtest_run`` (``assets.runtime``); a run
        that fails earlier must not leave it idling in a long-lived process.
        """
        from backtest_pipeline.run import worker as workers

        if context.run_id:
            workers.discard_worker(context.run_id)


def tag_run(context: Any, settings: BacktestSettings, strategy_id: str) -> None:
    """Put ``backtest/config`` and ``backtest/strategy`` on the run if it lacks them.

    Why: runs launched by the schedule, the sensor and ``launch`` carry these
    tags from the start (the queue's per-strategy limit needs them before launch), but a run
    launched from the UI's launchpad or ``dagster asset materialize`` picks its configuration by
    run config only. Tagging it here still lets the Runs page filter every run by configuration
    (the per-strategy queue limit cannot apply to such a run: it was dequeued untagged).
    """
    wanted = {"backtest/config": settings.config_name, "backtest/strategy": strategy_id}
    missing = {k: v for k, v in wanted.items() if context.run.tags.get(k) != v}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)
