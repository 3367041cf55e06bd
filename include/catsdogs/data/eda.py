"""Exploratory data analysis of the prepared images: three PNG charts and `eda.json`."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from catsdogs.data.images import decode_image

GRID_PER_CLASS = 8
THUMB = 128


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": round(statistics.fmean(values), 1)}


def summarise(raw_rows: list[dict[str, Any]], kept: list[dict[str, Any]],
              dropped: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """The numbers behind the charts (written as eda.json)."""
    return {
        "raw_per_class": dict(Counter(str(r["label"]) for r in raw_rows)),
        "kept_per_class": {c: sum(1 for r in kept if r["label"] == c) for c in classes},
        "dropped_by_reason": dict(Counter(str(r["reason"]) for r in dropped)),
        "width": {c: _stats([int(r["width"]) for r in kept if r["label"] == c]) for c in classes},
        "height": {c: _stats([int(r["height"]) for r in kept if r["label"] == c])
                   for c in classes},
        "bytes": _stats([int(r["bytes"]) for r in kept]),
        "modes": dict(Counter(str(r["mode"]) for r in kept)),
        "formats": dict(Counter(str(r["format"]) for r in kept)),
    }


def _class_distribution(facts: dict[str, Any], classes: list[str], target: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    positions = range(len(classes))
    raw = [facts["raw_per_class"].get(c, 0) for c in classes]
    kept = [facts["kept_per_class"].get(c, 0) for c in classes]
    axes.bar([p - 0.2 for p in positions], raw, width=0.4, label="raw")
    axes.bar([p + 0.2 for p in positions], kept, width=0.4, label="kept")
    axes.set_xticks(list(positions), classes)
    axes.set_ylabel("images")
    axes.set_title("Images per class")
    axes.legend()
    figure.tight_layout()
    figure.savefig(target)


def _dimensions(kept: list[dict[str, Any]], classes: list[str], target: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=100)
    axes = figure.subplots()
    for label in classes:
        rows = [r for r in kept if r["label"] == label]
        axes.scatter([int(r["width"]) for r in rows], [int(r["height"]) for r in rows], s=6,
                     alpha=0.5, label=label)
    axes.set_xlabel("width (px)")
    axes.set_ylabel("height (px)")
    axes.set_title("Image dimensions")
    axes.legend()
    figure.tight_layout()
    figure.savefig(target)


def _sample_grid(kept: list[dict[str, Any]], classes: list[str], root: Path, target: Path,
                 seed: int) -> None:
    from PIL import Image

    rng = random.Random(seed)
    grid = Image.new("RGB", (GRID_PER_CLASS * THUMB, len(classes) * THUMB), "white")
    for row, label in enumerate(classes):
        rows = sorted((r for r in kept if r["label"] == label), key=lambda r: str(r["path"]))
        for column, chosen in enumerate(rng.sample(rows, min(GRID_PER_CLASS, len(rows)))):
            image = decode_image(root / str(chosen["path"]), draft_size=THUMB)
            image.thumbnail((THUMB, THUMB))
            offset = ((THUMB - image.width) // 2, (THUMB - image.height) // 2)
            grid.paste(image, (column * THUMB + offset[0], row * THUMB + offset[1]))
    grid.save(target)


def write(target: Path, raw_rows: list[dict[str, Any]], kept: list[dict[str, Any]],
          dropped: list[dict[str, Any]], classes: list[str], images_root: Path,
          seed: int) -> dict[str, Any]:
    """Write class_distribution.png, image_dimensions.png, sample_grid.png and eda.json."""
    facts = summarise(raw_rows, kept, dropped, classes)
    _class_distribution(facts, classes, target / "class_distribution.png")
    _dimensions(kept, classes, target / "image_dimensions.png")
    _sample_grid(kept, classes, images_root, target / "sample_grid.png", seed)
    (target / "eda.json").write_text(json.dumps(facts, indent=2))
    return facts
