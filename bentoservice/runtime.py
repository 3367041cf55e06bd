"""The model at serving time, BentoML's side: the Bento model's metadata (`ModelInfo`), loading
the imported MLflow network and the out-of-distribution detector, packing the model process's
answers, the process's threads and heap. The forward pass (`catsdogs.inference.scorer.Scorer`)
and which variant a CPU serves (torch fp32/bf16, OpenVINO fp32/INT8, decided from what the import
measured: `catsdogs.inference.variants`) live in `catsdogs.inference`.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from catsdogs.config import CLASSES
from catsdogs.data.provenance import Provenance
from catsdogs.inference.variants import Measurement

if TYPE_CHECKING:
    from catsdogs.monitoring.ood import OodDetector

logger = logging.getLogger(__name__)

MLFLOW_MODEL_FOLDER = "mlflow_model"
IMPORT_COMPLETE_KEY = "import_complete"  # Bento metadata: true once every part was stored
OOD_FOLDER = "ood"                       # the training run's ood.json + ood.npz
OOD_FILES = ("ood.json", "ood.npz")
REQUIRED_METADATA = ("registered_model", "version", "run_id", "arch", "image_size", "classes")
VARIANTS_KEY = "serving_variants"  # Bento metadata: {"cpu": ..., "measured": [Measurement...]}


@dataclass(frozen=True)
class ModelInfo:
    """What the service tells clients about its model (from the Bento model's metadata)."""

    name: str
    version: str
    run_id: str
    arch: str
    image_size: int
    classes: tuple[str, ...]
    bento_tag: str
    variants: tuple[Measurement, ...] = ()  # what the import measured (inference.variants)
    variants_measured_on: str = ""          # the CPU it measured them on
    data: Provenance | None = None   # the training data; None when the import did not record it

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], bento_tag: str) -> ModelInfo:
        measured = metadata.get(VARIANTS_KEY) or {}
        data = (Provenance(str(metadata["data_source"]), bool(metadata.get("data_synthetic")))
                if metadata.get("data_source") else None)
        return cls(name=str(metadata.get("registered_model", "CatsDogsCNN")),
                   version=str(metadata.get("version", "")),
                   run_id=str(metadata.get("run_id", "")),
                   arch=str(metadata.get("arch", "resnet18")),
                   image_size=int(metadata.get("image_size", 224)),
                   classes=tuple(metadata.get("classes") or CLASSES),
                   bento_tag=bento_tag,
                   variants=tuple(Measurement.from_dict(m) for m in measured.get("measured", [])),
                   variants_measured_on=str(measured.get("cpu", "")),
                   data=data)


def load_network(model_dir: Path, info: ModelInfo) -> torch.nn.Module:
    """The imported network of `info` from its MLflow model folder as an eager `nn.Module` in
    eval mode: its architecture built from code with its safetensors weights, nothing unpickled
    (`catsdogs.registry.safeload.load_network`; UserError naming the version otherwise)."""
    from catsdogs.registry.safeload import load_network as load_safely

    return load_safely(model_dir, name=info.name, version=info.version, arch=info.arch,
                       classes=len(info.classes))


def pack_outputs(probabilities: np.ndarray, embedding: np.ndarray | None,
                 ood: OodDetector | None) -> np.ndarray:
    """What the model service returns per batch, one float32 array: N x (C + 1 + D) =
    probabilities | out-of-distribution score (NaN without a detector) | embedding (D = 0 when
    the network gives none). `unpack_outputs` splits it in the API process."""
    n = len(probabilities)
    scores = (ood.score(embedding) if ood is not None and embedding is not None
              else np.full(n, np.nan, dtype=np.float32))
    parts = [probabilities.astype(np.float32), scores.reshape(n, 1).astype(np.float32)]
    if embedding is not None:
        parts.append(embedding.astype(np.float32))
    return np.concatenate(parts, axis=1)


def unpack_outputs(packed: np.ndarray, classes: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`pack_outputs` reversed: (N,C probabilities, N scores (NaN: none), N,D embedding or
    None)."""
    embedding = packed[:, classes + 1:]
    return (packed[:, :classes], packed[:, classes],
            embedding if embedding.shape[1] else None)


def load_ood(folder: Path) -> OodDetector | None:
    """The Bento model's out-of-distribution detector (its `ood/` folder), None when it has none (a
    model trained before reference profiles existed: answers carry no score then)."""
    from catsdogs.monitoring.ood import JSON_FILE, OodDetector

    if not (folder / JSON_FILE).exists():
        logger.warning("no out-of-distribution calibration in the Bento model (%s): answers "
                       "carry in_distribution=null; retrain and re-import to get one", folder)
        return None
    return OodDetector.load(folder)


def ood_threshold(folder: Path) -> float | None:
    """The threshold of the Bento model's detector (all the API process needs of it), None
    when the model has no calibration."""
    import json

    from catsdogs.monitoring.ood import JSON_FILE

    try:
        return float(json.loads((folder / JSON_FILE).read_text())["threshold"])
    except FileNotFoundError:
        return None


def freeze_startup_heap() -> None:
    """Hide everything allocated at start-up (torch, MLflow, BentoML: millions of objects) from
    the garbage collector. A full collection of that heap took ~230 ms here, a pause that every
    request in flight waited out; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def set_threads(torch_threads: int) -> None:
    threads = torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))


def missing_parts(folder: Path, metadata: dict[str, Any]) -> list[str]:
    """What a stored Bento model (its folder and metadata) lacks to be served: the MLflow model
    (weights), the out-of-distribution calibration, a measured serving variant's files, a
    metadata key, or the import's completion mark (`IMPORT_COMPLETE_KEY`, written by the import
    after every other part: a model without it was left by an interrupted import). Empty when
    the model is whole."""
    from catsdogs.inference.variants import OPENVINO_FILE, VARIANTS_FOLDER

    missing = []
    if not (folder / MLFLOW_MODEL_FOLDER / "MLmodel").is_file():
        missing.append(f"the weights ({MLFLOW_MODEL_FOLDER}/MLmodel)")
    missing += [f"the out-of-distribution calibration ({OOD_FOLDER}/{name})"
                for name in OOD_FILES if not (folder / OOD_FOLDER / name).is_file()]
    missing += [f"the metadata `{key}`" for key in REQUIRED_METADATA if key not in metadata]
    measured = (metadata.get(VARIANTS_KEY) or {}).get("measured") or []
    missing += [f"the serving variant {VARIANTS_FOLDER}/{m['variant']}/{OPENVINO_FILE}"
                for m in measured if str(m.get("variant", "")).startswith("openvino-")
                and m.get("adopted")
                and not (folder / VARIANTS_FOLDER / m["variant"] / OPENVINO_FILE).is_file()]
    if not metadata.get(IMPORT_COMPLETE_KEY):
        missing.append("the import's completion mark (the import was interrupted)")
    return missing
