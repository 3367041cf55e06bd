"""Temperature scaling (`catsdogs.training.calibration`): the fit recovers a known temperature,
folding it into the head is exactly logits / T, and THE forward pass then gives the calibrated
probabilities (the serving side: tests/serving/test_service.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catsdogs.inference.compute import Compute
from catsdogs.inference.scorer import Scorer
from catsdogs.training.calibration import calibrate, fit_temperature, fold_temperature
from catsdogs.training.model import build_model


def _overconfident(temperature: float, count: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels were drawn from softmax(logits / temperature)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(count, 2))
    p_dog = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]) / temperature))
    return logits, (rng.random(count) < p_dog).astype(int)


def test_fit_recovers_the_temperature_labels_were_drawn_with() -> None:
    for truth in (0.5, 1.0, 2.5):
        logits, labels = _overconfident(truth)
        assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.1)
    # a per-row shift (log-probabilities instead of logits) changes nothing
    logits, labels = _overconfident(2.5)
    assert fit_temperature(logits + 7.0, labels) == pytest.approx(
        fit_temperature(logits, labels), rel=1e-3)
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_folding_divides_the_logits() -> None:
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "none").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        fold_temperature(net, 2.5)
        after = net(x)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        fold_temperature(net, 0.0)


def test_calibrate_fits_folds_and_lowers_the_val_log_loss() -> None:
    """An overconfident network (head x 30) on pictures labelled by its own coin flips at T=3:
    calibrate finds T near 3, the val log loss drops, and the Scorer's probabilities afterwards
    are softmax(original logits / T)."""
    torch.manual_seed(0)
    net = build_model("resnet18", "none").eval()
    with torch.no_grad():
        net.fc.weight.mul_(30.0)
        images = torch.randn(256, 3, 32, 32)
        logits = net(images)
    generator = torch.Generator().manual_seed(1)
    labels = torch.bernoulli(torch.softmax(logits / 3.0, dim=1)[:, 1], generator=generator).long()
    compute = Compute.resolve("fp32", torch.device("cpu"))
    batches = [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 256, 64)]
    found = calibrate(net, batches, compute)
    assert found["temperature"] == pytest.approx(3.0, rel=0.35)
    assert found["val_log_loss_after"] < found["val_log_loss_before"]
    torch.testing.assert_close(Scorer(net, compute)(images[:8]),
                               torch.softmax(logits[:8] / found["temperature"], dim=1),
                               rtol=1e-4, atol=1e-5)


def test_a_validation_split_without_a_mistake_gets_a_finite_temperature() -> None:
    """Hard labels on a perfectly separated split push T to the search bound (every sharpening
    lowers their log loss); Platt's targets stop it where P(right) is about (N_c + 1) / (N_c + 2)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    gap = rng.uniform(2.0, 8.0, size=200) * np.where(labels == 1, 1, -1)   # all right
    logits = np.stack([np.zeros(200), gap], axis=1)
    assert fit_temperature(logits, labels, targets="hard") < 0.06        # the bound, 0.05
    fitted = fit_temperature(logits, labels)
    assert 0.3 < fitted < 2.0
    p_right = 1 / (1 + np.exp(-np.abs(gap) / fitted))
    assert p_right.mean() == pytest.approx(101 / 102, abs=0.01)


def test_platt_targets() -> None:
    from catsdogs.training.calibration import platt_targets

    targets = platt_targets(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(targets, [[4 / 5, 1 / 5]] * 3 + [[1 / 3, 2 / 3]])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((2, 2)), np.array([0, 1]), targets="soft")
