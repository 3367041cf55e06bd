"""The training loop: device and precision choice, epochs with validation, best-by-F1 weights."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from catsdogs.console import progress
from catsdogs.errors import UserError
from catsdogs.training.metrics import classification_metrics
from catsdogs.training.model import autocast, cpu_supports_bf16

log = logging.getLogger(__name__)

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
# `train.precision: auto` on a CPU with native bfloat16 (AVX512-BF16/AMX): measured by
# benchmarks/train_quality.py on the real sample (see docs/training.md for the figures).
CPU_AUTO_PRECISION_BF16 = True


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto`: fp16 AMP on CUDA, bf16 on CPUs with native bfloat16, else fp32."""
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if CPU_AUTO_PRECISION_BF16 and cpu_supports_bf16() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA GPU; on a CPU use auto, bf16 or fp32")
    return requested


def uses_channels_last(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" or precision == "bf16"


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0


def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device,
            precision: str) -> tuple[list[int], list[float]]:
    """True labels and P(dog) for every image of `loader`."""
    model.eval()
    labels: list[int] = []
    probs: list[float] = []
    memory = torch.channels_last if uses_channels_last(device, precision) else torch.contiguous_format
    with torch.inference_mode():
        for images, targets in loader:
            images = images.to(device, non_blocking=True, memory_format=memory)
            with autocast(device, precision):
                logits = model(images)
            probs += torch.softmax(logits.float(), dim=1)[:, 1].tolist()
            labels += targets.tolist()
    return labels, probs


def train_mode(model: torch.nn.Module) -> None:
    """Training mode, except batch-norm layers whose weights are frozen: a frozen backbone keeps
    its ImageNet running statistics too."""
    model.train()
    for module in model.modules():
        if isinstance(module, BATCH_NORMS) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()


def make_step(model: torch.nn.Module, lr: float, device: torch.device,
              precision: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """Move `model` to `device` and return one optimisation step (Adam, cross-entropy, AMP)."""
    memory = torch.channels_last if uses_channels_last(device, precision) else torch.contiguous_format
    model.to(device, memory_format=memory)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images: torch.Tensor, targets: torch.Tensor) -> float:
        images = images.to(device, non_blocking=True, memory_format=memory)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach().item()

    return step


def fit(model: torch.nn.Module, train_loader: DataLoader, val_loader: DataLoader, *,
        epochs: int, lr: float, device: torch.device, precision: str,
        on_epoch: Callable[[int, dict[str, float]], Any] | None = None) -> FitResult:
    """Adam + cross-entropy for `epochs`; keeps a deep copy of the best weights by val F1."""
    step = make_step(model, lr, device, precision)
    result = FitResult(best_state={}, best_epoch=0)
    best_f1 = -1.0
    for epoch in range(1, epochs + 1):
        train_mode(model)
        started = time.perf_counter()
        total_loss, seen = 0.0, 0
        for images, targets in progress(train_loader, f"epoch {epoch}/{epochs}",
                                        total=len(train_loader)):
            total_loss += step(images, targets) * len(targets)
            seen += len(targets)
        result.train_seconds += time.perf_counter() - started
        result.train_images += seen
        labels, probs = predict(model, val_loader, device, precision)
        metrics = {"train_loss": total_loss / seen} | {
            f"val_{name}": value for name, value in classification_metrics(labels, probs).items()}
        result.history.append(metrics)
        log.info("epoch %d/%d: %s", epoch, epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if metrics["val_f1"] > best_f1:
            best_f1 = metrics["val_f1"]
            result.best_epoch = epoch
            result.best_state = copy.deepcopy(model.state_dict())
    return result
