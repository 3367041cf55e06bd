"""Drift of the served model's inputs and outputs: the current window of the prediction log
against the reference profile logged with the served version at training time, with Evidently.

Eight signals, each an Evidently metric in one `Report`:

- **embedding**: `EmbeddingsDrift` on the penultimate-layer embedding (`emb_*`), by default the
  domain-classifier method (`model`: the ROC AUC of a classifier told to separate reference rows
  from current rows; 0.5 = indistinguishable). Drift when the score passes
  `monitor.embedding_threshold`. The embedding is the network's own view of a picture, so a change
  of subject (non-pet pictures), of lighting, colour, sharpness or orientation shows there first.
- **prediction** (`label`): `ValueDrift`, chi-square test; **confidence** and the image
  properties **brightness**, **contrast**, **saturation**, **width**, **height**: `ValueDrift`,
  two-sample Kolmogorov-Smirnov test. Each drifts when its p-value is below `monitor.p_value`.

**Informational signals** (`INFORMATIONAL`: width, height): the upload's stored size, which the
model never sees: the service decodes and squares every picture to its input side
(`catsdogs.data.images.square_image`) before the network, the image statistics and the
embedding see it. A client that resizes every upload (to 640x480, say) moves them and nothing
the model computes, so they are compared and reported (`Signal.informational`) but never count
towards the decision. Whatever a size change does to what the model sees (a stretched or cropped
subject) shows in the embedding and the statistics of the input pixels, which do count.

The drift score is the share of the six **deciding** signals (embedding, prediction, confidence,
brightness, contrast, saturation) that drift (0..1). Drift is **detected** when the embedding
drifts, or when at least `monitor.threshold` of the deciding signals do (several column tests
must agree, which keeps the false-alarm rate of separate tests low).

**Duplicates** count once (`distinct_pictures`): rows with the same `content_hash` (sha256 of
the model's input pixels, `catsdogs.monitoring.prediction_log`) are one picture, so an uptime
probe or a retrying client that sends the same photo 200 times weighs as one picture, not as a
cluster the domain classifier separates at once.

Evidently 0.7.23 imports `pandas.core.dtypes.common.infer_dtype_from_object`, which pandas 3
removed; `_evidently()` puts back the one-line pandas 2 definition before the first import (only
Evidently's legacy column-type test, unused here, calls it).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from catsdogs.config import MonitorParams
from catsdogs.errors import UserError
from catsdogs.monitoring.features import EMBEDDING_PREFIX

log = logging.getLogger(__name__)

EMBEDDING = "embedding"
CATEGORICAL_COLUMNS = ("label",)
NUMERICAL_COLUMNS = ("confidence", "brightness", "contrast", "saturation", "width", "height")
SIGNALS = (EMBEDDING, *CATEGORICAL_COLUMNS, *NUMERICAL_COLUMNS)
"""The signals compared, in report order."""
INFORMATIONAL = ("width", "height")
"""Signals reported but never deciding: the model's input does not see them (module docstring)."""
HASH_COLUMN = "content_hash"
COLUMN_TESTS = {"label": "chisquare", **{name: "ks" for name in NUMERICAL_COLUMNS}}
"""Evidently stat test per column: both give a p-value (drift when below `monitor.p_value`)."""


@dataclass(frozen=True)
class Signal:
    """One compared signal: Evidently's score (a p-value for the columns, the embedding method's
    score for the embedding), the threshold it was judged by, whether it drifted, and whether it
    is only informational (never counts towards the decision: `INFORMATIONAL`)."""

    name: str
    method: str
    score: float
    threshold: float
    drifted: bool
    informational: bool = False


@dataclass
class DriftResult:
    """The comparison of one window with one reference.

    `score`: share of the deciding `signals` that drifted, in [0, 1]; `detected`: the drift
    decision; `current_rows`: distinct pictures compared, `duplicate_rows`: rows left out as
    repeats of one of them; `report`: the Evidently snapshot (`save_html`, `dict`)."""

    signals: list[Signal]
    score: float
    detected: bool
    current_rows: int
    reference_rows: int
    duplicate_rows: int = 0
    report: Any = field(repr=False, default=None)

    def signal(self, name: str) -> Signal:
        """The signal called `name` (one of SIGNALS); KeyError otherwise."""
        for signal in self.signals:
            if signal.name == name:
                return signal
        raise KeyError(name)

    def save_html(self, path: Path) -> Path:
        """Write Evidently's interactive HTML report to `path` (a self-contained page)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.report.save_html(str(path))
        return path

    def summary(self) -> dict[str, Any]:
        """JSON-ready: score, detected, row counts, each signal."""
        return {"score": self.score, "detected": self.detected,
                "current_rows": self.current_rows, "reference_rows": self.reference_rows,
                "duplicate_rows": self.duplicate_rows,
                "signals": [asdict(signal) for signal in self.signals]}


def _evidently() -> Any:
    """The `evidently` module, importable beside pandas 3 (see the module docstring)."""
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = lambda dtype: common.pandas_dtype(dtype).type
    import evidently

    return evidently


def embedding_method(settings: MonitorParams) -> Any:
    """Evidently's embedding drift method named by `monitor.embedding_method`, judged by
    `monitor.embedding_threshold` (model: ROC AUC; distance: euclidean distance of the means;
    mmd: squared maximum mean discrepancy; ratio: share of drifted components)."""
    _evidently()
    from evidently.metrics.embeddings import (
        DistanceDriftMethod,
        MMDDriftMethod,
        ModelDriftMethod,
        RatioDriftMethod,
    )

    methods = {"model": ModelDriftMethod, "distance": DistanceDriftMethod,
               "mmd": MMDDriftMethod, "ratio": RatioDriftMethod}
    return methods[settings.embedding_method](threshold=settings.embedding_threshold)


def embedding_names(frame: pd.DataFrame) -> list[str]:
    """The frame's embedding columns (`emb_0 ...`), in index order."""
    names = [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]
    return sorted(names, key=lambda c: int(str(c)[len(EMBEDDING_PREFIX):]))


def distinct_pictures(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """`frame` with each `content_hash` kept once (its first row; rows without a hash, written
    before the log had one, all kept) and how many rows were left out. A frame without the
    column is returned as it is."""
    if HASH_COLUMN not in frame.columns:
        return frame, 0
    repeated = frame[HASH_COLUMN].notna() & frame.duplicated(HASH_COLUMN, keep="first")
    return frame[~repeated].reset_index(drop=True), int(repeated.sum())


def _check(frame: pd.DataFrame, what: str, embeddings: list[str]) -> pd.DataFrame:
    missing = [c for c in SIGNALS[1:] if c not in frame.columns]
    if missing:
        raise UserError(f"the {what} has no column(s) {', '.join(missing)}; it must hold the "
                        "prediction-log columns (catsdogs.monitoring.features.PREDICTION_COLUMNS)")
    absent = [c for c in embeddings if c not in frame.columns]
    if absent:
        raise UserError(f"the {what} lacks embedding columns {absent[:3]}...: the reference and "
                        "the log come from networks with different embedding sizes")
    chosen = frame[[*SIGNALS[1:], *embeddings]].copy()
    chosen["label"] = chosen["label"].astype(str)
    for name in (*NUMERICAL_COLUMNS, *embeddings):
        chosen[name] = pd.to_numeric(chosen[name], errors="coerce").astype(float)
    return chosen.dropna().reset_index(drop=True)


def compare(reference: pd.DataFrame, current: pd.DataFrame, settings: MonitorParams,
            report: bool = True) -> DriftResult:
    """Compare `current` (prediction-log rows) with `reference` (reference-profile rows): both
    with `label`, `confidence`, `brightness`, `contrast`, `saturation`, `width`, `height` and the
    same `emb_*` columns; a `content_hash` column in `current` counts repeated pictures once
    (`distinct_pictures`). The reference is sampled down to `monitor.reference_rows` (seed 0).

    `report=False` (batch evaluation, e.g. many windows): the same Evidently drift method scores
    the embedding directly instead of through `EmbeddingsDrift`, whose report also draws a t-SNE
    map of both sets (seconds per call); the scores are the same, `DriftResult.report` has no
    embedding panel.

    Raises UserError when a frame lacks columns, has no embedding, or has fewer than 2 rows."""
    embeddings = embedding_names(reference)
    if not embeddings:
        raise UserError("the reference has no embedding columns (emb_0 ...); re-train the model "
                        "so its reference profile is logged")
    current, duplicates = distinct_pictures(current)
    reference, current = _check(reference, "reference", embeddings), _check(
        current, "prediction window", embeddings)
    if len(reference) < 2 or len(current) < 2:
        raise UserError(f"drift needs 2+ rows on each side (reference {len(reference)}, "
                        f"window {len(current)})")
    if len(reference) > settings.reference_rows:
        reference = reference.sample(settings.reference_rows, random_state=0).reset_index(drop=True)

    evidently = _evidently()
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    definition = evidently.DataDefinition(numerical_columns=list(NUMERICAL_COLUMNS),
                                          categorical_columns=list(CATEGORICAL_COLUMNS),
                                          embeddings={EMBEDDING: embeddings})
    method = embedding_method(settings)
    metrics = [EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=method)] if report else []
    metrics += [ValueDrift(column=name, method=COLUMN_TESTS[name], threshold=settings.p_value)
                for name in SIGNALS[1:]]
    snapshot = evidently.Report(metrics).run(
        current_data=evidently.Dataset.from_pandas(current, data_definition=definition),
        reference_data=evidently.Dataset.from_pandas(reference, data_definition=definition))
    values = [float(item["value"]) for item in snapshot.dict()["metrics"]]
    if not report:   # the method mutates its frames (adds a target column): copies
        values.insert(0, float(method(current[embeddings].copy(),
                                      reference[embeddings].copy())[0]))
    signals = [Signal(EMBEDDING, settings.embedding_method, values[0],
                      settings.embedding_threshold, bool(values[0] > settings.embedding_threshold))]
    signals += [Signal(name, COLUMN_TESTS[name], value, settings.p_value,
                       bool(value < settings.p_value), name in INFORMATIONAL)
                for name, value in zip(SIGNALS[1:], values[1:], strict=True)]
    deciding = [signal for signal in signals if not signal.informational]
    score = sum(signal.drifted for signal in deciding) / len(deciding)
    detected = signals[0].drifted or score >= settings.threshold
    log.info("drift score %.3f (%s); %s%s", score, "DETECTED" if detected else "none",
             ", ".join(f"{s.name}={s.score:.4g}{'*' if s.drifted else ''}"
                       f"{' (informational)' if s.informational else ''}" for s in signals),
             f"; {duplicates} repeated pictures left out" if duplicates else "")
    return DriftResult(signals, float(score), bool(detected), len(current), len(reference),
                       duplicates, snapshot)

