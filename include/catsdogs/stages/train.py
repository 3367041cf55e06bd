"""The train stage: transfer-learn the CNN on transformed/, log everything to MLflow, register the
model as a new `CatsDogsCNN` version with alias `challenger`.

Idempotent: a finished run with the same fingerprint (data files, params, device) is reused unless
`--force` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.data import provenance
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import fingerprint, sha256_file
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GIT_COMMIT_ENV = "CATSDOGS_GIT_COMMIT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="train even if a finished run with the same data and params exists")


def _check_inputs(paths: DataPaths) -> None:
    missing = [str(paths.split_dir(split)) for split in SPLITS if not paths.split_dir(split).is_dir()]
    if missing:
        raise UserError(f"training data missing: {', '.join(missing)}; run `catsdogs transform` "
                        "first (or the whole pipeline)")


def data_hash(paths: DataPaths) -> str:
    """A hash of every transformed image (relative path + content) the run trains and tests on."""
    files = sorted(p for split in SPLITS for p in paths.split_dir(split).rglob("*") if p.is_file()
                   and not p.name.startswith("."))
    return fingerprint([(str(p.relative_to(paths.transformed)), sha256_file(p)) for p in files])


def _git_commit() -> str:
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _previous_run(experiment: str, run_fingerprint: str) -> Any | None:
    import mlflow

    runs = mlflow.search_runs(
        [experiment], output_format="list", max_results=1,
        filter_string=f"tags.`catsdogs.fingerprint` = '{run_fingerprint}' "
                      "and attributes.status = 'FINISHED' and tags.registered_version != ''")
    return runs[0] if runs else None


def run(params: Params, paths: DataPaths, force: bool = False) -> Summary:
    """Train, evaluate on the test split with the best-by-val-F1 weights, log and register."""
    from catsdogs import tracking

    _check_inputs(paths)
    tracking.connect(paths)
    experiment = tracking.experiment_id(params.mlflow.experiment_name, paths)

    from catsdogs.training.loop import pick_device, resolve_precision

    device = pick_device()
    precision = resolve_precision(params.train.precision, device)
    hashed = data_hash(paths)
    run_fingerprint = fingerprint(hashed, params.fingerprint("transform", "train", "model"),
                                  device.type, precision)
    previous = None if force else _previous_run(experiment, run_fingerprint)
    if previous is not None:
        version = previous.data.tags["registered_version"]
        return Summary("train", f"run {previous.info.run_id} already trained these data and "
                       f"params (version {version}); use --force to train again", skipped=True,
                       details={"run_id": previous.info.run_id, "experiment_id": experiment,
                                "version": version,
                                "test": {key.removeprefix("test_"): value for key, value
                                         in previous.data.metrics.items()
                                         if key.startswith("test_")}})
    data = provenance.read(paths.transformed)
    if data is not None and data.synthetic:
        log.warning("training on %s, a GENERATED stand-in data set: the model is tagged "
                    "%s=true. %s", data.source, provenance.SYNTHETIC_TAG, provenance.REAL_DATA_HINT)
    return _train(params, paths, experiment, device, precision,
                  tags={"device": str(device), "precision": precision,
                        "data.transformed_sha256": hashed,
                        "data.manifest_sha256": _manifest_hash(paths),
                        "git.commit": _git_commit(), "catsdogs.fingerprint": run_fingerprint,
                        **(data.tags() if data is not None else {})})


def _manifest_hash(paths: DataPaths) -> str:
    manifest = paths.prepared_manifest
    return sha256_file(manifest) if manifest.exists() else "absent"


def _train(params: Params, paths: DataPaths, experiment: str, device: Any, precision: str,
           tags: dict[str, str]) -> Summary:
    import mlflow
    import torch

    from catsdogs import tracking
    from catsdogs.config import CLASSES
    from catsdogs.training.loading import ImageFolderDataset, make_loader, seed_everything
    from catsdogs.training.loop import fit, predict
    from catsdogs.training.metrics import classification_metrics
    from catsdogs.training.model import build_model, eval_transform, train_transform

    settings, size = params.train, params.transform.image_size
    seed_everything(settings.seed)
    model = build_model(params.model.arch, params.model.weights, len(CLASSES),
                        params.model.freeze_backbone)
    loaders = {
        split: make_loader(
            ImageFolderDataset(paths.split_dir(split),
                               train_transform(size) if split == "train" else eval_transform(size)),
            settings.batch_size, shuffle=split == "train", seed=settings.seed,
            num_workers=settings.num_workers, device=device)
        for split in SPLITS
    }
    run_name = f"{params.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(experiment_id=experiment, run_name=run_name) as active:
        mlflow.log_params(params.flat())
        mlflow.set_tags(tags | tracking.orchestrator_tags())
        log.info("training %s on %s (%s), %d train images, run %s", params.model.arch, device,
                 precision, len(loaders["train"].dataset), active.info.run_id)
        result = fit(model, loaders["train"], loaders["val"], epochs=settings.epochs,
                     lr=settings.lr, device=device, precision=precision,
                     on_epoch=lambda epoch, values: mlflow.log_metrics(values, step=epoch))
        model.load_state_dict(result.best_state)
        labels, probs = predict(model, loaders["test"], device, precision)
        test = classification_metrics(labels, probs)
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items()}
                           | {"best_epoch": result.best_epoch,
                              "train_images_per_second": result.images_per_second})
        _log_reports(paths, params, active.info.run_id, device, precision, result, test,
                     labels, probs)
        example = next(iter(loaders["test"]))[0][:2].numpy()
        model = model.to("cpu").float().to(memory_format=torch.contiguous_format)
        version = tracking.log_and_register(
            model.eval(), params.mlflow.registered_model_name, example,
            tracking.version_tags(size, CLASSES, params.model.arch,
                                  provenance.Provenance.from_tags(tags)))
        mlflow.set_tag("registered_version", version.version)
    if (ui := tracking.ui_base_url()) is not None:
        log.info("MLflow run: %s", tracking.run_url(ui, experiment, active.info.run_id))
        log.info("MLflow experiment (all runs): %s", tracking.experiment_url(ui, experiment))
    message = (f"{params.model.arch} test F1 {test['f1']:.4f}, accuracy {test['accuracy']:.4f} "
               f"(best epoch {result.best_epoch}); registered "
               f"{params.mlflow.registered_model_name} v{version.version} @challenger "
               f"(run {active.info.run_id})")
    return Summary("train", message, details={
        "run_id": active.info.run_id, "experiment_id": experiment, "version": version.version,
        "test": test,
        "best_epoch": result.best_epoch, "device": str(device), "precision": precision,
        "train_images_per_second": result.images_per_second})


def _log_reports(paths: DataPaths, params: Params, run_id: str, device: Any, precision: str,
                 result: Any, test: dict[str, float], labels: list[int],
                 probs: list[float]) -> None:
    """Plots, classification report, performance report, plus the validation summary and EDA
    (without the stages' internal stamp files)."""
    import mlflow

    from catsdogs import tracking
    from catsdogs.training import reports

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reports.plot_confusion(labels, probs, folder / "confusion_matrix.png")
        reports.plot_roc(labels, probs, folder / "roc_curve.png")
        (folder / "classification_report.txt").write_text(
            reports.classification_report(labels, probs))
        (folder / "model_performance_report.md").write_text(reports.performance_report(
            run_id=run_id, arch=params.model.arch, device=str(device), precision=precision,
            params=params.flat(), history=result.history, best_epoch=result.best_epoch,
            test=test, labels=labels, probs=probs, images_per_second=result.images_per_second))
        mlflow.log_artifacts(str(folder), "reports")
    summary = paths.validation_reports / "summary.json"
    if summary.exists():
        mlflow.log_artifact(str(summary), "validation")
    else:
        log.warning("no validation summary at %s to log", summary)
    if paths.eda.is_dir():
        tracking.log_folder(paths.eda, "eda")
    else:
        log.warning("no EDA folder at %s to log", paths.eda)
