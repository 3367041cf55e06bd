"""The train stage: transfer-learn the CNN on transformed/, log everything to MLflow, register the
model as a new `CatsDogsCNN` version with alias `challenger` and write its model card.

The training data set is recorded on the run with `mlflow.log_input` (`catsdogs.data.lineage`:
source, digests of the prepared manifest and of the transformed files, pictures per split and
class); the card (`catsdogs.registry.model_card`) is rendered from the run and the version.

The test figures carry their 95% intervals (`catsdogs.training.metrics`). With
`train.temperature_scaling` a temperature fitted on the val split is folded into the head before
the test split is scored (`catsdogs.training.calibration`): the registered weights carry it.

Besides metrics and reports, the run carries the model's reference profile and out-of-distribution
calibration (`monitoring/reference.parquet`, `monitoring/ood.json`, `monitoring/ood.npz`:
`catsdogs.monitoring.reference`), which the service and the monitor read by the version's run id.
The "neither"-labelled production pictures ingest kept (`raw/neither.csv`) are the OOD
calibration's known out-of-distribution pictures (metrics `ood_known_pictures`,
`ood_known_used`, `ood_known_flagged_share`; a line of the model card).

Idempotent: a finished run with the same fingerprint (data files, params, device) is reused unless
`--force` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from catsdogs.config import Params
from catsdogs.data import feedback, lineage, provenance
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.registry.names import CONFUSION_PICTURE, CONFUSION_TAG, REGISTERED_VERSION_TAG
from catsdogs.storage import fingerprint, sha256_file
from catsdogs.summary import Summary

if TYPE_CHECKING:
    import torch

    from catsdogs.inference.compute import Compute
    from catsdogs.training.loading import TensorSplit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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
    from catsdogs.settings import StageSettings, load

    known = load(StageSettings).git_commit
    if known:
        return known
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
                      f"and attributes.status = 'FINISHED' and tags.{REGISTERED_VERSION_TAG} != ''")
    return runs[0] if runs else None


PROCESS_TAG = "catsdogs.process"    # "<host>:<pid>:<process start ticks>" of the training process
ABANDONED_AFTER_S = 24 * 3600       # a RUNNING run of another host (or untagged) this old is dead


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), '' when
    there is no such process (or no /proc): with the pid it names one process, not a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _abandoned(tag: str | None, start_ms: int, now_s: float) -> bool:
    """Whether a RUNNING run's process is gone: tagged on this host, its pid no longer names the
    process that started it; tagged on another host (another container) or untagged, the run
    started more than `ABANDONED_AFTER_S` ago (this process cannot see the other's)."""
    host, _, rest = (tag or "").partition(":")
    pid, _, ticks = rest.partition(":")
    if tag and host == socket.gethostname() and pid.isdigit():
        return not ticks or _start_ticks(int(pid)) != ticks
    return now_s - start_ms / 1000 > ABANDONED_AFTER_S


def fail_abandoned_runs(experiment: str) -> list[str]:
    """Mark FAILED the experiment's RUNNING runs whose training process is gone (`_abandoned`):
    a `catsdogs train` killed with SIGKILL (or a lost machine) cannot end its run itself, so the
    next train start does. Runs of live processes, here or elsewhere, are left alone. Returns
    the run ids marked."""
    from mlflow import MlflowClient

    client, now, marked = MlflowClient(), time.time(), []
    for found in client.search_runs([experiment], "attributes.status = 'RUNNING'",
                                    max_results=200):
        if _abandoned(found.data.tags.get(PROCESS_TAG), found.info.start_time or 0, now):
            client.set_tag(found.info.run_id, "catsdogs.abandoned",
                           "its training process was gone; marked FAILED by the next train")
            client.set_terminated(found.info.run_id, "FAILED")
            marked.append(found.info.run_id)
            log.warning("run %s was left RUNNING by a training process that is gone (killed?): "
                        "marked FAILED", found.info.run_id)
    return marked


def run(params: Params, paths: DataPaths, force: bool = False) -> Summary:
    """Train, evaluate on the test split with the best-by-val-F1 weights, log and register."""
    from catsdogs import tracking

    _check_inputs(paths)
    tracking.connect(paths)
    with tracking.talking_to_mlflow("opening the experiment"):
        experiment = tracking.experiment_id(params.mlflow.experiment_name, paths)
        fail_abandoned_runs(experiment)

    from catsdogs.inference.compute import pick_device

    device = pick_device()
    data = _load_data(paths, params)
    choice = _choose(params, paths, device, data["train"])
    compute = choice.compute(device)
    hashed = data_hash(paths)
    known = paths.raw / feedback.KNOWN_OOD   # the neither pictures: a new set calibrates anew
    run_fingerprint = fingerprint(hashed, params.fingerprint("transform", "train", "model"),
                                  compute.device.type, compute.precision, compute.channels_last,
                                  *([sha256_file(known)] if known.is_file() else []))
    previous = None if force else _previous_run(experiment, run_fingerprint)
    if previous is not None:
        version = previous.data.tags[REGISTERED_VERSION_TAG]
        return Summary("train", f"run {previous.info.run_id} already trained these data and "
                       f"params (version {version}); use --force to train again", skipped=True,
                       details={"run_id": previous.info.run_id, "experiment_id": experiment,
                                "version": version,
                                "test": {key.removeprefix("test_"): value for key, value
                                         in previous.data.metrics.items()
                                         if key.startswith("test_")}})
    _warn_about_recipe(params)
    trained_on = provenance.read(paths.transformed)
    if trained_on is not None and trained_on.synthetic:
        log.warning("training on %s, a GENERATED stand-in data set: the model is tagged "
                    "%s=true. %s", trained_on.source, provenance.SYNTHETIC_TAG,
                    provenance.REAL_DATA_HINT)
    manifest_sha256 = _manifest_hash(paths)
    training_data = lineage.describe(paths.transformed, SPLITS, trained_on, manifest_sha256, hashed,
                                     feedback.in_splits(paths.splits_csv, paths.raw))
    return _train(params, paths, experiment, compute, choice.measured, data, training_data,
                  tags={"device": str(compute.device), "precision": compute.precision,
                        "channels_last": str(compute.channels_last).lower(),
                        "compile": str(params.train.compile).lower(),
                        "recipe": params.train.recipe,
                        "data.transformed_sha256": hashed,
                        "data.manifest_sha256": manifest_sha256,
                        "git.commit": _git_commit(), "catsdogs.fingerprint": run_fingerprint,
                        PROCESS_TAG: _this_process(),
                        **(trained_on.tags() if trained_on is not None else {})})


def _warn_about_recipe(params: Params) -> None:
    """Say plainly when the params ask `top_blocks` for what it does not do."""
    if params.train.recipe != "top_blocks":
        return
    if params.model.weights == "none":
        log.warning("train.recipe=top_blocks freezes the lower network, and model.weights=none "
                    "leaves it random: the head learns from random features. Use ImageNet "
                    "weights, or train.recipe=full to train every layer from scratch.")
    if params.model.freeze_backbone:
        log.warning("model.freeze_backbone applies to train.recipe=full; top_blocks always "
                    "fine-tunes its top %d blocks (train.top_blocks)", params.train.top_blocks)


def _choose(params: Params, paths: DataPaths, device: Any, train: Any) -> Any:
    """Precision and memory layout on `device` by measurement on this machine (a
    `catsdogs.training.loop.Choice`; `.compute(device)` is the `Compute` to train with), kept per
    machine, network and image size in <data>/cache/training-choices.json (or
    `$CATSDOGS_TRAINING_CHOICES`) so a re-run gets the same choice and fingerprint."""
    import platform

    import torch

    from catsdogs.inference.compute import cpu_flags
    from catsdogs.training.loading import TensorBatches
    from catsdogs.training.loop import choose, probe_step
    from catsdogs.training.model import build_model

    def probe(compute: Compute) -> float:
        net = build_model(params.model.arch, "none")
        images, labels = next(iter(TensorBatches(train, params.train.batch_size, shuffle=True)))
        return probe_step(net, images, labels)(compute)

    machine = (platform.processor() or platform.machine(), sorted(cpu_flags()),
               torch.__version__, device.type)
    key = fingerprint(machine, params.model.arch, params.transform.image_size,
                      params.train.precision)
    from catsdogs.settings import StageSettings, load

    store = load(StageSettings).training_choices or paths.root / "cache" / "training-choices.json"
    return choose(params.train.precision, device, probe, Path(store), key)


def _manifest_hash(paths: DataPaths) -> str:
    manifest = paths.prepared_manifest
    return sha256_file(manifest) if manifest.exists() else "absent"


def _log_metrics(values: dict[str, float], step: int | None = None) -> None:
    import mlflow

    from catsdogs.training.metrics import finite

    mlflow.log_metrics({k: v for k, v in finite(values).items() if v is not None}, step=step)


def _load_data(paths: DataPaths, params: Params) -> dict[str, Any]:
    """Every split from the tensor cache; refuses up front (one line) what cannot train."""
    from catsdogs.training.cache import load_split

    data = {split: load_split(paths, split, params.transform.image_size) for split in SPLITS}
    if len(data["train"]) < 2:
        raise UserError(f"{paths.split_dir('train')} holds {len(data['train'])} picture; training "
                        "needs at least 2: add pictures or change split.train")
    for split in SPLITS:
        if len(set(data[split].labels.tolist())) < 2:
            log.warning("the %s split holds one class only: its ROC-AUC is undefined and is "
                        "recorded as absent", split)
    if params.train.batch_size > len(data["train"]):
        log.warning("train.batch_size=%d is larger than the %d training pictures: each epoch is "
                    "one batch", params.train.batch_size, len(data["train"]))
    return data


def _production_weights(paths: DataPaths, weight: float, train: TensorSplit
                        ) -> tuple[torch.Tensor | None, dict[str, float | int]]:
    """The train split's sampling weights (`catsdogs.training.loading.sampling_weights`; None:
    the plain shuffle) and their figures: `train_production_pictures` (n_p),
    `train_production_share` (n_p / N) and `train_production_drawn_share` (the expected share of
    an epoch's draws, w n_p / (w n_p + n_s)). Which pictures came from production is what
    transform recorded: `splits.csv` rows whose source raw/feedback.csv lists
    (`feedback.transformed_production`), matched to `train.paths` (the cache's order)."""
    from catsdogs.training.loading import sampling_weights

    produced = feedback.transformed_production(paths.splits_csv, paths.raw, "train")
    marks = [path.relative_to(paths.transformed).as_posix() in produced for path in train.paths]
    pictures, count = sum(marks), len(marks)
    figures = {"train_production_pictures": pictures,
               "train_production_share": pictures / count,
               "train_production_drawn_share":
                   weight * pictures / (weight * pictures + count - pictures)}
    if pictures != len(produced):
        log.warning("splits.csv lists %d production pictures in train, the folder holds %d of "
                    "them", len(produced), pictures)
    return sampling_weights(marks, weight), figures


def _train(params: Params, paths: DataPaths, experiment: str, compute: Compute,
           measured: dict[str, float], data: dict[str, Any],
           training_data: lineage.TrainingData, tags: dict[str, str]) -> Summary:
    """Train on `compute` (device, precision, layout: the measured choice, whose training
    images/s per candidate are `measured`), test, profile, log and register."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.config import CLASSES
    from catsdogs.monitoring.reference import log_reference
    from catsdogs.registry.model_card import refresh_card
    from catsdogs.registry.record import register, version_tags
    from catsdogs.training.calibration import calibrate
    from catsdogs.training.loading import TensorBatches, seed_everything
    from catsdogs.training.loop import fit, predict
    from catsdogs.training.metrics import finite, with_intervals
    from catsdogs.training.model import build_model, train_augment
    from catsdogs.training.top_blocks import fit_top_blocks

    settings, size = params.train, params.transform.image_size
    seed_everything(settings.seed)
    model = build_model(params.model.arch, params.model.weights, len(CLASSES),
                        params.model.freeze_backbone, head_init=settings.head_init)
    batches = {split: TensorBatches(data[split], settings.batch_size, shuffle=False)
               for split in ("val", "test")}
    run_name = f"{params.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    # the process tag from the run's first moment (`fail_abandoned_runs`); an outage inside is
    # one line, and makes MLflow's clean-up (ending the run) fail fast
    with (mlflow.start_run(experiment_id=experiment, run_name=run_name,
                           tags={PROCESS_TAG: tags[PROCESS_TAG]}) as active,
          tracking.talking_to_mlflow(f"logging the training run {run_name}")):
        weights, production = _production_weights(paths, settings.production_weight,
                                                  data["train"])
        mlflow.log_params(params.flat() | production)
        mlflow.set_tags(tags | tracking.orchestrator_tags())
        lineage.log_input(training_data)
        log.info("training %s by the %s recipe on %s (%s), %d train images (%d from "
                 "production, drawn at weight %g: %.1f%% of an epoch's draws), run %s",
                 params.model.arch, settings.recipe, compute.device, compute.precision,
                 len(data["train"]), production["train_production_pictures"],
                 settings.production_weight, 100 * production["train_production_drawn_share"],
                 active.info.run_id)
        if settings.recipe == "full":
            train = TensorBatches(data["train"], settings.batch_size, shuffle=True,
                                  seed=settings.seed, augment=train_augment(size),
                                  weights=weights)
            result = fit(model, train, batches["val"], epochs=settings.epochs,
                         lr=settings.lr, compute=compute, compile_model=settings.compile,
                         label_smoothing=settings.label_smoothing,
                         on_epoch=lambda e, v: _log_metrics(v, e))
        else:
            result = fit_top_blocks(
                model, params.model.arch, data["train"], data["val"], settings=settings,
                compute=compute, weights=weights, on_epoch=lambda e, v: _log_metrics(v, e),
                on_head_epoch=lambda e, v: _log_metrics({f"head_{k}": x for k, x in v.items()}, e))
        model.load_state_dict(result.best_state)
        if settings.temperature_scaling:
            _log_metrics(calibrate(model, batches["val"], compute))
        labels, probs = predict(model, batches["test"], compute)
        mlflow.set_tag("choice.measured_img_s", json.dumps(measured))
        test = with_intervals(labels, probs)
        _log_metrics({f"test_{k}": v for k, v in test.items()}
                     | {"best_epoch": result.best_epoch,
                        "train_images_per_second": result.images_per_second,
                        "train_seconds": result.train_seconds})
        _log_reports(paths, params, active.info.run_id, compute, result, test, labels, probs)
        _log_misclassified(model, data["test"], paths, labels, probs)
        reference = log_reference(model, data, paths, CLASSES, compute, settings.ood_quantile,
                                  _known_ood(paths, size), settings.ood_min_known,
                                  settings.ood_min_in_distribution)
        known = reference["known_ood"]
        _log_metrics({"reference_seconds": reference["seconds"],
                      "ood_threshold": reference["ood_threshold"]}
                     | ({"ood_known_pictures": known["pictures"],
                         "ood_known_used": float(known["used"]),
                         "ood_known_flagged_share": known["flagged_share"]}
                        if known["pictures"] else {}))
        example = next(iter(batches["test"]))[0][:2].numpy()
        model = model.to("cpu").float().to(memory_format=torch.contiguous_format)
        version = register(
            model.eval(), params.mlflow.registered_model_name, example,
            version_tags(size, CLASSES, params.model.arch, provenance.Provenance.from_tags(tags)))
        mlflow.set_tag(REGISTERED_VERSION_TAG, version.version)
    refresh_card(MlflowClient(), params.mlflow.registered_model_name, version.version)
    if (ui := tracking.ui_base_url()) is not None:
        log.info("MLflow run: %s", tracking.run_url(ui, experiment, active.info.run_id))
        log.info("MLflow experiment (all runs): %s", tracking.experiment_url(ui, experiment))
    message = (f"{params.model.arch} ({settings.recipe}) test {_shown(test, 'f1')}, "
               f"{_shown(test, 'accuracy')}, {_shown(test, 'roc_auc')}, log loss "
               f"{test['log_loss']:.4f}, ECE {test['ece']:.4f} on {len(labels)} pictures "
               f"(best epoch {result.best_epoch}); registered "
               f"{params.mlflow.registered_model_name} v{version.version} @challenger "
               f"(run {active.info.run_id})")
    return Summary("train", message, details={
        "run_id": active.info.run_id, "experiment_id": experiment, "version": version.version,
        "test": finite(test),
        "best_epoch": result.best_epoch, "device": str(compute.device),
        "precision": compute.precision,
        "train_images_per_second": result.images_per_second,
        "production_weight": settings.production_weight} | production)


def _known_ood(paths: DataPaths, image_size: int) -> Any | None:
    """The "neither"-labelled production pictures ingest kept (`feedback.known_ood`) as uint8
    K,3,S,S pixels, decoded and squared as the service does an upload (`square_image`, then
    `eval_resize`); None when there are none. A picture that does not decode is logged and left
    out."""
    import torch

    from catsdogs.data.images import ImageRejected, square_image
    from catsdogs.training.model import eval_resize

    resize, pictures = eval_resize(image_size), []
    for path in feedback.known_ood(paths.raw):
        try:
            pictures.append(resize(square_image(path, image_size)))
        except (ImageRejected, OSError) as exc:
            log.warning("known out-of-distribution picture %s left out: %s", path, exc)
    return torch.stack(pictures) if pictures else None


def _shown(metrics: dict[str, float], name: str) -> str:
    """'f1 0.9750 [0.9512, 0.9893]': a figure with its 95% interval."""
    return (f"{name} {metrics[name]:.4f} [{metrics[f'{name}_ci_low']:.4f}, "
            f"{metrics[f'{name}_ci_high']:.4f}]")


def _log_misclassified(model: Any, test: Any, paths: DataPaths, labels: list[int],
                       probs: list[float]) -> None:
    """The most confident mistakes on the test split as thumbnails with their Grad-CAM heatmaps
    (artifacts `reports/misclassified/`) and their list as the run tag `test.misclassified`
    (for the model card)."""
    import mlflow

    from catsdogs.registry.names import MISCLASSIFIED_ARTIFACTS, MISCLASSIFIED_TAG
    from catsdogs.training import reports
    from catsdogs.training.loading import list_images

    split = paths.split_dir("test")
    names = [path.relative_to(split).as_posix() for path, _ in list_images(split)]
    with tempfile.TemporaryDirectory() as tmp:
        found = reports.misclassified(model, test.pixels, labels, probs, names, Path(tmp))
        if found["shown"]:
            mlflow.log_artifacts(tmp, MISCLASSIFIED_ARTIFACTS)
    mlflow.set_tag(MISCLASSIFIED_TAG, json.dumps(found))
    log.info("test split: %d misclassified, %d shown on the model card", found["total"],
             len(found["shown"]))


def _log_reports(paths: DataPaths, params: Params, run_id: str, compute: Compute, result: Any,
                 test: dict[str, float], labels: list[int], probs: list[float]) -> None:
    """Plots, classification report, performance report, the confusion matrix as a JSON run tag
    (for the model card), plus the validation summary and EDA (without the stages' internal
    stamp files)."""
    import mlflow

    from catsdogs import tracking
    from catsdogs.config import CLASSES
    from catsdogs.training import reports
    from catsdogs.training.metrics import confusion

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reports.plot_confusion(labels, probs, folder / PurePosixPath(CONFUSION_PICTURE).name)
        reports.plot_roc(labels, probs, folder / "roc_curve.png")
        (folder / "classification_report.txt").write_text(
            reports.classification_report(labels, probs))
        (folder / "model_performance_report.md").write_text(reports.performance_report(
            run_id=run_id, arch=params.model.arch, device=str(compute.device),
            precision=compute.precision,
            params=params.flat(), history=result.history, best_epoch=result.best_epoch,
            test=test, labels=labels, probs=probs, images_per_second=result.images_per_second))
        mlflow.log_artifacts(str(folder), "reports")
    mlflow.set_tag(CONFUSION_TAG, json.dumps(
        {"labels": list(CLASSES), "rows_true_cols_predicted": confusion(labels, probs)}))
    summary = paths.validation_reports / "summary.json"
    if summary.exists():
        mlflow.log_artifact(str(summary), "validation")
    else:
        log.warning("no validation summary at %s to log", summary)
    if paths.eda.is_dir():
        tracking.log_folder(paths.eda, "eda")
    else:
        log.warning("no EDA folder at %s to log", paths.eda)
