"""The model at serving time: load the imported MLflow model, pick the device, prepare the torch
network (`Predictor`: fp32 or bf16), pack its outputs. Which variant a CPU serves (torch fp32/bf16,
OpenVINO fp32/INT8) is decided by bentoservice/variants.py from what the import measured.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bentoservice.variants import Measurement
from catsdogs.config import CLASSES
from catsdogs.data.provenance import Provenance

if TYPE_CHECKING:
    from catsdogs.monitoring.ood import OodDetector

logger = logging.getLogger(__name__)

JIT_SPECIALISATIONS = 64  # batch shapes TorchScript compiles statically (then it goes dynamic)
MLFLOW_MODEL_FOLDER = "mlflow_model"
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
    variants: tuple[Measurement, ...] = ()  # what the import measured (bentoservice.variants)
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


def load_network(model_dir: Path, arch: str) -> torch.nn.Module:
    """The logged network as an eager `nn.Module` (pt2/GraphModule models are rebuilt from their
    state dict with `catsdogs.training.model.build_model`, so channels_last and bf16 apply everywhere)."""
    import mlflow.pytorch

    loaded = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    if isinstance(loaded, torch.fx.GraphModule):
        from catsdogs.training.model import build_model

        try:
            net = build_model(arch, weights="none")
            net.load_state_dict(loaded.state_dict())
            loaded = net
        except (RuntimeError, KeyError, ValueError) as exc:
            logger.warning("serving the exported graph as-is (could not rebuild %s: %s)", arch, exc)
    return loaded.eval()


def choose_device(wanted: str) -> torch.device:
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Predictor:
    """A network prepared for fast inference: eval mode, batch norms folded into the preceding
    convolutions, channels_last, on its device; with bf16 the weights in bfloat16 (on AMX CPUs
    several times faster than fp32 at every batch size); on CPU, with `jit`, a frozen
    TorchScript graph whose conv+ReLU chains oneDNN fuses. Takes N,H,W,3 uint8 pixels as the API
    process decoded them (4x fewer bytes than float32, and already in channels_last order) and
    normalises them here, a batch at a time.

    The prepared network is `catsdogs.monitoring.features.with_embedding(net)`: the same graph
    returns the logits and the penultimate-layer embedding (the prediction log's and the
    out-of-distribution score's input), so the embedding costs no second pass. A network without
    a Linear head (an exported graph that could not be rebuilt) serves probabilities only."""

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str,
                 image_size: int = 224, jit: bool = True) -> None:
        from catsdogs.monitoring.features import with_embedding

        self.device = device
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        try:
            net = with_embedding(net.eval())
            self.embeds = True
        except ValueError as exc:
            logger.warning("serving without embedding (no out-of-distribution score): %s", exc)
            self.embeds = False
        net = fold_batch_norms(net.eval()).to(device, dtype=self.dtype)
        self.net = net.to(memory_format=torch.channels_last)
        if jit and device.type == "cpu":
            example = torch.zeros(2, 3, image_size, image_size, dtype=self.dtype)
            self.net = freeze_graph(self.net, example.contiguous(memory_format=torch.channels_last))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """N,H,W,3 uint8 pixels (`catsdogs.data.images.square_image`, what the service's API
        process computes per upload) -> N,C softmax probabilities (float32, CPU)."""
        return self.outputs(pixels)[0]

    @torch.inference_mode()
    def outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N,H,W,3 uint8 pixels -> (N,C softmax probabilities, N,D embedding or None), float32
        on the CPU, from one forward pass."""
        from catsdogs.training.model import normalize

        nchw = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # a channels_last view
        inputs = normalize(nchw).to(self.dtype)
        result = self.net(inputs.contiguous(memory_format=torch.channels_last))
        logits, embedding = result if self.embeds else (result, None)
        return (torch.softmax(logits.float(), dim=1).cpu(),
                None if embedding is None else embedding.float().cpu())

    def warm_up(self, max_batch_size: int, image_size: int) -> None:
        """Run every batch size once or twice, so the first real requests don't pay for oneDNN
        kernel selection or TorchScript's per-shape specialisation."""
        for batch in range(1, max_batch_size + 1):
            for _ in range(2 if isinstance(self.net, torch.jit.ScriptModule) else 1):
                self(torch.zeros(batch, image_size, image_size, 3, dtype=torch.uint8))


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


def freeze_graph(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """TorchScript trace + freeze with oneDNN Graph fusion on: conv+ReLU(+add) fused, weights
    prepacked, one static specialisation per batch size (bf16 resnet18 on one AMX core: ~150
    vs ~60 img/s eager). TorchScript is deprecated in favour of torch.compile, whose CPU
    compile takes minutes per batch size here; a network that cannot be traced stays eager."""
    torch.jit.enable_onednn_fusion(True)
    torch.jit.set_fusion_strategy([("STATIC", JIT_SPECIALISATIONS)])
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.freeze(torch.jit.trace(net, example))
    except Exception as exc:  # noqa: BLE001 (any tracing failure: serve the eager network)
        logger.warning("serving the eager network (TorchScript: %s: %s)", type(exc).__name__, exc)
        return net


def fold_batch_norms(net: torch.nn.Module) -> torch.nn.Module:
    """Conv+BatchNorm pairs folded into one convolution (same maths in eval mode, one pass over
    the activations fewer: ~1.5-2x on CPU). Networks torch.fx cannot trace are returned as-is."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(net))
    except Exception as exc:  # noqa: BLE001 (any tracing failure: serve the unfolded network)
        logger.warning("serving without batch-norm folding (%s: %s)", type(exc).__name__, exc)
        return net


def freeze_startup_heap() -> None:
    """Hide everything allocated at start-up (torch, MLflow, BentoML: millions of objects) from
    the garbage collector. A full collection of that heap took ~230 ms here, a pause that every
    request in flight waited out; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def set_threads(torch_threads: int) -> None:
    threads = torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
