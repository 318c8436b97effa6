"""Offline validation of deploy/: what can be checked without a cluster, a registry or `helm`.

Why a script: images cannot be built here (no base image pulls), and `helm` ships in no package
registry this project can use (PyPI, npm, Debian), so neither `docker build` nor `helm template`
can run in CI. What is checked instead, each with Dagster's own config schemas where one exists:

* ``deploy/dagster.yaml`` — the instance config: top-level schema and concurrency rules
  (``dagster_instance_config``), then every configurable class' config (Postgres storage,
  ``QueuedRunCoordinator``, ``K8sRunLauncher``) processed by its ``config_type()``.
* ``deploy/helm/values.yaml`` — a structural check of the keys this deployment relies on, with the
  run launcher and run queue sections converted to the instance config the chart renders and
  validated by the same schemas; pod resources parsed as Kubernetes quantities and sized against
  the benchmark's measured peaks; values and ``deploy/dagster.yaml`` must agree.
* ``deploy/k8s_job_executor.yaml`` — run config for step pods, validated against the executor;
  the code location's sharded job runs on ``k8s_job_executor`` with the ConfigMap's
  ``BACKTEST_SHARD_EXECUTOR``.
* ``deploy/celery/`` — the Celery variant: its instance (Postgres, queue, ``DefaultRunLauncher``,
  an explicit run limit), the workers' config against ``celery_executor``'s schema (late
  acknowledgement, requeue on a lost worker), and the sharded job on ``celery_executor``. The
  variant also runs for real in ``tests/test_distributed.py``.
* the ``dagster-k8s/config`` tag that ``launch`` puts on runs.
* ``--image`` — the Dockerfile's install steps executed in a fresh temp copy of the files it
  COPYs (``uv sync --locked --no-dev`` from the lock file, then importing the code location).

    uv run python deploy/validate.py            # configs (seconds)
    uv run python deploy/validate.py --image    # + the image's install steps (~1-2 min)
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent

#: Measured peaks (benchmark; benchmarks/RESULTS.md): the backtest process of a signal-driven
#: 3-day run of 2 M trades/day, of a full-day run, and the run worker around it (dagster + code
#: location + one day of slices, measured ~0.5-0.6 GB).
PEAK_SIGNAL_DRIVEN_GB = 0.95
PEAK_FULL_DAY_GB = 2.0
RUN_WORKER_GB = 0.6

#: Top-level keys of the dagster chart's values that this file may use.
CHART_TOP_LEVEL = {
    "global",
    "serviceAccount",
    "dagsterWebserver",
    "dagster-user-deployments",
    "runLauncher",
    "dagsterDaemon",
    "postgresql",
    "extraManifests",
    "telemetry",
    "computeLogManager",
    "pythonLogs",
    "ingress",
    "rabbitmq",
    "redis",
    "flower",
    "busybox",
    "migrate",
    "scheduler",
    "retention",
    "concurrency",
    "imagePullSecrets",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
}
QUEUE_KEYS = {
    "maxConcurrentRuns": "max_concurrent_runs",
    "tagConcurrencyLimits": "tag_concurrency_limits",
    "dequeueIntervalSeconds": "dequeue_interval_seconds",
    "dequeueUseThreads": "dequeue_use_threads",
    "dequeueNumWorkers": "dequeue_num_workers",
    "maxUserCodeFailureRetries": "max_user_code_failure_retries",
    "userCodeFailureRetryDelay": "user_code_failure_retry_delay",
}
K8S_CONFIG_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
DUMMY_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "x",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "backtest",
    "DAGSTER_PG_PORT": "5432",
    "BACKTEST_CELERY_BROKER": "redis://redis:6379/0",
    "BACKTEST_CELERY_BACKEND": "redis://redis:6379/1",
}
CELERY = DEPLOY / "celery"


class ValidationError(Exception):
    """A deploy file is wrong; the message says which file and key."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValidationError(msg)


def _process(config_type: Any, value: Any, what: str) -> Any:
    from dagster._config import process_config

    result = process_config(config_type, value)
    _require(
        result.success,
        f"{what}: " + "; ".join(e.message for e in (result.errors or [])),
    )
    return result.value


def _with_env(fn: Any, *args: Any) -> Any:
    saved = {k: os.environ.get(k) for k in DUMMY_ENV}
    os.environ.update({k: v for k, v in DUMMY_ENV.items() if saved[k] is None})
    try:
        return fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def gib(quantity: str | int | float) -> float:
    """A Kubernetes quantity ("3Gi", "3500Mi", "2") in GiB."""
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(str(quantity))) / 2**30


def check_resources(res: Mapping[str, Any], what: str, peak_gb: float) -> None:
    """Requests ≤ limits, and the memory request covers the measured peak + the run worker."""
    from kubernetes.utils import parse_quantity

    req, lim = res.get("requests", {}), res.get("limits", {})
    for key in ("cpu", "memory"):
        _require(key in req, f"{what}: requests.{key} missing")
        _require(key in lim, f"{what}: limits.{key} missing")
        _require(
            parse_quantity(str(req[key])) <= parse_quantity(str(lim[key])),
            f"{what}: requests.{key} {req[key]} > limits.{key} {lim[key]}",
        )
    need = (peak_gb + RUN_WORKER_GB) * 1e9 / 2**30
    _require(
        gib(req["memory"]) >= need,
        f"{what}: memory request {req['memory']} < measured peak {peak_gb} GB + worker "
        f"{RUN_WORKER_GB} GB",
    )
    _require(
        gib(lim["memory"]) >= 1.25 * gib(req["memory"]),
        f"{what}: memory limit {lim['memory']} leaves < 25 % headroom over the request",
    )


def check_instance(path: Path = DEPLOY / "dagster.yaml") -> dict[str, Any]:
    """The Kubernetes instance config loads with Dagster's schemas; returns it (env resolved)."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresRunStorage

    def load() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(path, Path(d) / "dagster.yaml")
            cfg, _ = dagster_instance_config(d)
        return dict(cfg)

    cfg = _with_env(load)
    raw = yaml.safe_load(path.read_text())
    _require(raw["run_launcher"]["class"] == "K8sRunLauncher", f"{path}: not K8sRunLauncher")
    _with_env(_process, K8sRunLauncher.config_type(), raw["run_launcher"]["config"], "run_launcher")
    _process(
        QueuedRunCoordinator.config_type(), raw["run_coordinator"]["config"], "run_coordinator"
    )
    _with_env(
        _process,
        PostgresRunStorage.config_type(),
        {"postgres_db": raw["storage"]["postgres"]["postgres_db"]},
        "storage.postgres",
    )
    res = raw["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"]
    check_resources(res, f"{path}: run pod", PEAK_SIGNAL_DRIVEN_GB)
    return cfg


def _snake_k8s(cfg: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(cfg) - set(K8S_CONFIG_KEYS)
    _require(not unknown, f"runK8sConfig: unknown keys {sorted(unknown)}")
    return {K8S_CONFIG_KEYS[k]: v for k, v in cfg.items()}


def check_values(
    path: Path = DEPLOY / "helm" / "values.yaml", instance_path: Path = DEPLOY / "dagster.yaml"
) -> dict[str, Any]:
    """Structural check of the Helm values + the parts the chart turns into instance config."""
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    v = yaml.safe_load(path.read_text())
    unknown = set(v) - CHART_TOP_LEVEL
    _require(not unknown, f"{path}: unknown top-level keys {sorted(unknown)}")

    # the user deployment = this code location
    ud = v["dagster-user-deployments"]
    _require(ud.get("enabled") is True, "dagster-user-deployments.enabled must be true")
    (dep,) = ud["deployments"]
    for key in ("name", "image", "dagsterApiGrpcArgs", "port"):
        _require(key in dep, f"deployments[0].{key} missing")
    for key in ("repository", "tag", "pullPolicy"):
        _require(isinstance(dep["image"].get(key), str), f"deployments[0].image.{key} missing")
    _require(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", dep["name"]) is not None, "bad name")
    args = dep["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    _require(
        module == workspace["load_from"][0]["python_module"]["module_name"],
        f"deployments[0] serves {module}, workspace.yaml another module",
    )
    _require(isinstance(dep["port"], int), "deployments[0].port must be an int")

    # run launcher → the instance's run_launcher config
    rl = v["runLauncher"]
    _require(rl["type"] == "K8sRunLauncher", "runLauncher.type must be K8sRunLauncher")
    k8s = rl["config"]["k8sRunLauncher"]
    run_k8s = _snake_k8s(k8s["runK8sConfig"])
    UserDefinedDagsterK8sConfig.from_dict(run_k8s)
    launcher_cfg = {
        "instance_config_map": "backtest-dagster-instance",
        "image_pull_policy": k8s["imagePullPolicy"],
        "env_config_maps": [e["name"] for e in k8s.get("envConfigMaps", [])],
        "run_k8s_config": run_k8s,
        "labels": k8s.get("labels", {}),
    }
    _process(K8sRunLauncher.config_type(), launcher_cfg, "runLauncher.config.k8sRunLauncher")
    res = run_k8s["container_config"]["resources"]
    check_resources(res, f"{path}: run pod", PEAK_SIGNAL_DRIVEN_GB)

    # run queue → the instance's run_coordinator + concurrency config
    rc = v["dagsterDaemon"]["runCoordinator"]
    _require(rc["enabled"] and rc["type"] == "QueuedRunCoordinator", "runCoordinator")
    q = rc["config"]["queuedRunCoordinator"]
    unknown = set(q) - set(QUEUE_KEYS)
    _require(not unknown, f"queuedRunCoordinator: unknown keys {sorted(unknown)}")
    _process(
        QueuedRunCoordinator.config_type(),
        {QUEUE_KEYS[k]: val for k, val in q.items()},
        "dagsterDaemon.runCoordinator",
    )

    # agreement with deploy/dagster.yaml (the non-Helm form of the same instance)
    inst = yaml.safe_load(instance_path.read_text())
    runs = inst["concurrency"]["runs"]
    _require(
        runs["max_concurrent_runs"] == q["maxConcurrentRuns"],
        "maxConcurrentRuns differs from deploy/dagster.yaml",
    )
    strat = [t for t in q["tagConcurrencyLimits"] if t["key"] == "backtest/strategy"]
    strat_i = [t for t in runs["tag_concurrency_limits"] if t["key"] == "backtest/strategy"]
    _require(strat == strat_i, "backtest/strategy limit differs from deploy/dagster.yaml")
    inst_res = inst["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"]
    _require(inst_res == res, "run pod resources differ from deploy/dagster.yaml")

    # the settings config map: storage root and the results bucket
    maps = [m for m in v.get("extraManifests", []) if m.get("kind") == "ConfigMap"]
    env = {m["metadata"]["name"]: m["data"] for m in maps}
    _require("backtest-pipeline-env" in env, "ConfigMap backtest-pipeline-env missing")
    data = env["backtest-pipeline-env"]
    _require(data.get("BACKTEST_STORAGE_ROOT", "").startswith("gs://"), "storage root not gs://")
    for var in (
        "INSTRUMENTS_GCS_BUCKET",
        "MARKET_DATA_GCS_BUCKET",
        "SIGNALS_GCS_BUCKET",
        "EXECUTION_STORE_GCS_BUCKET",
    ):
        _require(
            re.fullmatch(r"[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]", data.get(var, "")) is not None,
            f"{var}: not a valid bucket name",
        )
    _require(
        all(isinstance(x, str) for x in data.values()), "ConfigMap data values must be strings"
    )
    _require(
        data.get("BACKTEST_SHARD_EXECUTOR") == "k8s",
        "ConfigMap backtest-pipeline-env: BACKTEST_SHARD_EXECUTOR must be k8s (shard steps as "
        "Kubernetes Jobs)",
    )
    return v


def check_executor_config(path: Path = DEPLOY / "k8s_job_executor.yaml") -> None:
    """The step-pod run config validates against ``k8s_job_executor``'s schema."""
    from dagster_k8s import k8s_job_executor

    cfg = yaml.safe_load(path.read_text())
    _process(k8s_job_executor.config_schema.config_type, cfg["execution"]["config"], str(path))


def check_celery(
    instance_path: Path = CELERY / "dagster.yaml", worker_path: Path = CELERY / "celery.yaml"
) -> dict[str, Any]:
    """The Celery variant's instance and worker config, with Dagster's schemas; returns the
    worker config (env resolved)."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_celery import celery_executor
    from dagster_postgres import PostgresRunStorage

    def load() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(instance_path, Path(d) / "dagster.yaml")
            cfg, _ = dagster_instance_config(d)
        return dict(cfg)

    _with_env(load)
    raw = yaml.safe_load(instance_path.read_text())
    _require(
        raw.get("run_launcher", {}).get("class") == "DefaultRunLauncher",
        f"{instance_path}: run_launcher must be DefaultRunLauncher (steps go to Celery)",
    )
    _require("postgres" in raw.get("storage", {}), f"{instance_path}: storage is not Postgres")
    _with_env(
        _process,
        PostgresRunStorage.config_type(),
        {"postgres_db": raw["storage"]["postgres"]["postgres_db"]},
        "storage.postgres",
    )
    _process(
        QueuedRunCoordinator.config_type(), raw["run_coordinator"]["config"], "run_coordinator"
    )
    limit = raw.get("concurrency", {}).get("runs", {}).get("max_concurrent_runs")
    _require(
        isinstance(limit, int) and limit > 10,
        f"{instance_path}: concurrency.runs.max_concurrent_runs must be set deliberately for "
        f"100+ queued runs (not Dagster's default 10), got {limit!r}",
    )
    worker = yaml.safe_load(worker_path.read_text())
    _require(
        "config" in worker.get("execution", {}),
        f"{worker_path}: needs an `execution: config:` block (what dagster-celery -y reads)",
    )
    cfg = _with_env(
        _process, celery_executor.config_schema.config_type, worker["execution"]["config"],
        str(worker_path),
    )  # fmt: skip
    source = cfg.get("config_source") or {}
    for key in ("task_acks_late", "task_reject_on_worker_lost"):
        _require(source.get(key) is True, f"{worker_path}: config_source.{key} must be true")
    for key in ("broker", "backend"):
        _require(str(cfg.get(key, "")).startswith("redis://"), f"{worker_path}: {key} is not Redis")
    return cfg


def check_shard_executors() -> dict[str, str]:
    """The sharded job loads on each deployment's executor (the variable the deployments set)."""
    sys.path.insert(0, str(REPO))
    from assets.shards import EXECUTOR_ENV, shard_executor

    names = {}
    saved = os.environ.get(EXECUTOR_ENV)
    try:
        for value, want in (("k8s", "k8s"), ("celery", "celery"), ("multiprocess", "multiprocess")):
            os.environ[EXECUTOR_ENV] = value
            names[value] = _with_env(shard_executor).name
            _require(names[value] == want, f"{EXECUTOR_ENV}={value}: executor {names[value]}")
    finally:
        if saved is None:
            os.environ.pop(EXECUTOR_ENV, None)
        else:
            os.environ[EXECUTOR_ENV] = saved
    return names


def check_run_tags() -> None:
    """The ``dagster-k8s/config`` tags ``launch`` puts on runs parse and are sized right."""
    from dagster_k8s.job import get_user_defined_k8s_config

    sys.path.insert(0, str(REPO))
    from launch import k8s_config_tag

    for full_day, peak in ((False, PEAK_SIGNAL_DRIVEN_GB), (True, PEAK_FULL_DAY_GB)):
        user = get_user_defined_k8s_config(k8s_config_tag(full_day))
        check_resources(user.container_config["resources"], f"run tag full_day={full_day}", peak)


def _dockerfile_steps(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    steps = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            steps.append((op.upper(), rest.strip()))
    return steps


def check_image(dockerfile: Path = DEPLOY / "Dockerfile", keep: bool = False) -> dict[str, Any]:
    """Execute the Dockerfile's install steps in a temp dir: COPY the files, ENV, `uv sync …`.

    ``/opt/venv`` and ``/opt/dagster`` are mapped into the temp dir; the ``pip install uv``
    step is checked against the uv pinned by ``.ci/run`` instead of run. Returns timings.
    """
    import time

    steps = _dockerfile_steps(dockerfile.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="image-check-"))
    app = tmp / "opt" / "dagster" / "app"
    app.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    mapping = {"/opt/": f"{tmp}/opt/"}
    timings: dict[str, Any] = {"steps": []}

    def remap(s: str) -> str:
        for a, b in mapping.items():
            s = s.replace(a, b)
        return s

    try:
        _require(steps[0][0] == "FROM" and "python:3.12" in steps[0][1], "base must be python 3.12")
        for op, rest in steps:
            if op == "ENV":
                for tok in shlex.split(rest):
                    k, _, val = tok.partition("=")
                    env[k] = remap(val.replace("$PATH", env.get("PATH", "")))
            elif op == "COPY":
                *srcs, _dest = shlex.split(rest)
                for src in srcs:
                    s = REPO / src
                    _require(s.exists(), f"COPY {src}: not in the repository")
                    if s.is_dir():
                        shutil.copytree(s, app / src, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy(s, app / src)
            elif op == "RUN":
                if rest.startswith("pip install"):
                    pin = re.search(r"uv==([0-9.]+)", rest)
                    ci = (REPO / ".ci" / "run").read_text()
                    _require(
                        pin is not None and f"uv=={pin.group(1)}" in ci,
                        "the image's uv pin differs from .ci/run's",
                    )
                    continue
                t = time.monotonic()
                proc = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", remap(rest)],
                    cwd=app,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                timings["steps"].append((rest[:60], round(time.monotonic() - t, 1)))
                _require(
                    proc.returncode == 0,
                    f"RUN {rest[:80]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}",
                )
        venv = Path(env["UV_PROJECT_ENVIRONMENT"])
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
                "['dagster', 'dagster-k8s', 'dagster-postgres', 'dagster-celery', 'dagster-gcp', "
                "'nautilus_trader']}))",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        timings["versions"] = json.loads(out.stdout)
        dev = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import pytest"], capture_output=True, env=env
        )
        _require(dev.returncode != 0, "dev dependencies (pytest) ended up in the image")
        _require(
            (venv / "bin" / "dagster").exists() and (venv / "bin" / "dagster-daemon").exists(),
            "dagster CLIs missing",
        )
        return timings
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="store_true", help="also run the image install steps")
    args = parser.parse_args(argv)
    check_instance()
    print("deploy/dagster.yaml: instance config valid (postgres, queue, K8sRunLauncher)")
    check_values()
    print("deploy/helm/values.yaml: structure, launcher, queue, sizing, config map valid")
    check_executor_config()
    print("deploy/k8s_job_executor.yaml: valid k8s_job_executor config")
    check_run_tags()
    print("dagster-k8s/config run tags: valid, sized from the benchmark")
    check_celery()
    print("deploy/celery/: instance (postgres, queue, run limit) and worker config valid")
    check_shard_executors()
    print("sharded_backtest_job: loads on k8s_job_executor, celery_executor, multiprocess")
    if shutil.which("helm"):
        print("note: helm found, but rendering needs the chart from its repository (not here)")
    if args.image:
        t = check_image()
        print(f"deploy/Dockerfile: install steps OK {json.dumps(t)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValidationError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        sys.exit(1)
