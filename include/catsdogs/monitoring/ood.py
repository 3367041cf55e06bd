"""Out-of-distribution score of a picture from its penultimate-layer embedding: the Mahalanobis
distance to the nearest class-conditional Gaussian with one shared covariance (Lee et al. 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks")
on L2-normalised embeddings (as in SSD, Sehwag et al. 2021, and KNN, Sun et al. 2022).

Why normalised: noise and text pictures give embeddings of SMALL norm (measured with ImageNet
MobileNetV2 on real photos: mean norm 10 for noise, 23 for text, 51 for cats and dogs), which lie
close to the class means in raw space, so raw Mahalanobis called 0% of them out of distribution;
on the unit sphere it is the direction that counts, and 100% of noise, text and scikit-image's
non-pet photos came out (tests/monitoring/test_ood_real_photos.py has the current figures).

Fitted at training time on the train split's embeddings and true labels (class means; the
covariance of the class-centred embeddings, Ledoit-Wolf shrunk because the embedding has 512-1280
dimensions and the train split may hold fewer pictures), and calibrated on the validation split:
the threshold is the `quantile` of the in-distribution validation scores, so by construction about
(1 - quantile) of pictures like the validation ones are flagged.

Known out-of-distribution pictures (production uploads a person labelled "neither", issue 30:
`catsdogs ingest` keeps them in `raw/neither/`, never a picture of the source, so never one of the
test split) move the threshold only when there are at least `min_known` of them (`calibrate`):

    t_q = quantile(val, q)                       (the rule above; with fewer known pictures: t = t_q)
    candidates = {t_q} + {val scores s <= t_q with share(val <= s) >= min_in_distribution}
    t = argmax over candidates of  share(val <= t) + share(known > t)     (ties: the highest t)

i.e. Youden's J statistic (Youden 1950, "Index for rating diagnostic tests"; the usual choice of
an ROC operating point) restricted to thresholds at or BELOW today's: the threshold never rises
(the validation quantile stays the ceiling on false alarms for pictures like the validation ones),
and lowers only while it keeps at least `min_in_distribution` of the validation pictures in
distribution, and only where flagging more known pictures outweighs the validation pictures it
loses. Only val scores need be tried: between two of them the val share is constant and the known
share can only grow as t falls. The known pictures' count, the share the chosen threshold flags
(also reported when there are fewer than `min_known`) and t_q are recorded (`known_ood`).

    u = x / |x|
    score(x) = min_c (u - mu_c)^T P (u - mu_c)        (mu_c, P: fitted on normalised embeddings)
    in_distribution = score <= threshold

Scoring needs numpy only (the served image carries no scikit-learn). Written here rather than
taken from a library (e.g. pytorch-ood, PyOD) because it is ~20 lines of linear algebra on the
embedding the service already computes, and those libraries bring their own model wrappers.

Stored as two files (the train stage logs them under `monitoring/` of the run; the Bento import
copies them into the Bento model):
- `ood.json`: {"method": "mahalanobis", "threshold", "quantile", "embedding_size", "normalised": true,
  "classes",
  "val_scores": {"p50", "p95", "p99", "max"}, "val_in_distribution_rate", "train_pictures",
  "val_pictures", "known_ood": {"pictures", "min_pictures", "used", "flagged_share" (null with no
  picture), "quantile_threshold", "min_in_distribution"}, "arrays": "ood.npz"}
- `ood.npz`: `means` (C,D float32), `precision` (D,D float32).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHOD = "mahalanobis"
JSON_FILE, ARRAYS_FILE = "ood.json", "ood.npz"


@dataclass(frozen=True, eq=False)
class OodDetector:
    """Class means (C,D), shared precision (D,D), threshold on the score (squared distance)."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    classes: tuple[str, ...]
    calibration: dict[str, Any]

    @property
    def embedding_size(self) -> int:
        return int(self.means.shape[1])

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """N,D embeddings -> N float32 scores (squared Mahalanobis distance to the nearest class;
        higher: less like the training pictures). ValueError when D does not match."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings of shape {x.shape}; the detector takes N x "
                             f"{self.embedding_size}")
        centred = normalise(x.astype(np.float64))[:, None, :] - self._means64[None]  # N,C,D
        whitened = centred.astype(np.float32).reshape(-1, self.embedding_size) @ self._factor
        return np.square(whitened).sum(axis=1).reshape(len(x), -1).min(axis=1)

    @functools.cached_property
    def _means64(self) -> np.ndarray:
        return self.means.astype(np.float64)

    @functools.cached_property
    def _factor(self) -> np.ndarray:
        """L with precision = L L^T (Cholesky, in float64): the score is then a sum of squares,
        ||(u - mu) L||^2, with the difference taken in float64 BEFORE the float32 product. The
        quadratic form (u - mu)^T P (u - mu) in float32 cancelled badly (the shrunk precision is
        ill-conditioned: one picture's score moved ~2% between batch sizes)."""
        precision = self.precision.astype(np.float64)
        return np.linalg.cholesky((precision + precision.T) / 2).astype(np.float32)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """N scores -> N booleans (True: looks like the training pictures)."""
        return np.asarray(scores) <= self.threshold

    def save(self, folder: Path) -> list[Path]:
        """Write `ood.json` and `ood.npz` into `folder`; returns both paths."""
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / ARRAYS_FILE, means=self.means.astype(np.float32),
                 precision=self.precision.astype(np.float32))
        (folder / JSON_FILE).write_text(json.dumps({
            "method": METHOD, "threshold": self.threshold, "quantile": self.quantile,
            "embedding_size": self.embedding_size, "normalised": True, "classes": list(self.classes),
            **self.calibration, "arrays": ARRAYS_FILE}, indent=2))
        return [folder / JSON_FILE, folder / ARRAYS_FILE]

    @classmethod
    def load(cls, folder: Path) -> OodDetector:
        """Read what `save` wrote. FileNotFoundError when absent, ValueError when malformed."""
        meta = json.loads((folder / JSON_FILE).read_text())
        if meta.get("method") != METHOD:
            raise ValueError(f"{folder / JSON_FILE}: method {meta.get('method')!r}, expected "
                             f"{METHOD!r}")
        with np.load(folder / meta.get("arrays", ARRAYS_FILE)) as arrays:
            means, precision = arrays["means"], arrays["precision"]
        if precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"{folder / ARRAYS_FILE}: precision {precision.shape} does not "
                             f"match means {means.shape}")
        extra = {k: v for k, v in meta.items() if k in ("val_scores", "val_in_distribution_rate",
                                                         "train_pictures", "val_pictures",
                                                         "known_ood")}
        return cls(means, precision, float(meta["threshold"]), float(meta["quantile"]),
                   tuple(meta.get("classes") or ()), extra)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def calibrate(val_scores: np.ndarray, known_scores: np.ndarray, quantile: float,
              min_known: int, min_in_distribution: float) -> tuple[float, dict[str, Any]]:
    """The threshold from M val scores and K known out-of-distribution scores by the module
    docstring's rule, and the `known_ood` record (pictures, min_pictures, used, flagged_share:
    the share of the known pictures the threshold flags, None when K is 0; quantile_threshold:
    t_q; min_in_distribution). ValueError when there is no val score."""
    val = np.asarray(val_scores, dtype=np.float64)
    known = np.asarray(known_scores, dtype=np.float64).reshape(-1)
    if val.size == 0:
        raise ValueError("the out-of-distribution threshold needs at least 1 validation picture")
    ceiling = float(np.quantile(val, quantile))
    threshold = ceiling
    used = len(known) >= min_known
    if used:
        ordered = np.sort(val)
        kept = np.searchsorted(ordered, ordered, side="right") / len(ordered)  # share(val <= s)
        candidates = np.concatenate([[ceiling], ordered[(ordered <= ceiling)
                                                        & (kept >= min_in_distribution)]])
        gain = (np.mean(val[None, :] <= candidates[:, None], axis=1)
                + np.mean(known[None, :] > candidates[:, None], axis=1))
        best = np.flatnonzero(gain >= gain.max() - 1e-12)
        threshold = float(candidates[best].max())
    record = {"pictures": len(known), "min_pictures": min_known, "used": used,
              "flagged_share": float(np.mean(known > threshold)) if len(known) else None,
              "quantile_threshold": ceiling, "min_in_distribution": min_in_distribution}
    return threshold, record


def fit(train_embeddings: np.ndarray, train_labels: np.ndarray, val_embeddings: np.ndarray,
        classes: tuple[str, ...], quantile: float = 0.99,
        known_embeddings: np.ndarray | None = None, min_known: int = 20,
        min_in_distribution: float = 0.95) -> OodDetector:
    """Fit on the train split (N,D embeddings, N class indices) and set the threshold from the
    validation split's scores (M,D) and the known out-of-distribution pictures' (K,D; None or
    K=0: the `quantile` of the val scores alone) by `calibrate`. ValueError when there are fewer
    than 2 training pictures."""
    from scipy.linalg import solve_triangular
    from sklearn.covariance import LedoitWolf

    x = normalise(np.asarray(train_embeddings, dtype=np.float64))
    labels = np.asarray(train_labels)
    present = sorted(set(labels.tolist()))
    if len(present) < 1 or len(x) < 2:
        raise ValueError(f"the out-of-distribution detector needs at least 2 training pictures "
                         f"(got {len(x)})")
    means = np.stack([x[labels == c].mean(axis=0) for c in present])
    centred = x - means[np.searchsorted(present, labels)]
    covariance = LedoitWolf(assume_centered=True, store_precision=False).fit(centred).covariance_
    # a floor on the diagonal: with one picture per class the residuals are all zero (a zero
    # covariance); otherwise it changes the scores by about a millionth
    covariance[np.diag_indices_from(covariance)] += max(1e-9, 1e-6 * np.trace(covariance)
                                                        / len(covariance))
    # the inverse through the Cholesky factor: 30x faster than scikit-learn's pseudo-inverse
    # (an eigendecomposition) for D = 1280; the shrunk, floored covariance is positive definite
    inverse_factor = solve_triangular(np.linalg.cholesky(covariance), np.eye(len(covariance)),
                                      lower=True)
    precision = inverse_factor.T @ inverse_factor
    unfitted = OodDetector(means.astype(np.float32), precision.astype(np.float32), np.inf,
                           quantile, classes, {})
    val = unfitted.score(val_embeddings)
    known = (unfitted.score(known_embeddings) if known_embeddings is not None
             and len(known_embeddings) else np.zeros(0, dtype=np.float32))
    threshold, known_ood = calibrate(val, known, quantile, min_known, min_in_distribution)
    calibration = {
        "val_scores": {"p50": float(np.quantile(val, 0.5)), "p95": float(np.quantile(val, 0.95)),
                       "p99": float(np.quantile(val, 0.99)), "max": float(val.max())},
        "val_in_distribution_rate": float(np.mean(val <= threshold)),
        "train_pictures": len(x), "val_pictures": len(val), "known_ood": known_ood}
    return OodDetector(unfitted.means, unfitted.precision, threshold, quantile, classes,
                       calibration)
