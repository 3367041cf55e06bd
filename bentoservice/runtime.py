"""The model at serving time: load the imported MLflow model, pick device and precision, predict.

Precision: fp32 by default; on a CPU with native bfloat16 (AVX512-BF16 / AMX) the bf16 path (weights
and activations in bfloat16, channels_last) is used only when the import step measured that it
gives the same labels as fp32 on at least `BF16_MIN_AGREEMENT` of the real sample photos.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BF16_MIN_AGREEMENT = 0.995
MLFLOW_MODEL_FOLDER = "mlflow_model"


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
    bf16_agreement: float | None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], bento_tag: str) -> ModelInfo:
        agreement = metadata.get("bf16_agreement")
        return cls(name=str(metadata.get("registered_model", "CatsDogsCNN")),
                   version=str(metadata.get("version", "")),
                   run_id=str(metadata.get("run_id", "")),
                   arch=str(metadata.get("arch", "resnet18")),
                   image_size=int(metadata.get("image_size", 224)),
                   classes=tuple(metadata.get("classes") or ("cat", "dog")),
                   bento_tag=bento_tag,
                   bf16_agreement=float(agreement) if agreement is not None else None)


def load_network(model_dir: Path, arch: str) -> torch.nn.Module:
    """The logged network as an eager `nn.Module` (pt2/GraphModule models are rebuilt from their
    state dict with `catsdogs.model.build_model`, so channels_last and bf16 apply everywhere)."""
    import mlflow.pytorch

    loaded = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
    if isinstance(loaded, torch.fx.GraphModule):
        from catsdogs.model import build_model

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


def choose_precision(wanted: str, device: torch.device, agreement: float | None) -> str:
    """fp32 or bf16 (see the module docstring); an explicit CATSDOGS_PRECISION wins."""
    from catsdogs.model import cpu_supports_bf16

    if wanted in ("fp32", "bf16"):
        return wanted
    if device.type != "cpu" or not cpu_supports_bf16():
        return "fp32"
    if agreement is None or agreement < BF16_MIN_AGREEMENT:
        logger.info("bf16 not used: fp32/bf16 label agreement %s < %s (measured at import)",
                    agreement, BF16_MIN_AGREEMENT)
        return "fp32"
    return "bf16"


class Predictor:
    """A network prepared for fast inference: eval, channels_last, on its device. With bf16,
    batches of at least `bf16_min_batch` run a bfloat16 copy; smaller ones stay fp32 (on these
    CPUs bf16 pays off only with several pictures: ~16 vs ~30 img/s at batch 1, ~140 vs ~30 at
    batch 16 for resnet18 on 2 cores)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str,
                 bf16_min_batch: int = 1) -> None:
        self.device = device
        self.precision = precision
        self.bf16_min_batch = bf16_min_batch
        net = net.eval().to(device)
        if not isinstance(net, torch.fx.GraphModule):
            net = net.to(memory_format=torch.channels_last)
        self.fp32 = net
        self.bf16 = copy.deepcopy(net).to(torch.bfloat16) if precision == "bf16" else None

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """N,3,H,W float32 -> N,C softmax probabilities (float32, CPU)."""
        use_bf16 = self.bf16 is not None and len(batch) >= self.bf16_min_batch
        net, dtype = (self.bf16, torch.bfloat16) if use_bf16 else (self.fp32, torch.float32)
        inputs = batch.to(self.device, dtype=dtype, non_blocking=True)
        logits = net(inputs.contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1).cpu()


def set_threads(torch_threads: int) -> None:
    threads = torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))


def bf16_agreement(net: torch.nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Share of pictures where the bf16 path gives the same label as fp32."""
    fp32 = Predictor(copy.deepcopy(net), torch.device("cpu"), "fp32")
    bf16 = Predictor(copy.deepcopy(net), torch.device("cpu"), "bf16", bf16_min_batch=1)
    labels32 = torch.cat([fp32(b).argmax(1) for b in batches])
    labels16 = torch.cat([bf16(b).argmax(1) for b in batches])
    return float((labels32 == labels16).float().mean())
