"""The interval and calibration arithmetic of `catsdogs.training.metrics`, pinned against values
worked out by hand (Wilson's formula, a 4-picture ECE) and against sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from catsdogs.training import metrics

Z = 1.959963984540054          # the standard normal's 97.5% quantile


def _wilson_by_hand(successes: int, total: int) -> tuple[float, float]:
    p, z2 = successes / total, Z * Z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return centre - half, centre + half


def test_wilson_matches_the_formula_and_known_values() -> None:
    assert metrics.wilson(195, 200) == pytest.approx((0.942822, 0.989275), abs=1e-6)
    assert metrics.wilson(195, 200) == pytest.approx(_wilson_by_hand(195, 200), abs=1e-12)
    # all right: the upper bound is 1 and the lower n / (n + z^2)
    assert metrics.wilson(200, 200) == pytest.approx((200 / (200 + Z * Z), 1.0), abs=1e-9)
    assert metrics.wilson(0, 10) == pytest.approx((0.0, _wilson_by_hand(0, 10)[1]), abs=1e-9)
    assert all(math.isnan(bound) for bound in metrics.wilson(0, 0))


def _sample(count: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    probs = np.clip(labels * 0.7 + rng.normal(0.15, 0.25, count), 0, 1)
    return labels, probs


def test_point_figures_match_sklearn() -> None:
    labels, probs = _sample()
    found = metrics.classification_metrics(labels.tolist(), probs.tolist())
    predicted = probs >= 0.5
    assert found["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert found["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probs))
    assert found["log_loss"] == pytest.approx(sk.log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)))
    # the vectorised statistics the bootstrap resamples agree with the point figures
    for name, statistic in metrics.STATISTICS.items():
        assert statistic(labels[None], probs[None])[0] == pytest.approx(found[name]), name


def test_ece_by_hand() -> None:
    """Confidences 0.9, 0.9 (one right) fall in bin [0.9, 0.95): |0.5 - 0.9| for 2 pictures;
    0.6, 0.6 (one right) in [0.6, 0.65): |0.5 - 0.6| for 2: (0.8 + 0.2) / 4."""
    assert metrics.expected_calibration_error([1, 0, 1, 1], [0.9, 0.9, 0.6, 0.4]) == \
        pytest.approx(0.25)
    assert metrics.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_bootstrap_is_seeded_and_agrees_with_wilson_on_a_proportion() -> None:
    labels, probs = _sample()
    first = metrics.metric_intervals(labels.tolist(), probs.tolist())
    assert first == metrics.metric_intervals(labels.tolist(), probs.tolist())
    accuracy = metrics.bootstrap(metrics.PAIRED["accuracy"], labels, probs)
    assert accuracy == pytest.approx(first["accuracy"], abs=0.01)
    point = metrics.classification_metrics(labels.tolist(), probs.tolist())
    for name in ("accuracy", "f1", "roc_auc", "log_loss"):
        low, high = first[name]
        assert low < point[name] < high, name
        assert high - low < 0.2, name


def test_roc_auc_interval_skips_one_class_resamples_and_is_nan_for_one_class() -> None:
    assert all(math.isnan(b) for b in metrics.metric_intervals([1, 1, 1], [0.2, 0.7, 0.9])
               ["roc_auc"])
    values = metrics.with_intervals([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    assert (values["roc_auc_ci_low"], values["roc_auc_ci_high"]) == (1.0, 1.0)


def test_paired_difference_of_a_model_with_itself_is_zero() -> None:
    labels, probs = _sample()
    assert metrics.paired_difference("f1", labels, probs, probs) == (0.0, 0.0)
    with pytest.raises(KeyError):
        metrics.paired_difference("no-such-metric", labels, probs, probs)
