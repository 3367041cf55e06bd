"""Static checks of the compose platform that need no Docker engine (they always run): the
compose file resolves, is wired as documented, every variable is documented, and the Prometheus
and Grafana provisioning is consistent. Grafana cannot be installed on the build machines, so its
provisioning and dashboard are checked here; the e2e test runs everything else for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from catsdogs.orchestration.stage_table import PIPELINE, QUEUES
from tests.e2e.compose import (
    COMPOSE_FILE,
    DASHBOARD,
    REPO_ROOT,
    compose_config,
    dashboard,
    dashboard_exprs,
    env_file_with_secrets,
)

DOCKER_DIR = REPO_ROOT / "docker"
GRAFANA = DOCKER_DIR / "grafana"
WORKERS = ("airflow-worker-cpu", "airflow-worker-gpu")
ONE_SHOT = ("airflow-init", "mlflow-users")   # run once, to completion, before their dependants
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer", *WORKERS)
LONG_RUNNING = ("postgres", "redis", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", *WORKERS, "mlflow", "bento-proxy",
                "prometheus", "alertmanager", "pushgateway", "grafana")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return compose_config(env_file_with_secrets(tmp_path_factory.mktemp("static")))


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_compose_resolves_with_every_service(config: dict) -> None:
    assert set(config["services"]) >= {*LONG_RUNNING, "airflow-init", "worker", "service-runtime"}
    ports = {name: {(p["published"], p["target"]) for p in svc.get("ports", [])}
             for name, svc in config["services"].items()}
    assert ("8080", 8080) in ports["airflow-apiserver"]
    assert ("5000", 5000) in ports["mlflow"]
    assert ("3000", 8080) in ports["bento-proxy"]
    assert ("9090", 9090) in ports["prometheus"]
    assert ("3001", 3000) in ports["grafana"]


def test_long_running_services_are_health_checked_and_wait_for_health(config: dict) -> None:
    services = config["services"]
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            expected = ("service_completed_successfully" if dep in ONE_SHOT
                        else "service_healthy")
            assert spec["condition"] == expected, f"{name} -> {dep}: {spec['condition']}"
    for name in AIRFLOW_SERVICES[1:]:
        assert services[name]["depends_on"]["airflow-init"]
    assert services["mlflow"]["depends_on"]["postgres"]


def test_airflow_containers_share_one_configuration(config: dict) -> None:
    services = config["services"]
    envs = [_env(services[name]) for name in AIRFLOW_SERVICES]
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__CORE__EXECUTOR",
                "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "CATSDOGS_DATA_VOLUME",
                "CATSDOGS_DOCKER_NETWORK", "CATSDOGS_WORKER_IMAGE", "MLFLOW_TRACKING_URI"):
        assert len({env.get(key) for env in envs}) == 1, f"{key} differs between Airflow containers"
    env = envs[0]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Airflow's official layout: Redis the broker, the metadata database the result backend.
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://", 1)[1]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+postgresql+psycopg2://{db}"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["CATSDOGS_RUNNER"] == "docker"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_stage_containers_find_the_volume_network_and_engine(config: dict) -> None:
    """The Celery workers start the stage containers: they get the engine's socket (and its
    group), nothing else Airflow runs does."""
    services = config["services"]
    for name in WORKERS:
        env = _env(services[name])
        assert config["volumes"]["catsdogs-data"]["name"] == env["CATSDOGS_DATA_VOLUME"]
        assert config["networks"]["catsdogs"]["name"] == env["CATSDOGS_DOCKER_NETWORK"]
        mounts = {m["target"]: m for m in services[name]["volumes"]}
        assert mounts["/var/run/docker.sock"]["type"] == "bind"
        assert services[name]["group_add"]
    for name in set(AIRFLOW_SERVICES) - set(WORKERS):
        targets = {m["target"] for m in services[name].get("volumes", [])}
        assert "/var/run/docker.sock" not in targets, f"{name} does not need the Docker socket"
    for name in ("mlflow", *WORKERS):
        assert "catsdogs" in services[name]["networks"]


def test_celery_workers_consume_the_queues_the_stage_table_names(config: dict) -> None:
    """One worker per queue of the stage table (`Stage.queue`), each with a fixed hostname (the
    task instances' `hostname`), the GPU stages' queue on the GPU worker."""
    services = config["services"]
    consumed: dict[str, str] = {}
    for name, service in services.items():
        command = service.get("command") or []
        if command[:3] == ["airflow", "celery", "worker"]:
            queues = command[command.index("--queues") + 1].split(",")
            assert service["hostname"] == name, f"{name}: hostname {service.get('hostname')}"
            for queue in queues:
                assert queue not in consumed, f"{queue} consumed by {consumed[queue]} and {name}"
                consumed[queue] = name
    assert sorted(consumed) == sorted(QUEUES)
    assert {s.name: consumed[s.queue] for s in PIPELINE} == {
        "ingest": "airflow-worker-cpu", "validate": "airflow-worker-cpu",
        "prepare": "airflow-worker-cpu", "transform": "airflow-worker-cpu",
        "train": "airflow-worker-gpu", "promote": "airflow-worker-gpu",
        "deploy": "airflow-worker-cpu"}
    for name in WORKERS:
        assert {"redis", "postgres", "airflow-init"} <= set(services[name]["depends_on"])
        assert "control.ping(destination=['celery@' + socket.gethostname()]" in " ".join(
            services[name]["healthcheck"]["test"])


def test_broker_redelivers_only_after_the_longest_stage(config: dict) -> None:
    """An unacknowledged task goes back to the queue after the visibility timeout: it must be
    longer than any stage may run, or a healthy stage would be started twice."""
    env = _env(config["services"]["airflow-scheduler"])
    visibility_s = int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"])
    assert visibility_s > max(stage.timeout_minutes for stage in PIPELINE) * 60
    heartbeat_s = int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"])
    assert 0 < heartbeat_s < visibility_s


def test_redis_broker_is_private_and_password_protected(config: dict) -> None:
    redis = config["services"]["redis"]
    assert not redis.get("ports"), "the broker is not published on the host"
    script = " ".join(redis["command"])
    assert "requirepass $$REDIS_PASSWORD" in script or "requirepass $REDIS_PASSWORD" in script
    password = _env(redis)["REDIS_PASSWORD"]
    broker = _env(config["services"]["airflow-scheduler"])["AIRFLOW__CELERY__BROKER_URL"]
    assert broker == f"redis://:{password}@redis:6379/0"
    assert "catsdogs" in redis["networks"]


def test_mlflow_serves_artifacts_from_postgres_and_allows_its_service_name(config: dict) -> None:
    command = " ".join(config["services"]["mlflow"]["command"])
    assert _env(config["services"]["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert "--serve-artifacts" in command and "--artifacts-destination=/mlartifacts" in command
    assert "--app-name=basic-auth" in command, "MLflow without its login"
    allowed = re.search(r"--allowed-hosts=(\S+)", command).group(1).split(",")
    assert "mlflow:5000" in allowed


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (REPO_ROOT / ".env.example").read_text(),
                                re.MULTILINE))
    assert used - documented == set()


def test_prometheus_scrapes_the_bento_service_and_itself(config: dict) -> None:
    prom = yaml.safe_load((DOCKER_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    targets = {t for job in jobs.values() for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    assert "localhost:9090" in targets
    # each colour the compose target starts (the network alias bento-<colour>, port 3000), not
    # the proxy: during a rollout both versions are scraped, one instance per slot
    (colours,) = jobs["bento"]["dns_sd_configs"]
    assert set(colours["names"]) == {"bento-blue", "bento-green"}
    assert (colours["type"], colours["port"]) == ("A", 3000)
    (instance,) = [r for r in jobs["bento"]["relabel_configs"] if r.get("target_label") == "instance"]
    assert instance["source_labels"] == ["__meta_dns_name"]
    assert jobs["bento"].get("metrics_path", "/metrics") == "/metrics"
    mount = {m["target"]: m for m in config["services"]["prometheus"]["volumes"]}
    assert Path(mount["/etc/prometheus/prometheus.yml"]["source"]).name == "prometheus.yml"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder(config: dict) -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "catsdogs.yaml").read_text())
    (provider,) = providers["providers"]
    mounts = {m["target"]: Path(m["source"]) for m in config["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    home = _env(config["services"]["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_dashboard_has_the_documented_panels_on_the_provisioned_data_source() -> None:
    board = dashboard()
    uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
                         .read_text())["datasources"][0]["uid"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "latency", "predictions by label", "confidence",
                  "model version", "rejected", "drift", "out-of-distribution",
                  "per version: prediction requests", "per version: 5xx error ratio",
                  "per version: p99 latency", "live accuracy", "feedback labels"):
        assert topic in titles, f"no panel about {topic!r}"
    for panel in panels:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert target["datasource"]["uid"] == uid


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Every dashboard query through `promtool check rules` as a recording rule (Grafana's
    `$__rate_interval` as 1m), as the e2e test does inside the compose Prometheus."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: `make system-deps` installs Debian's prometheus")
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(sorted(dashboard_exprs()))]}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in result.stdout


def dashboard_metrics() -> set[str]:
    names = set(re.findall(r"\b((?:bentoml|catsdogs)_[a-z0-9_]+)", " ".join(dashboard_exprs())))
    return {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in names}


def test_dashboard_queries_metrics_the_service_defines() -> None:
    """Every custom `catsdogs_*` series the dashboard plots is defined by the Bento service or
    pushed by `catsdogs monitor` (the drift gauges)."""
    service_dir = REPO_ROOT / "bentoservice"
    sources = " ".join(p.read_text() for p in service_dir.rglob("*.py"))
    sources += (REPO_ROOT / "include" / "catsdogs" / "stages" / "monitor.py").read_text()
    if not sources:
        pytest.fail("bentoservice/ has no Python source to check the dashboard against")
    missing = {name for name in dashboard_metrics()
               if name.startswith("catsdogs_")
               and re.sub(r"^catsdogs_", "", name) not in sources and name not in sources}
    assert not missing, f"dashboard plots metrics the service never defines: {sorted(missing)}"


def test_the_deploy_task_gets_the_compose_target(config: dict) -> None:
    """The Airflow services hand the rollout stage its target, the Docker socket's group and the
    proxy it switches; the proxy mounts the route volume the deploy rewrites."""
    env = _env(config["services"]["airflow-scheduler"])
    assert env["CATSDOGS_DEPLOY_TARGET"] == "compose"
    assert env["CATSDOGS_SERVICE_URL"] == "http://bento-proxy:8080"
    assert "{version}" in env["CATSDOGS_MODEL_IMAGE"]
    assert env["CATSDOGS_COMPOSE_PROJECT"] == config["name"]
    proxy = config["services"]["bento-proxy"]
    assert {m["target"] for m in proxy["volumes"]} >= {"/usr/local/etc/haproxy/haproxy.cfg",
                                                       "/var/lib/haproxy/routes"}
