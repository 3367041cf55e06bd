"""Static checks of the `logs` compose profile (docs/logs.md): Loki, Grafana Alloy and Grafana
cannot be installed on the build machines, so their configuration is checked here against models
of their documented schemas, and the secret redaction Alloy applies runs under RE2, Alloy's
regex engine. The structured lines themselves: tests/monitoring/test_structured_logs.py."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest
import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field

from catsdogs.console import MASK, SECRET_PATTERNS, redact
from tests.e2e.compose import COMPOSE_FILE, REPO_ROOT, compose_config, env_file_with_secrets
from tests.monitoring.alloy_syntax import Block, Call, Concat, Ref, parse, refs

DOCKER = REPO_ROOT / "docker"
LOKI_CONFIG = DOCKER / "loki" / "loki.yaml"
ALLOY_CONFIG = DOCKER / "alloy" / "config.alloy"
GRAFANA = DOCKER / "grafana"
LOGS_SERVICES = ("loki", "alloy")
DURATION = r"^\$\{[A-Z_]+:-[0-9]+[smhdwy]\}$|^([0-9]+(ms|s|m|h|d|w|y))+$"


# --- Loki: the keys loki.yaml uses, from Loki 3.7's configuration reference --------------------
# (docs/sources/shared/configuration.md of grafana/loki v3.7; `extra="forbid"`: a key the
# reference does not have under that block, or a misspelt one, fails.)
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LokiServer(_Strict):
    http_listen_port: int = Field(ge=1, le=65535)
    log_format: Literal["logfmt", "json"] = "logfmt"
    log_level: Literal["debug", "info", "warn", "error"] = "info"


class LokiFilesystem(_Strict):
    chunks_directory: str
    rules_directory: str


class LokiCommonStorage(_Strict):
    filesystem: LokiFilesystem


class LokiKVStore(_Strict):
    store: Literal["consul", "etcd", "inmemory", "memberlist", "multi"]


class LokiRing(_Strict):
    kvstore: LokiKVStore


class LokiCommon(_Strict):
    instance_addr: str = ""
    path_prefix: str
    storage: LokiCommonStorage
    replication_factor: int = Field(ge=1)
    ring: LokiRing


class LokiIndex(_Strict):
    prefix: str
    period: str = Field(pattern=DURATION)


class LokiPeriod(_Strict):
    from_: str = Field(alias="from", pattern=r"^\d{4}-\d{2}-\d{2}$")
    store: Literal["tsdb", "boltdb-shipper"]
    object_store: Literal["filesystem", "s3", "gcs", "azure", "swift", "bos", "cos", "alibabacloud"]
    schema_: str = Field(alias="schema", pattern=r"^v\d+$")
    index: LokiIndex


class LokiSchema(_Strict):
    configs: list[LokiPeriod] = Field(min_length=1)


class LokiLimits(_Strict):
    retention_period: str = Field(pattern=DURATION)
    allow_structured_metadata: bool = True
    reject_old_samples: bool = True
    reject_old_samples_max_age: str = Field("1w", pattern=DURATION)


class LokiCompactor(_Strict):
    working_directory: str
    compaction_interval: str = Field(pattern=DURATION)
    retention_enabled: bool
    retention_delete_delay: str = Field(pattern=DURATION)
    delete_request_store: str


class LokiAnalytics(_Strict):
    reporting_enabled: bool


class LokiConfig(_Strict):
    auth_enabled: bool
    server: LokiServer
    common: LokiCommon
    schema_config: LokiSchema
    limits_config: LokiLimits
    compactor: LokiCompactor
    analytics: LokiAnalytics


def _hours(duration: str) -> float:
    units = {"ms": 1 / 3_600_000, "s": 1 / 3600, "m": 1 / 60, "h": 1, "d": 24, "w": 168,
             "y": 8760}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


# --- Alloy: components, arguments and blocks used, from the Alloy v1.x components reference ----
# (docs/sources/reference/components/ of grafana/alloy: each component's Arguments and Blocks
# tables, and what it exports.)
RULE = {"action", "modulus", "regex", "replacement", "separator", "source_labels", "target_label"}
STAGES = {
    "stage.json": {"expressions", "regex", "drop_malformed", "source"},
    "stage.regex": {"expression", "source", "labels_from_groups"},
    "stage.labels": {"values", "source_type"},
    "stage.label_drop": {"values"},
    "stage.structured_metadata": {"values", "regex"},
    "stage.replace": {"expression", "replace", "source"},
    "stage.static_labels": {"values"},
    "stage.template": {"source", "template"},
    "stage.timestamp": {"format", "source", "action_on_failure", "fallback_formats", "location"},
    "stage.match": {"selector", "action", "drop_counter_reason", "pipeline_name"},
    "stage.drop": {"drop_counter_reason", "expression", "longer_than", "older_than",
                   "separator", "source", "value"},
}
ENDPOINT = {"url", "batch_size", "batch_wait", "bearer_token_file", "bearer_token",
            "follow_redirects", "http_headers", "headers", "max_backoff_period",
            "max_backoff_retries", "min_backoff_period", "name", "no_proxy", "proxy_connect_header",
            "proxy_from_environment", "proxy_url", "remote_timeout", "tenant_id"}
# component: (arguments, {block: its arguments}, exports)
COMPONENTS: dict[str, tuple[set[str], dict[str, set[str]], set[str]]] = {
    "local.file_match": ({"path_targets", "ignore_older_than", "sync_period"}, {}, {"targets"}),
    "loki.source.file": ({"forward_to", "targets", "encoding", "legacy_positions_file",
                          "on_positions_file_error", "tail_from_end"}, {}, set()),
    "loki.process": ({"forward_to"}, STAGES, {"receiver"}),
    "discovery.docker": ({"host", "bearer_token_file", "bearer_token", "follow_redirects",
                          "http_headers", "host_networking_host", "match_first_network",
                          "no_proxy", "port", "proxy_connect_header", "proxy_from_environment",
                          "proxy_url", "refresh_interval"}, {"filter": {"name", "values"}},
                         {"targets"}),
    "discovery.relabel": ({"targets"}, {"rule": RULE}, {"output", "rules"}),
    "loki.source.docker": ({"forward_to", "host", "labels", "targets", "refresh_interval",
                            "relabel_rules"}, {}, set()),
    "loki.write": ({"external_labels", "max_streams"}, {"endpoint": ENDPOINT}, {"receiver"}),
}
CONFIG_BLOCKS = {"logging": {"level", "format", "write_to"}}
STDLIB = {"sys.env"}
# Labels Loki may index: few values each. Run ids, file names (they hold the run id) and request
# fields never.
ALLOWED_LABELS = {"job", "dag_id", "task_id", "try", "level", "service", "model_version"}


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """.env.example with its secrets generated, as `make up` writes .env (compose refuses to
    start without them)."""
    return env_file_with_secrets(tmp_path_factory.mktemp("compose-env"))


@pytest.fixture(scope="module")
def profile(env_file: Path) -> dict:
    return compose_config(env_file, profiles=("logs",))


@pytest.fixture(scope="module")
def alloy() -> list[Block]:
    return parse(ALLOY_CONFIG.read_text())


def _components(blocks: list[Block]) -> dict[str, Block]:
    return {f"{b.name}.{b.label}": b for b in blocks if b.label is not None}


# --- compose ------------------------------------------------------------------------------------
def test_the_logs_profile_is_off_by_default_and_adds_loki_and_alloy(profile: dict,
                                                                    env_file: Path) -> None:
    default = compose_config(env_file, profiles=())
    assert not set(LOGS_SERVICES) & set(default["services"])
    assert set(LOGS_SERVICES) <= set(profile["services"])
    for name in LOGS_SERVICES:
        service = profile["services"][name]
        assert service["profiles"] == ["logs"]
        assert not service.get("ports"), f"{name} is published on the host (Loki has no auth)"
        assert "catsdogs" in service["networks"]
    assert {"loki-data", "alloy-data"} <= set(profile["volumes"])


def test_loki_mounts_its_config_and_keeps_data_in_a_volume(profile: dict) -> None:
    loki = profile["services"]["loki"]
    mounts = {m["target"]: m for m in loki["volumes"]}
    assert Path(mounts["/etc/loki/loki.yaml"]["source"]) == LOKI_CONFIG
    assert mounts["/etc/loki/loki.yaml"]["read_only"]
    assert mounts["/loki"]["type"] == "volume" and mounts["/loki"]["source"] == "loki-data"
    assert "-config.file=/etc/loki/loki.yaml" in loki["command"]
    assert "-config.expand-env=true" in loki["command"]  # LOKI_RETENTION in loki.yaml
    assert loki["environment"]["LOKI_RETENTION"]


def test_alloy_reads_task_logs_and_the_engine_read_only(profile: dict) -> None:
    alloy = profile["services"]["alloy"]
    mounts = {m["target"]: m for m in alloy["volumes"]}
    assert Path(mounts["/etc/alloy/config.alloy"]["source"]) == ALLOY_CONFIG
    tasks = mounts["/opt/airflow/logs"]
    assert tasks["source"] == "airflow-logs" and tasks["read_only"]
    worker_logs = {m["target"]: m["source"]
                   for m in profile["services"]["airflow-worker-cpu"]["volumes"]}
    assert worker_logs["/opt/airflow/logs"] == tasks["source"]  # the volume Airflow writes
    assert mounts["/var/run/docker.sock"]["read_only"]
    assert alloy["group_add"], "Alloy joins the socket's group"
    assert "/etc/alloy/config.alloy" in alloy["command"]
    assert "--server.http.listen-addr=0.0.0.0:12345" in alloy["command"]  # the healthcheck's port
    assert alloy["environment"]["COMPOSE_PROJECT"] == profile["name"]
    assert alloy["healthcheck"]["test"]


def test_images_have_one_home_with_pinned_versions() -> None:
    """The compose defaults are the images' one home; .env.example lists the same, commented."""
    compose = COMPOSE_FILE.read_text()
    example = (REPO_ROOT / ".env.example").read_text()
    for variable, repository in (("LOKI_IMAGE", "grafana/loki"), ("ALLOY_IMAGE", "grafana/alloy")):
        (default,) = re.findall(rf"\$\{{{variable}:-([^}}]+)\}}", compose)
        assert re.fullmatch(rf"{repository}:v?\d+\.\d+\.\d+", default), default
        assert re.search(rf"^# {variable}={re.escape(default)}$", example, re.MULTILINE)


def test_compose_writes_json_lines_for_stages_and_the_service(profile: dict) -> None:
    env = profile["services"]["airflow-scheduler"]["environment"]
    assert env["CATSDOGS_LOG_FORMAT"] == "json"
    assert env["CATSDOGS_SERVICE_ENV_CATSDOGS_LOG_FORMAT"] == "json"


# --- Loki ---------------------------------------------------------------------------------------
def test_loki_config_matches_the_documented_schema_and_keeps_lines_for_the_retention() -> None:
    config = LokiConfig.model_validate(yaml.safe_load(LOKI_CONFIG.read_text()))
    assert config.compactor.retention_enabled, "without it Loki keeps lines forever"
    assert config.compactor.delete_request_store == "filesystem"  # required with retention
    assert config.schema_config.configs[-1].index.period == "24h"  # retention needs 24h
    assert config.schema_config.configs[-1].schema_ == "v13"  # structured metadata needs v13
    assert config.schema_config.configs[-1].store == "tsdb"
    assert config.limits_config.allow_structured_metadata
    retention = config.limits_config.retention_period
    default = re.fullmatch(r"\$\{LOKI_RETENTION:-(\w+)\}", retention)
    assert default, "the retention comes from LOKI_RETENTION"
    assert _hours(default.group(1)) >= 24  # Loki's minimum
    assert config.common.path_prefix == "/loki"  # the loki-data volume


def test_the_model_refuses_a_misspelt_key() -> None:
    config = yaml.safe_load(LOKI_CONFIG.read_text())
    config["compactor"]["retention_enable"] = True
    with pytest.raises(ValueError, match="retention_enable"):
        LokiConfig.model_validate(config)


# --- Alloy --------------------------------------------------------------------------------------
def test_alloy_config_uses_documented_components_arguments_and_blocks(alloy: list[Block]) -> None:
    for block in alloy:
        if block.label is None:
            assert block.name in CONFIG_BLOCKS, f"line {block.line}: unknown block {block.name}"
            assert set(block.attributes) <= CONFIG_BLOCKS[block.name]
            continue
        assert block.name in COMPONENTS, f"line {block.line}: {block.name} is no component"
        arguments, blocks, _ = COMPONENTS[block.name]
        assert set(block.attributes) <= arguments, (block.name, set(block.attributes) - arguments)
        for inner in block.blocks:
            assert inner.name in blocks, f"line {inner.line}: {block.name} has no {inner.name}"
            allowed = blocks[inner.name]
            assert set(inner.attributes) <= allowed, (inner.name, set(inner.attributes) - allowed)
            assert not inner.blocks, f"line {inner.line}: unexpected nested block"


def test_every_reference_names_an_export_of_a_component_of_the_file(alloy: list[Block]) -> None:
    components = _components(alloy)
    for block in alloy:
        values = [*block.attributes.values(),
                  *(v for inner in block.blocks for v in inner.attributes.values())]
        for ref in refs(values):
            component, export = ref.path.rsplit(".", 1)
            assert component in components, f"{block.name}: {ref.path} names no component"
            assert export in COMPONENTS[components[component].name][2], ref.path
        for call in (v for v in block.attributes.values() if isinstance(v, Concat)):
            assert all(isinstance(p, str) or (isinstance(p, Call) and p.name in STDLIB)
                       for p in call.parts)
    # the pipeline ends in Loki: every source reaches loki.write through the redact stage
    for name in ("loki.source.file.airflow_tasks", "loki.source.docker.project"):
        seen, todo = set(), [name]
        while todo:
            current = components[todo.pop()]
            for ref in refs(current.attributes.get("forward_to", [])):
                target = ref.path.rsplit(".", 1)[0]
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        assert {"loki.process.redact", "loki.write.loki"} <= seen, (name, seen)
    assert refs(components["loki.process.redact"].attributes["forward_to"]) == [
        Ref("loki.write.loki.receiver")]
    (endpoint,) = components["loki.write.loki"].blocks
    assert endpoint.attributes["url"] == "http://loki:3100/loki/api/v1/push"


def _stage_values(block: Block, stage: str) -> set[str]:
    found: set[str] = set()
    for inner in block.blocks:
        if inner.name == stage:
            values = inner.attributes["values"]
            found |= set(values) if isinstance(values, dict | list) else set()
    return found


def test_labels_are_few_and_run_ids_are_never_labels(alloy: list[Block]) -> None:
    components = _components(alloy)
    tasks = components["loki.process.airflow_tasks"]
    assert _stage_values(tasks, "stage.labels") == {"dag_id", "task_id", "try", "level"}
    assert "run_id" in _stage_values(tasks, "stage.structured_metadata")
    assert _stage_values(tasks, "stage.label_drop") == {"filename"}  # it holds the run id
    relabel = components["discovery.relabel.project"]
    relabelled = {rule.attributes["target_label"] for rule in relabel.blocks}
    assert relabelled == {"service", "model_version"}
    labels = set()
    for block in alloy:
        labels |= _stage_values(block, "stage.labels")
        labels |= set(block.attributes.get("labels", {}))
        for target in block.attributes.get("path_targets", []):
            labels |= {k for k in target if not k.startswith("__")}
    assert labels | relabelled <= ALLOWED_LABELS, labels - ALLOWED_LABELS


def test_the_docker_source_reads_this_project_and_labels_the_bento_slots(
        alloy: list[Block]) -> None:
    components = _components(alloy)
    (flt,) = components["discovery.docker.project"].blocks
    assert flt.attributes["name"] == "label"
    (value,) = flt.attributes["values"]
    assert value == Concat(("com.docker.compose.project=", Call("sys.env", ("COMPOSE_PROJECT",))))
    # the label the compose target puts on the Bento containers, as Alloy sanitises it
    target_source = (REPO_ROOT / "include" / "catsdogs" / "deployment" / "targets" /
                     "compose.py").read_text()
    (docker_label,) = re.findall(r'"(org\.catsdogs\.model\.version)"', target_source)
    rules = {r.attributes["target_label"]: r.attributes["source_labels"]
             for r in components["discovery.relabel.project"].blocks}
    assert rules["model_version"] == [
        "__meta_docker_container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", docker_label)]
    assert rules["service"] == ["__meta_docker_container_label_com_docker_compose_service"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/opt/airflow/logs/dag_id=catsdogs_training/run_id=scheduled__2026-12-07T02:00:00+00:00/"
     "task_id=train/attempt=2.log",
     {"dag_id": "catsdogs_training", "run_id": "scheduled__2026-12-07T02:00:00+00:00",
      "task_id": "train", "map_index": "", "try": "2"}),
    ("/opt/airflow/logs/dag_id=catsdogs_monitoring/run_id=manual__2026-12-06T10:11:12.5+00:00/"
     "task_id=score/map_index=3/attempt=1.log",
     {"dag_id": "catsdogs_monitoring", "run_id": "manual__2026-12-06T10:11:12.5+00:00",
      "task_id": "score", "map_index": "3", "try": "1"}),
])
def test_task_log_paths_give_the_labels(alloy: list[Block], path: str,
                                        expected: dict[str, str]) -> None:
    """Airflow 3's log_filename_template (dag_id=/run_id=/task_id=/[map_index=/]attempt=N.log)
    through the stage.regex expression, under RE2; and the glob Alloy tails matches it."""
    tasks = _components(alloy)["loki.process.airflow_tasks"]
    (regex,) = [b for b in tasks.blocks if b.name == "stage.regex"]
    assert regex.attributes["source"] == "filename"
    found = re2.search(regex.attributes["expression"], path)
    assert found is not None
    assert {k: v or "" for k, v in found.groupdict().items()} == expected
    (target,) = _components(alloy)["local.file_match.airflow_tasks"].attributes["path_targets"]
    glob = re.escape(target["__path__"]).replace(r"/\*\*/", "/(?:.*/)?").replace(r"\*", "[^/]*")
    assert re.fullmatch(glob, path), target["__path__"]
    from airflow.configuration import conf

    template = conf.get("logging", "log_filename_template")
    assert "dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/task_id={{ ti.task_id }}/" in template
    assert "attempt={{ try_number" in template


# --- secrets ------------------------------------------------------------------------------------
SECRET_LINES = [
    ("mlflow: postgresql+psycopg2://catsdogs:s3cret-pw@postgres:5432/mlflow", "s3cret-pw"),
    ("broker redis://:redis-pass-123@redis:6379/0 unreachable", "redis-pass-123"),
    ("KAGGLE_KEY=0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ('{"level": "info", "message": "conf {\\"password\\": \\"hunter2hunter2\\"}"}',
     "hunter2hunter2"),
    ("AIRFLOW__API_AUTH__JWT_SECRET: not-for-logs-42", "not-for-logs-42"),
    ("GET /api/v2/dags Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("api_key='AKIAXXXXXXXXXXXX'", "AKIAXXXXXXXXXXXX"),
]
CLEAN_LINES = ["model CatsDogsCNN v7 ready on cpu: variant torch-fp32", "token budget 5 left",
               "http://mlflow:5000/#/experiments/1", "refused a request: url_not_accepted (400)"]


def _alloy_replace(expression: str, replace: str, line: str) -> str:
    """Alloy's stage.replace: in every match, each capture group's text becomes `replace`."""
    out, last = [], 0
    for found in re2.finditer(expression, line):
        for group in range(1, found.re.groups + 1):
            start, end = found.span(group)
            if start >= 0:
                out += [line[last:start], replace]
                last = end
    return "".join(out) + line[last:]


def _alloy_redact(alloy: list[Block], line: str) -> str:
    for stage in _components(alloy)["loki.process.redact"].blocks:
        assert stage.name == "stage.replace" and "source" not in stage.attributes
        line = _alloy_replace(stage.attributes["expression"], stage.attributes["replace"], line)
    return line


def test_alloy_redacts_with_the_patterns_of_the_structured_logger(alloy: list[Block]) -> None:
    stages = _components(alloy)["loki.process.redact"].blocks
    assert tuple(s.attributes["expression"] for s in stages) == SECRET_PATTERNS
    assert {s.attributes["replace"] for s in stages} == {MASK}
    for pattern in SECRET_PATTERNS:
        assert re2.compile(pattern).groups == 1, pattern  # compiles in RE2; one group: the secret


@pytest.mark.parametrize(("line", "secret"), SECRET_LINES)
def test_no_secret_survives_either_redaction(alloy: list[Block], line: str, secret: str) -> None:
    for redacted in (_alloy_redact(alloy, line), redact(line)):
        assert secret not in redacted and MASK in redacted, redacted
    assert _alloy_redact(alloy, line) == redact(line)  # RE2 and Python agree


@pytest.mark.parametrize("line", CLEAN_LINES)
def test_lines_without_secrets_pass_unchanged(alloy: list[Block], line: str) -> None:
    assert _alloy_redact(alloy, line) == line == redact(line)


# --- Grafana ------------------------------------------------------------------------------------
def _loki_source() -> dict[str, Any]:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "loki.yaml").read_text())
    (source,) = sources["datasources"]
    return source


def test_grafana_gets_loki_as_a_provisioned_data_source(profile: dict) -> None:
    source = _loki_source()
    loki_port = yaml.safe_load(LOKI_CONFIG.read_text())["server"]["http_listen_port"]
    assert source["type"] == "loki" and source["url"] == f"http://loki:{loki_port}"
    assert source["access"] == "proxy" and not source["isDefault"]
    prometheus = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
                                .read_text())["datasources"][0]
    assert source["uid"] != prometheus["uid"]
    mounts = {m["target"]: Path(m["source"]) for m in profile["services"]["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"


def test_dashboard_links_panels_to_the_matching_logs() -> None:
    board = json.loads((GRAFANA / "dashboards" / "catsdogs-service.json").read_text())
    uid = _loki_source()["uid"]
    links = {p["title"]: p.get("links", []) for p in board["panels"]}
    assert links["Rejected requests by reason"] and links["Model version served"]
    for link in (link for found in links.values() for link in found):
        url = urllib.parse.urlsplit(link["url"])
        assert url.path == "/explore"
        query = urllib.parse.parse_qs(url.query)
        (panes,) = query["panes"]
        (pane,) = json.loads(panes).values()
        assert pane["datasource"] == uid
        assert pane["range"] == {"from": "${__from}", "to": "${__to}"}  # the panel's range
        (target,) = pane["queries"]
        assert target["datasource"] == {"type": "loki", "uid": uid}
        expr = target["expr"]
        selector = re.match(r"^\{([^}]*)\}", expr)
        assert selector, expr
        names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector.group(1)))
        assert names and names <= ALLOWED_LABELS, names
    refused = links["Rejected requests by reason"][0]["url"]
    assert "refused a request" in urllib.parse.unquote(refused)  # the service's refusal line
    service_source = (REPO_ROOT / "bentoservice" / "guard.py").read_text()
    assert '"refused a request: %s (%d)"' in service_source


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_alloys_healthcheck_reads_the_readiness_answer(profile: dict, status: int,
                                                       healthy: bool) -> None:
    """The healthcheck's bash (the image has no HTTP client) against a loopback stand-in that
    answers `/-/ready` as Alloy's HTTP service does."""
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status if self.path == "/-/ready" else 404)
            self.end_headers()
            self.wfile.write(b"Alloy is ready.\n")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        test = profile["services"]["alloy"]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "bash", "-c"]
        script = test[3].replace("$$", "$")
        assert "/dev/tcp/127.0.0.1/12345" in script  # --server.http.listen-addr's port
        script = script.replace("/12345", f"/{server.server_port}")
        result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10,
                                check=False)
        assert (result.returncode == 0) is healthy, result
    finally:
        server.shutdown()
        server.server_close()
