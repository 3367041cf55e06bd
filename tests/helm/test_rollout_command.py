"""The Kubernetes rollout offline: the exact `helm upgrade` the deploy stage runs, its values
rendered with `helm template` and validated strictly, and the skip when no kube context exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from catsdogs.config import load_params
from catsdogs.deployment.release import Release, Skipped
from catsdogs.deployment.rollout import deploy_champion
from catsdogs.deployment.targets.kubernetes import KubernetesTarget, helm_upgrade_command
from catsdogs.paths import DataPaths
from tests.helm.conftest import CHART_DIR, NAMESPACE, RELEASE, REPO_ROOT, run_helm

REPOSITORY = "registry.example.com/catsdogs"


def test_helm_upgrade_command_is_exact() -> None:
    argv = helm_upgrade_command("/usr/bin/helm", RELEASE, str(CHART_DIR), NAMESPACE, REPOSITORY,
                                "v7", "300s")
    assert argv == ["/usr/bin/helm", "upgrade", "--install", RELEASE, str(CHART_DIR),
                    "--namespace", NAMESPACE, "--reset-then-reuse-values",
                    "--set", f"image.repository={REPOSITORY}", "--set", "image.tag=v7",
                    "--wait", "--atomic", "--timeout", "300s"]


def test_the_upgrades_values_render_a_valid_rolling_deployment(helm: Path, tmp_path: Path) -> None:
    """`helm template` with the upgrade's own --set pairs: the new tag reaches the Deployment,
    which replaces pods one at a time behind its readiness probe; every object validates."""
    argv = helm_upgrade_command(str(helm), RELEASE, str(CHART_DIR), NAMESPACE, REPOSITORY, "v7")
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for pair in sets:
        args += ["--set", pair]
    rendered = run_helm(helm, *args)
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    [deployment] = [obj for obj in objects if obj["kind"] == "Deployment"]
    spec = deployment["spec"]
    [bento] = spec["template"]["spec"]["containers"]
    assert bento["image"] == f"{REPOSITORY}:v7"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert bento["readinessProbe"]["httpGet"]["path"] == "/readyz"
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(cli), "--strict", "-k", "1.33.0", str(manifest)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Couldn't find schema" not in result.stdout + result.stderr


def test_without_a_kube_context_the_rollout_says_it_was_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path))          # neither kubectl nor helm here
    target = KubernetesTarget.from_env(load_params(REPO_ROOT / "params.yaml"))
    assert target.context() is None and target.serving() is None
    with pytest.raises(Skipped, match="no kube context"):
        target.deploy(Release("CatsDogsCNN", "1"))
    client = MlflowClient(tracking_uri)
    name = "CatsDogsK8sSkip"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"k8s-skip-{tmp_path.name}")).info.run_id
    version = client.create_model_version(name, f"runs:/{run}/model", run_id=run).version
    client.set_registered_model_alias(name, "champion", version)
    params = load_params(REPO_ROOT / "params.yaml", [f"mlflow.registered_model_name={name}"])
    summary = deploy_champion(params, DataPaths.resolve(tmp_path), target, client)
    assert summary.skipped and "skipped: no kube context" in summary.message
    assert summary.details["deployed"] is False
