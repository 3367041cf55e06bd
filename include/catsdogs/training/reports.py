"""Training artefacts: confusion-matrix and ROC PNGs, classification report, performance report,
and the misclassified test pictures with their Grad-CAM heatmaps (for the model card)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catsdogs.config import CLASSES
from catsdogs.training.metrics import INTERVALS_NOTE, METRIC_NAMES, confusion


def plot_confusion(labels: Sequence[int], probs: Sequence[float], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion(labels, probs)
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.imshow(matrix, cmap="Blues")
    for row in range(2):
        for col in range(2):
            axes.text(col, row, str(matrix[row][col]), ha="center", va="center")
    axes.set_xticks([0, 1], CLASSES)
    axes.set_yticks([0, 1], CLASSES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Test confusion matrix")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


def plot_roc(labels: Sequence[int], probs: Sequence[float], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axes = plt.subplots(figsize=(4, 4))
    if len(set(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, probs)
        axes.plot(fpr, tpr, label=f"AUC {roc_auc_score(labels, probs):.3f}")
        axes.legend(loc="lower right")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate (dog)")
    axes.set_title("Test ROC curve")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


MISCLASSIFIED_LIMIT = 8                # pictures shown: the most confident mistakes
THUMBNAIL_SIDE = 160                   # px, longest side of a misclassified picture's thumbnail


def misclassified(model: Any, pixels: Any, labels: Sequence[int], probs: Sequence[float],
                  names: Sequence[str], folder: Path, limit: int = MISCLASSIFIED_LIMIT
                  ) -> dict[str, Any]:
    """The test pictures the model got wrong (P(dog) >= 0.5 decides, as in `confusion`), the most
    confident mistakes first, at most `limit`: each written to `folder` as
    `NN-<true>-as-<predicted>.png`, the picture (at most THUMBNAIL_SIDE px) with the Grad-CAM
    heatmap of the class it was taken for (`catsdogs.inference.explain`).

    `pixels`: N,3,S,S uint8 (the test split's tensor cache, in `labels`' order); `names`: the N
    files, relative to the split folder. Returns {"total": mistakes, "limit": limit, "shown":
    [{"file", "true", "predicted", "confidence", "image"}]}, `image` the PNG's name."""
    import numpy as np
    from PIL import Image

    from catsdogs.inference.explain import GradCam, overlay, png

    predicted = [int(p >= 0.5) for p in probs]
    wrong = [i for i, (truth, guess) in enumerate(zip(labels, predicted, strict=True))
             if truth != guess]
    wrong.sort(key=lambda i: (-abs(probs[i] - 0.5), names[i]))
    shown: list[dict[str, Any]] = []
    cam = GradCam(model) if wrong and limit > 0 else None
    folder.mkdir(parents=True, exist_ok=True)
    for rank, index in enumerate(wrong[:limit], start=1):
        assert cam is not None
        picture = np.ascontiguousarray(pixels[index].numpy().transpose(1, 2, 0))
        found = cam.explain(picture, predicted[index])
        thumbnail = Image.fromarray(picture)
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        true, guess = CLASSES[labels[index]], CLASSES[predicted[index]]
        image = f"{rank:02d}-{true}-as-{guess}.png"
        (folder / image).write_bytes(png(overlay(thumbnail, found.heatmap)))
        confidence = probs[index] if predicted[index] == 1 else 1 - probs[index]
        shown.append({"file": names[index][-120:], "true": true, "predicted": guess,
                      "confidence": round(float(confidence), 4), "image": image})
    return {"total": len(wrong), "limit": limit, "shown": shown}


def classification_report(labels: Sequence[int], probs: Sequence[float]) -> str:
    from sklearn.metrics import classification_report as sk_report

    predicted = [int(p >= 0.5) for p in probs]
    return sk_report(labels, predicted, labels=[0, 1], target_names=list(CLASSES), digits=4,
                     zero_division=0)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _interval(metrics: dict[str, float], name: str) -> str:
    """'[low, high]' from `<name>_ci_low` / `_ci_high` (`catsdogs.training.metrics`)."""
    return f"[{_fmt(metrics[f'{name}_ci_low'])}, {_fmt(metrics[f'{name}_ci_high'])}]"


def performance_report(*, run_id: str, arch: str, device: str, precision: str,
                       params: dict[str, Any], history: list[dict[str, float]], best_epoch: int,
                       test: dict[str, float], labels: Sequence[int], probs: Sequence[float],
                       images_per_second: float) -> str:
    """`model_performance_report.md`: what was trained, how each epoch went, the test result."""
    matrix = confusion(labels, probs)
    epoch_names = list(history[0]) if history else []
    lines = [
        "# Model performance report", "",
        f"- MLflow run: `{run_id}`",
        f"- Architecture: `{arch}`, weights `{params['model.weights']}`, "
        f"frozen backbone: {params['model.freeze_backbone']}",
        f"- Device: {device}, precision {precision}, {images_per_second:.1f} training images/s",
        f"- Image size {params['transform.image_size']}, batch {params['train.batch_size']}, "
        f"lr {params['train.lr']}, epochs {params['train.epochs']}, seed {params['train.seed']}",
        f"- Best epoch by validation F1: {best_epoch} (test metrics use its weights)", "",
        "## Epochs", "",
        "| epoch | " + " | ".join(epoch_names) + " |",
        "|---" * (len(epoch_names) + 1) + "|",
    ]
    lines += [f"| {i} | " + " | ".join(_fmt(row[k]) for k in epoch_names) + " |"
              for i, row in enumerate(history, 1)]
    lines += ["", f"## Test set ({len(labels)} images)", "",
              "| metric | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(test[name])} | {_interval(test, name)} |"
              for name in METRIC_NAMES]
    lines += ["", INTERVALS_NOTE]
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              f"| | {CLASSES[0]} | {CLASSES[1]} |", "|---|---|---|",
              f"| {CLASSES[0]} | {matrix[0][0]} | {matrix[0][1]} |",
              f"| {CLASSES[1]} | {matrix[1][0]} | {matrix[1][1]} |", "",
              "```", classification_report(labels, probs).rstrip(), "```", ""]
    return "\n".join(lines)
