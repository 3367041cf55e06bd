"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on the validation split so that
softmax(logits / T) minimises the cross-entropy against Platt's targets (below), then folded into
the network's classifier head (weight / T, bias / T: exactly logits / T). Off by default
(`train.temperature_scaling`): 10-fold cross-validated on the sample, the uncalibrated network
had the lower log loss and ECE (docs/training.md, "Cross-validated").

Folding makes the calibrated network an ordinary network: the registered weights carry T, so
every forward pass (`catsdogs.inference.scorer.Scorer`: training's test scores, evaluate,
promote, the reference profile, the serving import and the Bento service) applies it
identically, with nothing extra to store, load or forget. T only rescales the logits, so the
predicted class (and accuracy, F1, ROC-AUC) is unchanged; log loss and ECE change.

The fit's targets are Platt's (1999; scikit-learn's `CalibratedClassifierCV(method="sigmoid")`
uses them too), not the hard labels: a picture of class c counts as P(c) = (N_c + 1) / (N_c + 2),
the rest spread over the other classes, N_c being the validation pictures of class c.
- With hard labels, a validation split the network gets entirely right (common: 200 pictures at
  99%) has no finite optimum: every sharpening lowers its log loss. T ran to the search bound
  0.05 on one fold of the sample, making the network near-certain on everything, so one mistake
  on the test split costs up to the metrics' 16 nats (-ln 1e-7).
- Platt's targets are the Laplace estimate of what N_c pictures can show. Where the split holds
  no mistake or few, T stops where the mean P(right) is about (N_c + 1) / (N_c + 2) instead of 1;
  the more mistakes the split holds, the less the two fits differ.
- Measured on the sample's 2,000 out-of-fold photos: Platt's fit never degenerated (log loss
  0.057 against the hard fit's 0.077) but left the network under-confident (ECE 2.1 %).
  `benchmarks/train_quality.py --folds` measures both fits on the same logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

from catsdogs.inference.compute import Compute
from catsdogs.inference.scorer import Scorer, head_of

log = logging.getLogger(__name__)

TEMPERATURE_BOUNDS = (0.05, 20.0)     # the search interval of T
LOG_FLOOR = 1e-38                     # smallest float32 probability kept (|logit gap| <= ~87)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    return scaled - (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean log loss (nats) of softmax(logits / T) against the hard labels."""
    return float(-_log_softmax(logits, temperature)[np.arange(labels.size), labels].mean())


def platt_targets(labels: np.ndarray, classes: int) -> np.ndarray:
    """N,C target probabilities: (N_c + 1) / (N_c + 2) on each picture's class c, the remainder
    shared equally by the other classes (module docstring)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    own = (counts[labels] + 1) / (counts[labels] + 2)
    targets = np.repeat(((1 - own) / max(classes - 1, 1))[:, None], classes, axis=1)
    targets[np.arange(labels.size), labels] = own
    return targets


def fit_temperature(logits: np.ndarray, labels: np.ndarray, targets: str = "platt") -> float:
    """The T in TEMPERATURE_BOUNDS minimising the mean cross-entropy of softmax(logits / T)
    against `targets`: "platt" (the default, module docstring) or "hard" (the labels themselves,
    Guo et al.'s plain maximum likelihood; kept to measure against).

    `logits`: N,C float (any per-row constant shift allowed: log-probabilities do); `labels`:
    N class indices. ValueError on an empty split or unknown targets."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("temperature scaling needs at least one validation picture")
    if targets not in ("platt", "hard"):
        raise ValueError(f"targets must be 'platt' or 'hard', got {targets!r}")
    goal = (platt_targets(labels, logits.shape[1]) if targets == "platt"
            else np.eye(logits.shape[1])[labels])
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    found = minimize_scalar(
        lambda log_t: float(-(goal * _log_softmax(logits, math.exp(log_t))).sum(axis=1).mean()),
        bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


@torch.no_grad()
def fold_temperature(net: torch.nn.Module, temperature: float) -> None:
    """Divide the head's (`head_of`) weight and bias by `temperature`, in place: the network
    then outputs logits / temperature. ValueError for T <= 0 or a network without a head."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    head = head_of(net)
    head.weight.div_(temperature)
    if head.bias is not None:
        head.bias.div_(temperature)


def calibrate(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              compute: Compute) -> dict[str, float]:
    """Fit T on `batches` (the validation split: images, labels) through THE forward pass and
    fold it into `net`. Returns {"temperature", "val_log_loss_before", "val_log_loss_after"}."""
    scorer = Scorer(net, compute)
    log_probs, labels = [], []
    for images, targets in batches:
        log_probs.append(torch.log(scorer(images).clamp_min(LOG_FLOOR)).numpy())
        labels.append(targets.numpy())
    logits, truth = np.concatenate(log_probs), np.concatenate(labels)
    temperature = fit_temperature(logits, truth)
    fold_temperature(net, temperature)
    result = {"temperature": temperature, "val_log_loss_before": _nll(logits, truth, 1.0),
              "val_log_loss_after": _nll(logits, truth, temperature)}
    log.info("temperature scaling: T=%.3f fitted on %d validation pictures (log loss %.4f -> "
             "%.4f), folded into the classifier head", temperature, truth.size,
             result["val_log_loss_before"], result["val_log_loss_after"])
    return result
