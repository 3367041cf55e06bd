"""A registered network is loaded without unpickling anything (catsdogs.registry.safeload): its
architecture is built from code and its safetensors weights poured in. Against a real MLflow
server whose artifact store is a folder here, MLflow's pickle of a version is replaced by one
whose `__reduce__` writes a marker file, and the version's sha256 tag re-recorded to match (what
whoever can write both the store and the registry, or registers a version, could do): the
version still loads its own weights and the marker never appears; once its safetensors weights
are gone too it is refused, naming the version. The control at the end shows the payload is
live: with CATSDOGS_LOAD_PICKLED_MODELS on, the same artifact writes the marker."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from catsdogs.errors import UserError
from catsdogs.registry.integrity import download_verified, record_digest
from catsdogs.registry.record import VersionRecord, load_model
from catsdogs.registry.safeload import WEIGHTS_PATH, load_network, save_weights
from catsdogs.training.model import build_model
from tests.servers import registered_tiny_model

NAME = "CatsDogsSafeLoad"
CPU = torch.device("cpu")


class Payload:
    """Unpickling it runs `exec` of a line that writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A server with one version of NAME registered as training does: (url, artifact folder on
    disk, version)."""
    with registered_tiny_model(tmp_path_factory.mktemp("mlflow-safeload"), NAME) as registered:
        yield registered


def _retag(client: MlflowClient, version: str, folder: Path) -> VersionRecord:
    """Record the digest of the artifact as it now is (the attacker's registry write)."""
    record_digest(client, NAME, version, folder)
    return VersionRecord.from_model_version(client.get_model_version(NAME, version))


@pytest.mark.services
def test_a_pickle_that_runs_code_is_never_unpickled(
        registered: tuple[str, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, artifacts, version = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
    monkeypatch.delenv("CATSDOGS_LOAD_PICKLED_MODELS", raising=False)
    client = MlflowClient()
    record = VersionRecord.from_model_version(client.get_model_version(NAME, version))
    honest = load_model(record, CPU)
    [stored] = [p.parent.parent for p in artifacts.rglob("model.pth") if p.parent.name == "data"]
    assert (stored / WEIGHTS_PATH).is_file(), "register saves the safetensors weights"

    marker = tmp_path / "marker"
    (stored / "data" / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    record = _retag(client, version, tmp_path / "retag1")
    loaded = load_model(record, CPU)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 honest.state_dict().values(), strict=True))
    assert not marker.exists()

    (stored / WEIGHTS_PATH).unlink()
    record = _retag(client, version, tmp_path / "retag2")
    with pytest.raises(UserError, match=f"{NAME} v{version} refused: it has no {WEIGHTS_PATH}"):
        load_model(record, CPU)
    assert not marker.exists()

    # control: the payload is live, and CATSDOGS_LOAD_PICKLED_MODELS is what keeps it out
    monkeypatch.setenv("CATSDOGS_LOAD_PICKLED_MODELS", "1")
    with pytest.raises(Exception):  # noqa: B017,PT011 (exec's None is no network)
        load_network(download_verified(record, tmp_path / "control"), name=NAME,
                     version=version, arch=record.arch, classes=2)
    assert marker.read_text() == "unpickled"


def test_an_architecture_not_built_from_code_is_refused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CATSDOGS_LOAD_PICKLED_MODELS", raising=False)
    marker = tmp_path / "marker"
    (tmp_path / "model" / "data").mkdir(parents=True)
    (tmp_path / "model" / "data" / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    save_weights(build_model("resnet18", weights="none"), tmp_path / "model" / "extra_files")
    with pytest.raises(UserError, match="M v7 refused: its architecture 'colour' is not one"):
        load_network(tmp_path / "model", name="M", version="7", arch="colour", classes=2)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    save_weights(build_model("mobilenet_v2", weights="none"), tmp_path / "extra_files")
    with pytest.raises(UserError, match=r"M v3: its weights \(extra_files/weights.safetensors\) "
                       "do not fit a resnet18 with 2 classes"):
        load_network(tmp_path, name="M", version="3", arch="resnet18", classes=2)
    shutil.rmtree(tmp_path / "extra_files")
    (tmp_path / "extra_files").mkdir()
    (tmp_path / WEIGHTS_PATH).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="M v3: its weights"):
        load_network(tmp_path, name="M", version="3", arch="resnet18", classes=2)
