"""catsdogs.settings: the one place `CATSDOGS_*` variables are read. Every bad variable is named in
one message, renamed variables still work (with a warning), the docs' tables are the classes'
own, and every variable the docs, compose, Helm values and .env.example name is a real setting."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from catsdogs import settings
from catsdogs.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CODE = [REPO / "include", REPO / "bentoservice", REPO / "dags", REPO / "plugins"]
# CATSDOGS_* names that are no runtime setting of the package: test switches, image-build and
# compose-interpolation variables read by shell or YAML, and the slot processes' marker
NOT_SETTINGS = {"CATSDOGS_E2E", "CATSDOGS_E2E_KEEP", "CATSDOGS_FRESH_MACHINE",
                "CATSDOGS_FUZZ_EXAMPLES", "CATSDOGS_NFS_SERVER", "CATSDOGS_NFS_EXPORT",
                "CATSDOGS_NFS_OPTIONS", "CATSDOGS_TORCH_SOURCE", "CATSDOGS_DATABASES",
                "CATSDOGS_SERVING_OF", "CATSDOGS_PORT"}
PREFIXES = ("CATSDOGS_COMPOSE", "CATSDOGS_DEPLOY", "CATSDOGS_K8S", "CATSDOGS_KUBE",
            "CATSDOGS_SERVICE_ENV")  # prose naming a family ("`CATSDOGS_DEPLOY_*`")


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*settings.variables(), *settings.RENAMED]:
        monkeypatch.delenv(name, raising=False)


def test_every_bad_variable_of_every_class_is_named_in_one_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("CATSDOGS_RUNNER", "celery")
    monkeypatch.setenv("CATSDOGS_TASK_RETRIES", "-1")
    monkeypatch.setenv("CATSDOGS_K8S_GPU_NODE_SELECTOR", "gpu=true")
    monkeypatch.setenv("CATSDOGS_BENTO_SLOT_PORTS", "3010,3010")
    monkeypatch.setenv("BENTO_PORT", "http")
    monkeypatch.setenv("CATSDOGS_DEPLOY_TARGET", "swarm")
    with pytest.raises(settings.SettingsError) as raised:
        settings.check_all()
    message = str(raised.value)
    for shown in ("CATSDOGS_RUNNER='celery'", "CATSDOGS_TASK_RETRIES='-1'",
                  "CATSDOGS_K8S_GPU_NODE_SELECTOR='gpu=true'", "CATSDOGS_BENTO_SLOT_PORTS",
                  "BENTO_PORT='http'", "CATSDOGS_DEPLOY_TARGET='swarm'", "docs/airflow.md",
                  "docs/rollout.md", "docs/kubernetes.md"):
        assert shown in message, (shown, message)
    assert isinstance(raised.value, UserError) and "Traceback" not in message


def test_values_defaults_and_standard_names(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    runner = settings.load(settings.RunnerSettings)
    assert (runner.runner, runner.worker_mlflow_uri, runner.task_retries, runner.gpu) == (
        "docker", "http://mlflow:5000", 2, False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert settings.load(settings.RunnerSettings).worker_mlflow_uri == "http://tracking:5000"
    monkeypatch.setenv("CATSDOGS_WORKER_MLFLOW_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("CATSDOGS_RUNNER", " Local ")
    monkeypatch.setenv("CATSDOGS_GPU", "true")
    monkeypatch.setenv("CATSDOGS_TASK_RETRIES", "")  # empty: the default
    runner = settings.load(settings.RunnerSettings)
    assert (runner.runner, runner.worker_mlflow_uri, runner.task_retries, runner.gpu) == (
        "local", "http://mlflow.internal:5000", 2, True)
    monkeypatch.setenv("CATSDOGS_BENTO_SLOT_PORTS", " 4010 , 4011 ")
    monkeypatch.setenv("CATSDOGS_K8S_GPU_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    assert settings.load(settings.LocalTargetSettings).bento_slot_ports == (4010, 4011)
    assert settings.load(settings.KubernetesSettings).k8s_gpu_tolerations == [
        {"key": "gpu", "operator": "Exists"}]


def test_renamed_variables_are_read_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("CATSDOGS_KUBE_ENDPOINT", "http://catsdogs.catsdogs.svc:3000")
    monkeypatch.setenv("CATSDOGS_KUBE_NAMESPACE", "serving")
    monkeypatch.setenv("CATSDOGS_K8S_RELEASE_NAMESPACE", "models")  # the new name wins
    monkeypatch.setattr(settings, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="catsdogs.settings"):
        target = settings.load(settings.KubernetesTargetSettings)
        settings.load(settings.KubernetesTargetSettings)  # warned once a process
    assert target.k8s_release_endpoint == "http://catsdogs.catsdogs.svc:3000"
    assert target.k8s_release_namespace == "models"
    assert caplog.text.count("CATSDOGS_KUBE_ENDPOINT is deprecated: set "
                             "CATSDOGS_K8S_RELEASE_ENDPOINT") == 1
    # what a rollout stage is given carries the new names only
    passed = settings.set_variables(settings.DEPLOY_CLASSES)
    assert passed["CATSDOGS_K8S_RELEASE_ENDPOINT"] == "http://catsdogs.catsdogs.svc:3000"
    assert not any(name.startswith("CATSDOGS_KUBE_") for name in passed)


def test_the_check_command_names_the_bad_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "include"),
           "CATSDOGS_MAX_PIXELS": "lots", "CATSDOGS_K8S_GPUS": "0"}
    done = subprocess.run([sys.executable, "-m", "catsdogs.settings", "--check"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == UserError.exit_code, done
    assert "CATSDOGS_MAX_PIXELS='lots'" in done.stderr and "CATSDOGS_K8S_GPUS='0'" in done.stderr
    assert "Traceback" not in done.stderr
    env.pop("CATSDOGS_MAX_PIXELS"), env.pop("CATSDOGS_K8S_GPUS")
    done = subprocess.run([sys.executable, "-m", "catsdogs.settings", "--check"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "all valid" in done.stdout, done


def test_the_docs_tables_are_generated_from_the_classes() -> None:
    for cls in settings.CLASSES:
        text = (REPO / cls.DOCS).read_text()
        assert f"<!-- settings:{cls.__name__} -->" in text, f"{cls.DOCS} lacks {cls.__name__}"
    for path in settings.doc_files(REPO):
        text = path.read_text()
        assert settings.render_docs(text) == text, (
            f"{path} is out of date: run `python -m catsdogs.settings --write-docs .`")


def test_every_variable_the_docs_and_deploy_files_name_is_a_setting() -> None:
    known = set(settings.variables()) | set(settings.RENAMED) | NOT_SETTINGS
    files = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md", REPO / ".env.example",
             REPO / "docker-compose.yaml", REPO / "helm" / "airflow" / "values.yaml",
             REPO / "helm" / "catsdogs" / "values.yaml"]
    unknown = {f"{path.relative_to(REPO)}: {name}" for path in files
               for name in re.findall(r"CATSDOGS_[A-Z0-9_]*[A-Z0-9]", path.read_text())
               if name not in known and name not in PREFIXES
               and not name.startswith("CATSDOGS_SERVICE_ENV_")}
    assert not unknown, sorted(unknown)


def _reads_of_catsdogs_variables(path: Path) -> list[str]:
    """`os.environ.get("CATSDOGS_X")`, `os.environ["CATSDOGS_X"]`, `os.getenv(...)`, also through
    a module constant holding the name."""
    tree = ast.parse(path.read_text())
    constants = {target.id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}

    def name_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            key = name_of(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = node.func
            if (func.attr in {"get", "pop", "setdefault"} and is_environ(func.value)) or \
                    func.attr == "getenv":
                key = name_of(node.args[0])
        if key and key.startswith(settings.PREFIX) and not key.startswith("CATSDOGS_SERVING_OF"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} reads {key}")
    return found


def test_no_module_but_settings_reads_a_catsdogs_variable() -> None:
    own = REPO / "include" / "catsdogs" / "settings.py"
    reads = [read for folder in CODE for path in sorted(folder.rglob("*.py")) if path != own
             for read in _reads_of_catsdogs_variables(path)]
    assert not reads, reads
    assert _reads_of_catsdogs_variables(own) == []  # pydantic-settings reads them, not os.environ
