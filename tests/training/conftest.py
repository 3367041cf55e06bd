"""Fixtures for the training tests: a tiny transformed/ layout and one real training run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.config import Params, load_params
from catsdogs.data import provenance
from catsdogs.data.synthetic import generate_dataset
from catsdogs.paths import DataPaths
from catsdogs.storage import write_stamp

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
# Tiny and fast: a small network from scratch, 1 epoch, no worker processes.
# temperature scaling on (default off) so the stage's tests cover the fit, the fold and the card
TINY = ["model.arch=mobilenet_v2", "model.weights=none", f"transform.image_size={IMAGE_SIZE}",
        "train.epochs=1", "train.batch_size=8", "train.num_workers=0",
        "train.temperature_scaling=true"]


def tiny_params(*extra: str) -> Params:
    return load_params(REPO_ROOT / "params.yaml", [*TINY, *extra])


def build_transformed(root: Path, per_class: int = 15) -> DataPaths:
    """transformed/{train,val,test}/{cat,dog}/ (60/20/20) resized to IMAGE_SIZE, with the
    provenance ingest records (a generated set), plus the validation summary and an EDA folder
    (with the stamp prepare writes there) the train stage logs."""
    source = generate_dataset(root / "generated", per_class=per_class)
    paths = DataPaths(root / "data")
    for label in ("cat", "dog"):
        files = sorted((source / label).glob("*.jpg"))
        for index, file in enumerate(files):
            split = ("train" if index < 0.6 * len(files) else
                     "val" if index < 0.8 * len(files) else "test")
            target = paths.split_dir(split) / label / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(file).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)).save(target)
    provenance.write(paths.transformed, provenance.Provenance(f"dir:{source}",
                                                              provenance.is_generated(source)))
    paths.validation_reports.mkdir(parents=True)
    (paths.validation_reports / "summary.json").write_text(json.dumps({"success": True}))
    paths.eda.mkdir(parents=True)
    (paths.eda / "class_balance.json").write_text(json.dumps({"cat": per_class, "dog": per_class}))
    write_stamp(paths.eda, "0123456789abcdef")
    return paths


@pytest.fixture(scope="session", autouse=True)
def shared_training_choices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One precision/layout measurement per image size for the whole session, not per data dir."""

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CATSDOGS_TRAINING_CHOICES", str(tmp_path_factory.mktemp("choices") / "choices.json"))
        yield


@pytest.fixture
def pickled_models_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-made networks (`crafted.ColourRule`, arch `colour`) are not built from code, so
    their registered versions load only by unpickling them (`catsdogs.registry.safeload`)."""
    monkeypatch.setenv("CATSDOGS_LOAD_PICKLED_MODELS", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    return build_transformed(tmp_path_factory.mktemp("training-data"))


@pytest.fixture(scope="session")
def trained(mlflow_server: str, tiny_data: DataPaths) -> Iterator[dict]:
    """One real 1-epoch `train` run against the session's MLflow server (default model name)."""
    from catsdogs.stages import train

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        summary = train.run(tiny_params(), tiny_data, force=True)
        yield summary.details
