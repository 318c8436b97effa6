"""deploy/ validated offline: instance config, Helm values, executor config, run tags, the image.

No cluster, registry or `helm` here (see deploy/validate.py): Dagster's own schemas check what the
chart would render, broken variants must be refused, and the image's install steps run for real
from the lock file in a temp copy (slow).
"""

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_validate", DEPLOY / "validate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deploy_validate"] = mod
    spec.loader.exec_module(mod)
    return mod


validate = _load()


def test_deploy_folder_has_what_users_need() -> None:
    for name in (
        "README.md",
        "Dockerfile",
        "dagster.yaml",
        "helm/values.yaml",
        "validate.py",
        "celery/dagster.yaml",
        "celery/celery.yaml",
    ):
        assert (DEPLOY / name).is_file(), name
    readme = (DEPLOY / "README.md").read_text()
    for topic in ("Workload Identity", "EXECUTION_STORE_GCS_BUCKET", "runs/min", "Sizing"):
        assert topic in readme, topic


def test_instance_values_executor_and_tags_validate() -> None:
    cfg = validate.check_instance()
    assert cfg["run_launcher"]["class"] == "K8sRunLauncher"
    values = validate.check_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    validate.check_executor_config()
    validate.check_run_tags()
    assert validate.main([]) == 0


def _mutated(tmp_path: Path, name: str, edit) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((DEPLOY / name).read_text())
    edit(data)
    out = tmp_path / Path(name).name
    out.write_text(yaml.safe_dump(data))
    return out


def test_undersized_pod_is_refused(tmp_path: Path) -> None:
    def small(v: dict) -> None:
        res = v["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
        res["resources"]["requests"]["memory"] = "1Gi"

    with pytest.raises(validate.ValidationError, match="memory request"):
        validate.check_values(_mutated(tmp_path, "helm/values.yaml", small))


def test_bad_launcher_and_queue_keys_are_refused(tmp_path: Path) -> None:
    def bad_launcher(c: dict) -> None:
        c["run_launcher"]["config"]["no_such_field"] = 1

    with pytest.raises(validate.ValidationError, match="run_launcher"):
        validate.check_instance(_mutated(tmp_path, "dagster.yaml", bad_launcher))

    def bad_queue(v: dict) -> None:
        v["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxRuns"] = 3

    with pytest.raises(validate.ValidationError, match="unknown keys"):
        validate.check_values(_mutated(tmp_path, "helm/values.yaml", bad_queue))

    def disagree(v: dict) -> None:
        v["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"][
            "maxConcurrentRuns"
        ] = 7

    with pytest.raises(validate.ValidationError, match="maxConcurrentRuns"):
        validate.check_values(_mutated(tmp_path, "helm/values.yaml", disagree))


@pytest.mark.slow
def test_image_install_steps_from_the_lock_file() -> None:
    """The Dockerfile's `uv sync --locked --no-dev` steps in a fresh temp copy, then the code
    location imports in that environment, with the pinned versions and without dev tools."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH")
    timings = validate.check_image()
    versions = timings["versions"]
    assert versions["dagster"] == "1.13.27"
    assert versions["dagster-k8s"] == versions["dagster-postgres"] == "0.29.27"
    assert versions["nautilus_trader"] == "1.231.0"
    print(f"\nimage install steps: {timings}")


def test_celery_variant_and_shard_executors_validate(tmp_path: Path) -> None:
    """The Celery variant (run for real by tests/test_distributed.py) passes the same schemas;
    a worker config without late acknowledgement, or an instance left at Dagster's default
    of 10 concurrent runs, is refused; the sharded job loads on each deployment's executor."""
    cfg = validate.check_celery()
    assert cfg["config_source"]["task_acks_late"] is True
    assert validate.check_shard_executors() == {
        "k8s": "k8s",
        "celery": "celery",
        "multiprocess": "multiprocess",
    }

    def early_ack(c: dict) -> None:
        c["execution"]["config"]["config_source"]["task_acks_late"] = False

    with pytest.raises(validate.ValidationError, match="task_acks_late"):
        validate.check_celery(worker_path=_mutated(tmp_path, "celery/celery.yaml", early_ack))

    def default_limit(c: dict) -> None:
        del c["concurrency"]

    with pytest.raises(validate.ValidationError, match="max_concurrent_runs"):
        validate.check_celery(
            instance_path=_mutated(tmp_path, "celery/dagster.yaml", default_limit)
        )

    def in_process_shards(v: dict) -> None:
        (cm,) = [m for m in v["extraManifests"] if m.get("kind") == "ConfigMap"]
        cm["data"].pop("BACKTEST_SHARD_EXECUTOR")

    with pytest.raises(validate.ValidationError, match="BACKTEST_SHARD_EXECUTOR"):
        validate.check_values(_mutated(tmp_path, "helm/values.yaml", in_process_shards))
