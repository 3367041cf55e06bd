"""The serving variants' OpenVINO side, run in a process of its own by
tests/serving/test_variants.py: `python -m tests.serving.variants_probe graphs FOLDER` or
`... measure FOLDER SAMPLE_DIR`; prints one JSON line.

OpenVINO (with its TBB threads), NNCF and torch.export stay out of the test runner's process:
loaded there beside Airflow, Evidently and BentoML, the whole-suite run died with a segmentation
fault after its last test had passed (twice, in CI).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catsdogs.data.images import square_image
from catsdogs.inference.scorer import normalize, with_embedding
from catsdogs.inference.variants import (
    VARIANTS_FOLDER,
    OpenVinoPredictor,
    cannot_run,
    export_openvino,
    measure,
)
from tests.serving.networks import pictures, trained_looking

SIZE = 64


def graphs(folder: Path) -> dict[str, Any]:
    """Export both OpenVINO graphs of a MobileNetV2; per variant the largest differences from the
    torch network (probabilities, embedding) and between a batch of 7 and each picture alone."""
    net = trained_looking("mobilenet_v2")
    written = export_openvino(copy.deepcopy(net), SIZE, folder, pictures(32, SIZE))
    pixels = torch.from_numpy(pictures(7, SIZE, seed=5))
    with torch.inference_mode():
        logits, embedding = with_embedding(copy.deepcopy(net))(
            normalize(pixels.permute(0, 3, 1, 2).contiguous()))
    found: dict[str, Any] = {"written": written,
                             "no_graphs": cannot_run("openvino-int8", folder / "empty")}
    for variant in written:
        predictor = OpenVinoPredictor(folder / VARIANTS_FOLDER / variant / "model.xml", 2)
        predictor.warm_up(8, SIZE)
        probabilities, served = predictor.outputs(pixels)
        assert served is not None
        alone = torch.cat([predictor.outputs(pixels[i:i + 1])[0] for i in range(len(pixels))])
        found[variant] = {
            "shapes": [list(probabilities.shape), list(served.shape)],
            "probabilities_vs_torch": float((probabilities - torch.softmax(logits, 1)).abs().max()),
            "embedding_vs_torch": float((served - embedding).abs().max()),
            "embedding_scale": float(embedding.abs().max()),
            "batch_vs_alone": float((probabilities - alone).abs().max())}
    return found


def measured(folder: Path, sample_dir: Path) -> dict[str, Any]:
    """`variants.measure` on 48 real photos: the measurements and the INT8 weights' size."""
    files = sorted((sample_dir / "cat").glob("*.jpg"))[:24] + sorted(
        (sample_dir / "dog").glob("*.jpg"))[:24]
    pixels = np.stack([np.asarray(square_image(f, SIZE)) for f in files])
    result = measure(trained_looking("mobilenet_v2"), folder, pixels)
    weights = folder / VARIANTS_FOLDER / "openvino-int8" / "model.bin"
    return {"measured": [m.as_dict() for m in result],
            "int8_bytes": weights.stat().st_size if weights.exists() else 0}


if __name__ == "__main__":
    what, target = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(graphs(target) if what == "graphs" else measured(target, Path(sys.argv[3]))))
