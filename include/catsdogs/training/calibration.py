"""Temperature scaling (Guo et al. 2017): one scalar T > 0 fitted on the validation split so that
softmax(logits / T) minimises the log loss, then folded into the network's classifier head
(weight / T, bias / T: exactly logits / T).

Folding makes the calibrated network an ordinary network: the registered weights carry T, so
every forward pass (`catsdogs.inference.scorer.Scorer`: training's test scores, evaluate,
promote, the reference profile, the serving import and the Bento service) applies it
identically, with nothing extra to store, load or forget. T only rescales the logits, so the
predicted class (and accuracy, F1, ROC-AUC) is unchanged; log loss and ECE change.
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


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float((log_norm - scaled[np.arange(labels.size), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the mean log loss of softmax(logits / T).

    `logits`: N,C float (any per-row constant shift allowed: log-probabilities do); `labels`:
    N class indices. ValueError on an empty split."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("temperature scaling needs at least one validation picture")
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: _nll(logits, labels, math.exp(log_t)),
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
