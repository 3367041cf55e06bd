"""A model is verified before it serves (catsdogs.registry.integrity): the sha256 recorded when
a version is registered is checked before anything unpickles it. Against a real MLflow server
whose artifact store is a folder here: a version registered as training does carries its digest;
once its artifact is changed on disk, loading it (promote, evaluate, score) and importing it
into the Bento store (every deploy's image) are refused, naming the version, before the pickle
is read."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catsdogs.errors import UserError
from catsdogs.registry.integrity import download_verified, tree_digest
from catsdogs.registry.names import DIGEST_TAG
from catsdogs.registry.record import VersionRecord, load_model
from tests.servers import mlflow_env, registered_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "CatsDogsIntegrity"


def test_tree_digest_changes_with_any_file_change(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "data").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "data" / "model.pth").write_bytes(b"\x80\x04weights")
    first = tree_digest(folder)
    assert len(first) == 64 and tree_digest(folder) == first
    (folder / "data" / "model.pth").write_bytes(b"\x80\x04weightz")
    changed = tree_digest(folder)
    (folder / "data" / "model.pth").rename(folder / "data" / "other.pth")
    renamed = tree_digest(folder)
    (folder / "extra.py").write_text("import os\n")
    added = tree_digest(folder)
    assert len({first, changed, renamed, added}) == 4


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A server with one version of NAME registered as training does: (url, artifact folder on
    disk, version)."""
    with registered_tiny_model(tmp_path_factory.mktemp("mlflow-integrity"), NAME) as registered:
        yield registered


@pytest.mark.services
def test_a_tampered_artifact_is_refused_naming_the_version(
        registered: tuple[str, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, artifacts, version = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
    record = VersionRecord.from_model_version(MlflowClient().get_model_version(NAME, version))
    digest = record.tags[DIGEST_TAG]
    assert tree_digest(download_verified(record, tmp_path / "first")) == digest
    import torch

    assert isinstance(load_model(record, torch.device("cpu")), torch.nn.Module)

    # someone who can write the artifact store swaps the pickled network
    [weights] = [p for p in artifacts.rglob("model.pth") if "data" in p.parts]
    weights.write_bytes(weights.read_bytes() + b"tampered")
    refused = f"{NAME} v{version} refused: its model artifact's sha256"
    with pytest.raises(UserError, match=refused):
        download_verified(record, tmp_path / "second")
    with pytest.raises(UserError, match=refused):
        load_model(record, torch.device("cpu"))
    imported = subprocess.run(
        [sys.executable, "-m", "bentoservice.import_model", "--model-uri",
         f"models:/{NAME}/{version}", "--data-dir", str(tmp_path / "data")],
        env=mlflow_env(url, BENTOML_HOME=str(tmp_path / "bentoml")), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=600)
    assert imported.returncode != 0
    assert refused in imported.stderr, imported.stderr[-2000:]
    assert not (tmp_path / "bentoml" / "models").exists() or not any(
        (tmp_path / "bentoml" / "models").rglob("MLmodel")), "nothing of it was stored"


def test_a_version_without_a_digest_is_not_loaded(tmp_path: Path) -> None:
    record = VersionRecord(name=NAME, version="9", run_id="r", tags={})
    with pytest.raises(UserError, match=f"{NAME} v9 has no `{DIGEST_TAG}` tag"):
        download_verified(record, tmp_path)
