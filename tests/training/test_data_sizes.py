"""Every data size and batch size the params allow trains or is refused up front in one line
(issue 16, item 6): the real train stage against the session's MLflow server, at 32 px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.stages import train
from tests.training.conftest import tiny_params

SIZE = 32


def make_splits(root: Path, counts: dict[str, tuple[int, int]]) -> DataPaths:
    """transformed/<split>/{cat,dog}/ with (cats, dogs) pictures per split: cats dark, dogs
    bright, noisy, so a network can tell them apart."""
    paths = DataPaths(root / "data")
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for label, count in zip(("cat", "dog"), per_class, strict=True):
            folder = paths.split_dir(split) / label
            folder.mkdir(parents=True)
            for index in range(count):
                base = 60 if label == "cat" else 190
                pixels = np.clip(rng.normal(base, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{label}.{index}.jpg", quality=95)
    paths.validation_reports.mkdir(parents=True)
    (paths.validation_reports / "summary.json").write_text(json.dumps({"success": True}))
    return paths


def _params(recipe: str, batch: int, name: str):
    return tiny_params(f"transform.image_size={SIZE}", f"train.batch_size={batch}",
                       f"train.recipe={recipe}", "train.head_epochs=2",
                       f"mlflow.registered_model_name={name}")


@pytest.mark.parametrize("recipe", ["full", "top_blocks"])
@pytest.mark.parametrize(("case", "counts", "batch"), [
    ("last batch of one", {"train": (16, 16), "val": (3, 3), "test": (3, 3)}, 31),
    ("batch larger than the training set", {"train": (16, 16), "val": (3, 3), "test": (3, 3)}, 64),
    ("two training pictures", {"train": (1, 1), "val": (1, 1), "test": (1, 1)}, 32),
])
def test_data_and_batch_sizes_train(tmp_path, tracking_uri: str, recipe: str, case: str,
                                    counts: dict, batch: int) -> None:
    summary = train.run(_params(recipe, batch, "SizesCNN"), make_splits(tmp_path, counts),
                        force=True)
    assert summary.details["version"], case
    test = summary.details["test"]
    for metric in ("accuracy", "precision", "recall", "f1", "roc_auc"):   # each with its interval
        assert {metric, f"{metric}_ci_low", f"{metric}_ci_high"} <= set(test), (case, test)


def test_one_class_validation_and_test_splits_record_roc_auc_as_absent(tmp_path,
                                                                      tracking_uri: str) -> None:
    paths = make_splits(tmp_path, {"train": (8, 8), "val": (3, 0), "test": (0, 3)})
    summary = train.run(_params("top_blocks", 8, "OneClassCNN"), paths, force=True)
    assert summary.details["test"]["roc_auc"] is None
    json.dumps(summary.details, allow_nan=False)            # a summary stays strict JSON
    run = MlflowClient().get_run(summary.details["run_id"])
    assert "test_roc_auc" not in run.data.metrics and "test_accuracy" in run.data.metrics
    assert "val_roc_auc" not in run.data.metrics and "val_accuracy" in run.data.metrics


@pytest.mark.parametrize(("counts", "message"), [
    ({"train": (8, 8), "val": (0, 0), "test": (3, 3)}, r"val: no images found"),
    ({"train": (1, 0), "val": (2, 2), "test": (2, 2)}, r"holds 1 picture; training needs at least 2"),
])
def test_unusable_splits_are_refused_before_any_run(tmp_path, tracking_uri: str, counts: dict,
                                                    message: str) -> None:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("Cats vs Dogs CNN")
    before = len(client.search_runs([experiment.experiment_id])) if experiment else 0
    with pytest.raises(UserError, match=message) as caught:
        train.run(_params("full", 8, "RefusedCNN"), make_splits(tmp_path, counts), force=True)
    assert "\n" not in str(caught.value)
    experiment = client.get_experiment_by_name("Cats vs Dogs CNN")
    assert (len(client.search_runs([experiment.experiment_id])) if experiment else 0) == before
