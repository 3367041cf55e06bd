"""Binary classification metrics (positive class: dog) and their 95% intervals, computed one way
everywhere: train, evaluate, promote, the model card and the benchmarks.

- `classification_metrics`: accuracy, precision, recall, F1 (threshold 0.5), ROC-AUC, log loss
  and ECE (`expected_calibration_error`: top-label, `ECE_BINS` equal-width confidence bins).
- `metric_intervals`: the 95% interval of each. Wilson score intervals for the proportions
  (accuracy, precision, recall: `wilson`); a seeded percentile bootstrap over the pictures for
  F1, ROC-AUC, log loss and ECE (`BOOTSTRAP_RESAMPLES` resamples, seed `BOOTSTRAP_SEED`, so the
  same predictions always give the same interval).
- `with_intervals`: a flat {metric, metric_ci_low, metric_ci_high} dict, the names logged to
  MLflow (`test_accuracy_ci_low`, ...).
- `paired_difference`: the bootstrap interval of metric(challenger) - metric(champion) on the
  same pictures (both resampled together): what `promote` compares with `promote.min_delta`.

On the project's ~200-picture test split one mistake moves accuracy by half a point; a figure
without its interval is not a measurement (docs/training.md, "Error bars").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss",
                                 "ece")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ECE_BINS = 10                  # equal-width bins of the predicted class's probability, [0.5, 1]
PROBABILITY_FLOOR = 1e-7       # log loss clips P(true class) here (a 0 would be infinite)

INTERVALS_NOTE = (f"Intervals: {CONFIDENCE:.0%}; Wilson score for accuracy, precision and recall, "
                  f"a seeded percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the "
                  f"pictures) for F1, ROC-AUC, log loss and ECE. ECE: top-label, {ECE_BINS} "
                  "equal-width bins of the predicted class's probability over [0.5, 1]. Log loss "
                  "in nats per picture.")

# vectorised statistics: (B,N) 0/1 labels, (B,N) P(dog) -> (B,) values; NaN where undefined
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Interval(NamedTuple):
    """A two-sided `CONFIDENCE` interval; NaN bounds where the metric is undefined."""

    low: float
    high: float


def _f1(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    predicted = probs >= 0.5
    true_positive = (predicted & (labels == 1)).sum(-1)
    wrong = (predicted != (labels == 1)).sum(-1)
    denominator = 2 * true_positive + wrong
    return np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)


def _roc_auc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Mann-Whitney: P(score of a dog > score of a cat), ties counting one half."""
    from scipy.stats import rankdata

    ranks = rankdata(probs, axis=-1)
    positives = (labels == 1).sum(-1)
    negatives = labels.shape[-1] - positives
    rank_sum = np.where(labels == 1, ranks, 0.0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, math.nan)


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p_true = np.where(labels == 1, probs, 1 - probs)
    return -np.log(np.clip(p_true, PROBABILITY_FLOOR, 1.0)).mean(-1)


def _ece(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    confidence = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5) == (labels == 1)
    # bin k holds confidences in [0.5 + k w, 0.5 + (k + 1) w), the last bin closed at 1
    bins = np.minimum(((confidence - 0.5) * 2 * ECE_BINS).astype(int), ECE_BINS - 1)
    gap = np.zeros(labels.shape[:-1])
    for k in range(ECE_BINS):
        inside = bins == k
        gap += np.abs(np.where(inside, correct - confidence, 0.0).sum(-1))
    return gap / labels.shape[-1]


STATISTICS: dict[str, Statistic] = {"f1": _f1, "roc_auc": _roc_auc, "log_loss": _log_loss,
                                    "ece": _ece}


def expected_calibration_error(labels: Sequence[int], prob_dog: Sequence[float]) -> float:
    """Top-label ECE: the pictures binned by the probability of the class predicted (ECE_BINS
    equal-width bins over [0.5, 1]), the mean over pictures of |accuracy - mean confidence| of
    their bin. 0 = perfectly calibrated; a fraction, not a percentage."""
    return float(_ece(np.asarray(labels), np.asarray(prob_dog, dtype=float)))


def classification_metrics(labels: Sequence[int], prob_dog: Sequence[float]) -> dict[str, float]:
    """accuracy, precision, recall, F1 (threshold 0.5), ROC-AUC (NaN with a single class), log
    loss (nats per picture, P clipped at PROBABILITY_FLOOR) and ECE."""
    from sklearn import metrics

    predicted = [int(p >= 0.5) for p in prob_dog]
    both_classes = len(set(labels)) == 2
    truth, probs = np.asarray(labels), np.asarray(prob_dog, dtype=float)
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(labels, prob_dog)) if both_classes else math.nan,
        "log_loss": float(_log_loss(truth, probs)),
        "ece": float(_ece(truth, probs)),
    }


def wilson(successes: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of the proportion successes/total (NaN bounds when total is 0)."""
    if total == 0:
        return Interval(math.nan, math.nan)
    from scipy.stats import binomtest

    found = binomtest(successes, total).proportion_ci(confidence, method="wilson")
    return Interval(float(found.low), float(found.high))


def _resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def _percentiles(values: np.ndarray, confidence: float) -> Interval:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return Interval(math.nan, math.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high))


def bootstrap(statistic: Statistic, labels: Sequence[int], prob_dog: Sequence[float], *,
              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
              confidence: float = CONFIDENCE) -> Interval:
    """Percentile bootstrap interval of `statistic` (a `STATISTICS` value) over the pictures;
    resamples where it is undefined (one class only, for ROC-AUC) are left out."""
    truth, probs = np.asarray(labels), np.asarray(prob_dog, dtype=float)
    if truth.size == 0:
        return Interval(math.nan, math.nan)
    index = _resample_indices(truth.size, resamples, seed)
    return _percentiles(statistic(truth[index], probs[index]), confidence)


def metric_intervals(labels: Sequence[int], prob_dog: Sequence[float]) -> dict[str, Interval]:
    """The 95% interval of every `classification_metrics` figure: Wilson for accuracy (correct /
    all), precision (true dogs / predicted dogs) and recall (found dogs / dogs), the seeded
    bootstrap for the others."""
    truth = np.asarray(labels)
    predicted = np.asarray(prob_dog, dtype=float) >= 0.5
    dogs = truth == 1
    intervals = {
        "accuracy": wilson(int((predicted == dogs).sum()), int(truth.size)),
        "precision": wilson(int((predicted & dogs).sum()), int(predicted.sum())),
        "recall": wilson(int((predicted & dogs).sum()), int(dogs.sum())),
    }
    return intervals | {name: bootstrap(statistic, labels, prob_dog)
                        for name, statistic in STATISTICS.items()}


def with_intervals(labels: Sequence[int], prob_dog: Sequence[float]) -> dict[str, float]:
    """`classification_metrics` plus `<metric>_ci_low` / `<metric>_ci_high` for each."""
    values = classification_metrics(labels, prob_dog)
    for name, interval in metric_intervals(labels, prob_dog).items():
        values[f"{name}_ci_low"], values[f"{name}_ci_high"] = interval
    return values


def finite(values: dict[str, float]) -> dict[str, float | None]:
    """NaN (ROC-AUC of a one-class split, an undefined bound) as absent: None (JSON, MLflow)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return ((probs >= 0.5) == (labels == 1)).mean(-1)


def _precision(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    predicted = probs >= 0.5
    found = predicted.sum(-1)
    return np.where(found > 0, (predicted & (labels == 1)).sum(-1) / np.maximum(found, 1), 0.0)


def _recall(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    dogs = (labels == 1).sum(-1)
    return np.where(dogs > 0, ((probs >= 0.5) & (labels == 1)).sum(-1) / np.maximum(dogs, 1),
                    0.0)


PAIRED: dict[str, Statistic] = {"accuracy": _accuracy, "precision": _precision,
                                "recall": _recall, **STATISTICS}


def paired_difference(metric: str, labels: Sequence[int], challenger: Sequence[float],
                      champion: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Interval:
    """Bootstrap interval of metric(challenger) - metric(champion), both scored on the same
    resampled pictures (pairing removes the pictures' shared difficulty from the noise).
    KeyError for a metric without a vectorised statistic (`PAIRED`)."""
    statistic = PAIRED[metric]
    truth = np.asarray(labels)
    if truth.size == 0:
        return Interval(math.nan, math.nan)
    ours, theirs = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    index = _resample_indices(truth.size, resamples, seed)
    return _percentiles(statistic(truth[index], ours[index])
                        - statistic(truth[index], theirs[index]), confidence)


def confusion(labels: Sequence[int], prob_dog: Sequence[float]) -> list[list[int]]:
    """2x2 confusion matrix, rows = true class, columns = predicted class (cat, dog)."""
    from sklearn.metrics import confusion_matrix

    predicted = [int(p >= 0.5) for p in prob_dog]
    return confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
