"""The training loop: the measured precision and layout choice, epochs with validation,
best-by-F1 weights. The device and precision rules are `catsdogs.inference.compute`'s; every
function here takes where and how the network runs as one `Compute` (device, precision,
channels_last)."""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from catsdogs.console import Progress
from catsdogs.inference.compute import Compute, cpu_supports_bf16, resolve_precision
from catsdogs.inference.scorer import Scorer
from catsdogs.training.metrics import classification_metrics

log = logging.getLogger(__name__)

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


@dataclass(frozen=True)
class Choice:
    """How training runs on this machine: autocast precision and memory layout, and the
    training images/s measured for each candidate (empty when there was no choice)."""

    precision: str
    channels_last: bool
    measured: dict[str, float] = field(default_factory=dict)

    def compute(self, device: torch.device) -> Compute:
        """This choice on `device` (the device `choose` measured on)."""
        return Compute(device, self.precision, self.channels_last)


def _label(precision: str, channels_last: bool) -> str:
    return f"{precision}{' + channels_last' if channels_last else ''}"


def candidates(requested: str, device: torch.device) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs worth measuring. CUDA: fp16 AMP + channels_last (or the
    requested precision). CPU: fp32 in both layouts, plus bf16 + channels_last only where the
    CPU has native bfloat16 (emulated bf16 is several times slower than fp32)."""
    if device.type == "cuda":
        return [(resolve_precision(requested, device), True)]
    if requested == "auto":
        precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    else:
        precisions = [resolve_precision(requested, device)]
    return [(p, layout) for p in precisions for layout in ((False, True) if p == "fp32" else (True,))]


def _known_choices(store: Path | None) -> dict[str, Any]:
    """The choices kept in `store` ({} when there is none, or it is damaged: logged, remade)."""
    if store is None or not store.exists():
        return {}
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); measuring again and rewriting it", store, exc)
        return {}
    if not isinstance(known, dict):
        log.warning("%s is not a JSON object; measuring again and rewriting it", store)
        return {}
    return known


def choose(requested: str, device: torch.device, probe: Callable[[Compute], float],
           store: Path | None = None, key: str = "") -> Choice:
    """The fastest `candidates` pair by `probe(Compute(device, precision, channels_last)) ->
    training images/s`. With `store`, a choice made before for the same `key` (machine, network,
    sizes) is reused, so a noisy re-measurement cannot change a run's fingerprint.
    `Choice.compute(device)` gives the `Compute` to train with."""
    options = candidates(requested, device)
    if len(options) == 1:
        return Choice(*options[0])
    known = _known_choices(store)
    try:
        if key in known and (known[key]["precision"], known[key]["channels_last"]) in options:
            return Choice(known[key]["precision"], known[key]["channels_last"],
                          known[key]["measured"])
    except (KeyError, TypeError):
        log.warning("%s: the entry for this machine is damaged; measuring again", store)
    measured = {_label(*option): probe(Compute(device, *option)) for option in options}
    best = max(options, key=lambda option: measured[_label(*option)])
    log.info("training speed (img/s): %s; chosen %s",
             ", ".join(f"{k} {v:.1f}" for k, v in measured.items()), _label(*best))
    if store is not None:
        from catsdogs.storage import atomic_file

        known[key] = {"precision": best[0], "channels_last": best[1], "measured": measured}
        with atomic_file(store) as tmp:
            tmp.write_text(json.dumps(known, indent=1))
    return Choice(best[0], best[1], measured)


def probe_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
               steps: int = 2) -> Callable[[Compute], float]:
    """A `probe` for `choose`: training images/s of a copy of `model` on one batch (`images`
    float32 N,3,S,S normalised, `targets` N labels) run as the probe's `Compute` says (one
    warm-up step, then the median of `steps`)."""

    def probe(compute: Compute) -> float:
        copy_ = copy.deepcopy(model)
        train_mode(copy_)
        step = make_step(copy_, 1e-4, compute)
        step(images, targets)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            step(images, targets)
            times.append(time.perf_counter() - started)
        return len(targets) / statistics.median(times)

    return probe


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


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def predict(model: torch.nn.Module, loader: Batches, compute: Compute
            ) -> tuple[list[int], list[float]]:
    """True labels and P(dog) in [0, 1] for every image of `loader` (float32 N,3,H,W normalised
    images, N labels), through `catsdogs.inference.scorer.Scorer` on `compute`'s device, in its
    precision (autocast) and memory layout (`Compute.resolve` gives the default layout)."""
    scorer = Scorer(model, compute)
    labels: list[int] = []
    probs: list[float] = []
    for images, targets in loader:
        probs += scorer(images)[:, 1].tolist()
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


def make_step(model: torch.nn.Module, lr: float, compute: Compute, compile_model: bool = False,
              label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """Move `model` to `compute.device` in its memory layout and return one optimisation step
    `step(images float32 N,3,S,S, targets N) -> loss` (Adam at learning rate `lr`,
    cross-entropy with `label_smoothing`, autocast in `compute.precision`, a GradScaler for fp16;
    `compile_model`: through `torch.compile`)."""
    device, memory = compute.device, compute.memory_format
    model.to(device, memory_format=memory)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=compute.precision == "fp16")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    forward = torch.compile(model) if compile_model else model

    def step(images: torch.Tensor, targets: torch.Tensor) -> float:
        images = images.to(device, non_blocking=True, memory_format=memory)
        targets = targets.to(device, non_blocking=True)
        with compute.autocast():
            loss = loss_fn(forward(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach().item()

    return step


def fit(model: torch.nn.Module, train_loader: Batches, val_loader: Batches, *,
        epochs: int, lr: float, compute: Compute, compile_model: bool = False,
        label_smoothing: float = 0.0,
        on_epoch: Callable[[int, dict[str, float]], Any] | None = None) -> FitResult:
    """The `full` recipe: Adam + cross-entropy (with `label_smoothing`) on every layer for
    `epochs`, trained and
    validated as `compute` says (device, precision, layout); keeps a deep copy of the best
    weights by val F1. `train_loader` is a DataLoader or `TensorBatches` (any iterable of
    (images N,3,S,S, labels N) with `len()` in batches and a `dataset`)."""
    step = make_step(model, lr, compute, compile_model, label_smoothing)
    result = FitResult(best_state={}, best_epoch=0)
    best_f1 = -1.0
    batches, images = len(train_loader), len(train_loader.dataset)
    for epoch in range(1, epochs + 1):
        train_mode(model)
        started = time.perf_counter()
        total_loss, seen = 0.0, 0
        with Progress(f"epoch {epoch}/{epochs}", images) as counter:
            for number, (inputs, targets) in enumerate(train_loader, 1):
                loss = step(inputs, targets)
                total_loss += loss * len(targets)
                seen += len(targets)
                counter.update(len(targets), f"batch {number}/{batches}, loss {loss:.4f}")
        result.train_seconds += time.perf_counter() - started
        result.train_images += seen
        labels, probs = predict(model, val_loader, compute)
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
