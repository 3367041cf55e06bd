"""Does the decision move with the preprocessing path? (the decision-bias check of issue 20)

Trains MobileNetV2 (ImageNet weights) on the train split of a data dir made by
benchmarks/train_speed.py, by the `full` recipe (1 epoch) and the `top_blocks` recipe, then
scores the val + test pictures three ways, paired picture by picture:
- `trained`: the transform stage's output (draft decode, square, JPEG q95, decoded again), the
  pixels training and the test split see;
- `serving`: `square_image` of the original file (what the Bento service computes for an upload);
- `evaluate`: `eval_transform(decode_image(original))` (no draft decoding: what `catsdogs
  evaluate --images` computed for held-out photos).
A decision bias that comes from the preprocessing shows as a mean shift of the dog-minus-cat
logit between paths and as more pictures called dog.

Usage: .venv/bin/python benchmarks/preprocessing_shift.py [--work /tmp/catsdogs-train-speed]
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/catsdogs-train-speed"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from catsdogs.config import load_params
    from catsdogs.data.images import decode_image, square_image
    from catsdogs.inference.compute import Compute
    from catsdogs.inference.scorer import normalize
    from catsdogs.paths import DataPaths
    from catsdogs.training.cache import load_split
    from catsdogs.training.loading import TensorBatches, seed_everything
    from catsdogs.training.loop import fit
    from catsdogs.training.model import build_model, eval_transform, train_augment
    from catsdogs.training.top_blocks import fit_top_blocks

    paths = DataPaths(args.work / "data")
    data = {split: load_split(paths, split, 224) for split in ("train", "val", "test")}
    rows = [r for r in csv.DictReader(paths.splits_csv.open()) if r["split"] in ("val", "test")]
    rows.sort(key=lambda r: (r["split"], r["path"]))
    labels = torch.tensor([0 if r["label"] == "cat" else 1 for r in rows])
    originals = [paths.prepared / r["source"] for r in rows]
    inputs = {
        "trained": torch.cat([data["val"].pixels, data["test"].pixels]),
        "serving": torch.stack([torch.from_numpy(__import__("numpy").array(
            square_image(p, 224))).permute(2, 0, 1) for p in originals]),
    }
    evaluate = torch.stack([eval_transform(224)(decode_image(p)) for p in originals])
    bf16 = Compute(torch.device("cpu"), "bf16", channels_last=True)
    print("\n| model | path | mean logit(dog) - logit(cat), shift vs trained | cats called dog | "
          "dogs called cat |\n|---|---|---|---|---|")
    for recipe in ("full", "top_blocks"):
        params = load_params(REPO / "params.yaml", ["model.arch=mobilenet_v2", f"train.recipe={recipe}",
                                                    "train.epochs=1"])
        seed_everything(42)
        model = build_model("mobilenet_v2", "imagenet")
        if recipe == "full":
            fit(model, TensorBatches(data["train"], 32, shuffle=True, seed=42,
                                     augment=train_augment(224)),
                TensorBatches(data["val"], 32, shuffle=False), epochs=1, lr=1e-4,
                compute=bf16)
        else:
            result = fit_top_blocks(model, "mobilenet_v2", data["train"], data["val"],
                                    settings=params.train, compute=bf16)
            model.load_state_dict(result.best_state)
        model.eval()
        margins = {}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for name in ("trained", "serving", "evaluate"):
                batch = evaluate if name == "evaluate" else normalize(inputs[name])
                logits = torch.cat([model(chunk.contiguous(memory_format=torch.channels_last))
                                    for chunk in batch.split(50)]).float()
                margins[name] = logits[:, 1] - logits[:, 0]
        for name, margin in margins.items():
            dog = margin > 0
            shift = (margin - margins["trained"]).mean().item()
            print(f"| {recipe} | {name} | {margin.mean():+.3f} ({shift:+.3f}) | "
                  f"{int((dog & (labels == 0)).sum())}/{int((labels == 0).sum())} | "
                  f"{int((~dog & (labels == 1)).sum())}/{int((labels == 1).sum())} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
