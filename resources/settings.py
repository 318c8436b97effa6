"""Which backtest configuration a run uses: one resource, set per run by run config or tags.

Every asset of a run (and the IO manager, which scopes intermediate objects by configuration)
reads the same value, so the configuration is chosen in one place:
``resources: {backtest: {config: {config_name: two-venues}}}``. Configurations are the
``configs/*.yaml`` files; adding a file is all it takes to add one (see README / definitions).
"""

import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field

from backtest_pipeline import layout
from backtest_pipeline.config import BacktestConfig

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def default_configs_dir() -> str:
    return os.environ.get("BACKTEST_CONFIGS_DIR") or str(CONFIGS_DIR)


def config_names(configs_dir: str | Path | None = None) -> list[str]:
    """Names (file stems) of every configuration file, sorted."""
    d = Path(configs_dir or default_configs_dir())
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def active_config_names(configs_dir: str | Path | None = None) -> list[str]:
    """Configurations the schedule runs: ``$BACKTEST_ACTIVE_CONFIGS`` (comma list) or all files."""
    names = config_names(configs_dir)
    wanted = [
        n.strip() for n in os.environ.get("BACKTEST_ACTIVE_CONFIGS", "").split(",") if n.strip()
    ]
    if not wanted:
        return names
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise ValueError(
            f"BACKTEST_ACTIVE_CONFIGS names unknown configurations {missing}; have {names}"
        )
    return [n for n in names if n in wanted]


def load_config(name: str, configs_dir: str | Path | None = None) -> BacktestConfig:
    """``configs/{name}.yaml`` parsed and validated; the name cannot leave the directory."""
    layout.validate_component(name, "config name")
    path = Path(configs_dir or default_configs_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"configuration {name!r}: {path} does not exist; known: {config_names(configs_dir)}"
        )
    return BacktestConfig.from_yaml(path)


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
        from backtest_pipeline.run import stages

        if context.run_id:
            stages.discard_worker(context.run_id)


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
