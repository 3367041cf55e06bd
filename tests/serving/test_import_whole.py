"""The Bento import is whole or nothing (real MLflow server, real Bento store, real processes):
an import killed after the weights were stored leaves a model the next import removes and
imports again ("repaired", not "already imported"); an MLflow server killed during the import
ends it with one line and leaves no model at all; the service's completeness check names what a
model lacks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import start_mlflow_server
from tests.serving.conftest import REPO_ROOT
from tests.serving.test_import_model import _register_tiny

HOOK = "bentoservice.import_model:import_ood"   # runs right after the weights are stored


def _env(url: str, bento_home: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url,
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(bento_home), "CATSDOGS_MLFLOW_TIMEOUT_S": "10",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}


def _import(url: str, bento_home: Path, name: str, data: Path, stop: tuple[int, str] | None
            ) -> subprocess.CompletedProcess:
    args = ["--model-uri", f"models:/{name}@champion", "--calibration-images", "0",
            "--data-dir", str(data), "--json"]
    argv = ([sys.executable, "-m", "tests.outage_probe", str(stop[0]), stop[1], HOOK,
             "bentoservice.import_model", *args] if stop else
            [sys.executable, "-m", "bentoservice.import_model", *args])
    return subprocess.run(argv, env=_env(url, bento_home), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def _stored(bento_home: Path) -> list[dict]:
    """Every stored catsdogs_cnn model: tag and what it misses (runtime.missing_parts)."""
    probe = ("import json, bentoml; from pathlib import Path;"
             "from bentoservice.runtime import missing_parts;"
             "print(json.dumps([{'tag': str(m.tag), 'missing': missing_parts(Path(m.path), "
             "dict(m.info.metadata))} for m in bentoml.models.list() if m.tag.name == 'catsdogs_cnn']))")
    done = subprocess.run([sys.executable, "-c", probe], env=_env("", bento_home), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.services
def test_an_import_is_whole_or_nothing(tmp_path: Path) -> None:
    server, url = start_mlflow_server(tmp_path / "mlflow", Path(sys.executable))
    try:
        name = "CatsDogsWhole"
        version = _register_tiny(url, name)
        data = tmp_path / "data"

        # killed (as by SIGKILL) after the weights were stored: an incomplete model is left
        first = tmp_path / "bento-killed"
        killed = _import(url, first, name, data, (0, "before-self"))
        assert killed.returncode == 137, killed.stderr[-2000:]
        [left] = _stored(first)
        assert any("out-of-distribution" in m for m in left["missing"]), left

        # the next import removes it and imports the version again, whole
        again = _import(url, first, name, data, None)
        assert again.returncode == 0, again.stderr[-3000:]
        summary = json.loads(again.stdout.strip().splitlines()[-1])
        assert not summary["skipped"] and summary["repaired"] == [left["tag"]]
        assert summary["version"] == version
        assert _stored(first) == [{"tag": summary["tag"], "missing": []}]

        # the MLflow server killed after the weights were stored: one line, nothing stored
        second = tmp_path / "bento-outage"
        lost = _import(url, second, name, data, (server.pid, "before-SIGKILL"))
        assert lost.returncode == 4, lost.stderr[-3000:]
        assert "Traceback" not in lost.stderr
        assert lost.stderr.strip().splitlines()[-1].startswith(
            f"bento-import: error: MLflow server {url} stopped answering while downloading "
            "the out-of-distribution calibration"), lost.stderr[-3000:]
        assert _stored(second) == []
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, sig)
        server.wait(timeout=10)
