"""Binary classification metrics (positive class: dog) computed one way everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence

METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "roc_auc")


def classification_metrics(labels: Sequence[int], prob_dog: Sequence[float]) -> dict[str, float]:
    """accuracy, precision, recall, F1 (threshold 0.5) and ROC-AUC (NaN with a single class)."""
    from sklearn import metrics

    predicted = [int(p >= 0.5) for p in prob_dog]
    both_classes = len(set(labels)) == 2
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(labels, prob_dog)) if both_classes else math.nan,
    }


def confusion(labels: Sequence[int], prob_dog: Sequence[float]) -> list[list[int]]:
    """2x2 confusion matrix, rows = true class, columns = predicted class (cat, dog)."""
    from sklearn.metrics import confusion_matrix

    predicted = [int(p >= 0.5) for p in prob_dog]
    return confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
