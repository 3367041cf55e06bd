"""The evaluate stage: score a registered model on any folder of class sub-folders.

`catsdogs evaluate --images DIR [--model models:/CatsDogsCNN@champion] [--json]` prints accuracy,
precision, recall, F1, ROC-AUC (dog is the positive class), log loss and ECE, each with its 95%
interval (`metrics.<name>_ci_low` / `_ci_high`: `catsdogs.training.metrics`), and the confusion
matrix; with `--json`
a JSON document that also lists every prediction. It only reads the registry: it never creates a
store, and names the store it read (`store`, credentials left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path,
                        help="folder with cat/ and dog/ sub-folders of images")
    parser.add_argument("--model", default=None,
                        help="registered model URI (default: models:/<registered name>@champion)")


def evaluate(params: Params, paths: DataPaths, images: Path, model: str | None) -> dict[str, Any]:
    """Score `model` (a models:/ URI, resolved once; default `@champion`) on `images`: metrics,
    confusion matrix and per-image predictions."""
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.config import CLASSES
    from catsdogs.inference.compute import Compute, pick_device
    from catsdogs.registry.names import CHAMPION
    from catsdogs.registry.record import load_model, resolve
    from catsdogs.training.loading import ImageFolderDataset, list_images, make_loader
    from catsdogs.training.loop import predict
    from catsdogs.training.metrics import confusion, finite, with_intervals
    from catsdogs.training.model import eval_transform

    if not images.is_dir():
        raise UserError(f"--images {images}: not a folder; give a folder with "
                        f"{' and '.join(f'{c}/' for c in CLASSES)} sub-folders")
    list_images(images)                      # a folder without cat/ and dog/ fails before MLflow
    store = tracking.shown_uri(tracking.connect(paths, create=False))
    uri = model or f"models:/{params.mlflow.registered_model_name}@{CHAMPION}"
    record = resolve(MlflowClient(), uri)
    with tracking.talking_to_mlflow(f"downloading {record.uri}"):
        network = load_model(record, pick_device())
    device = pick_device()
    compute = Compute.resolve(params.train.precision, device)
    dataset = ImageFolderDataset(images, eval_transform(record.image_size))
    loader = make_loader(dataset, params.train.batch_size, shuffle=False, seed=0,
                         num_workers=params.train.num_workers, device=device)
    labels, probs = predict(network.to(device), loader, compute)
    metrics = with_intervals(labels, probs)
    return {
        "store": store, "model": uri, "version": record.version, "run_id": record.run_id, "images": str(images),
        "count": len(labels), "precision_mode": compute.precision,
        "metrics": finite(metrics),
        "confusion_matrix": {"labels": list(CLASSES), "rows_true_cols_predicted":
                             confusion(labels, probs)},
        "predictions": [
            {"path": str(path), "label": CLASSES[label], "prob_dog": prob,
             "predicted": CLASSES[int(prob >= 0.5)]}
            for (path, label), prob in zip(dataset.items, probs, strict=True)
        ],
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(params: Params, paths: DataPaths, images: Path, model: str | None = None) -> Summary:
    """Score `model` on `images`; `--json` prints every field of `evaluate` (predictions too)."""
    from catsdogs.training.metrics import METRIC_NAMES

    result = evaluate(params, paths, images, model)
    metrics = result["metrics"]
    matrix = result["confusion_matrix"]["rows_true_cols_predicted"]
    shown = ", ".join(f"{name} {_number(metrics[name])} [{_number(metrics[f'{name}_ci_low'])}, "
                      f"{_number(metrics[f'{name}_ci_high'])}]" for name in METRIC_NAMES)
    message = (f"{result['model']} (v{result['version']}, {result['store']}) on "
               f"{result['count']} images: {shown} (95% intervals); "
               f"confusion [[cat->cat, cat->dog], [dog->cat, dog->dog]] = {matrix}")
    return Summary("evaluate", message, details=result)
