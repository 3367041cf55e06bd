"""The training data a run used, recorded as an MLflow Dataset (`mlflow.log_input`) and read back
for the model card.

The Dataset is an MLflow `MetaDataset` (metadata only: the pictures stay where they are) with:

- source: where ingest took the pictures from (`kaggle:OWNER/DATASET` as the Kaggle page's
  `HTTPDatasetSource`, `dir:`/`archive:` paths as a local source; the transformed folder when
  the provenance is unknown);
- digest: the digest of every transformed file the run trained, validated and tested on (the
  train stage's `data_hash`, 16 hex characters);
- profile (JSON): the ingest source as written, whether the pictures were generated, the sha256 of
  the prepared manifest, the transformed digest, the pictures per split and class, and how many
  of them are labelled production pictures and when they were labelled (`production`).

MLflow shows it on the run page (Inputs) and keeps it with the run; `from_run` reads the profile
back without downloading anything, which is what keeps rendering a model card cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catsdogs.data.provenance import Provenance

log = logging.getLogger(__name__)

DATASET_NAME = "catsdogs-transformed"
CONTEXT = "training"
KAGGLE_URL = "https://www.kaggle.com/datasets/"


@dataclass(frozen=True)
class TrainingData:
    """What a run trained on. `counts` maps split -> class -> pictures (train/val/test)."""

    source: str                 # ingest source (`kaggle:...`, `dir:...`, `archive:...`) or a folder
    synthetic: bool | None      # generated stand-in pictures; None when not recorded
    manifest_sha256: str        # sha256 of prepared/manifest.csv ("absent" when there was none)
    transformed_digest: str     # digest of the transformed files (relative path + content)
    counts: dict[str, dict[str, int]]
    # labelled production pictures (`catsdogs.data.feedback.in_splits`): per_split counts and
    # labelled_from / labelled_to of the trained ones; empty when none (or not recorded)
    production: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Pictures in all splits together."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def profile(self) -> dict[str, Any]:
        """The MLflow Dataset profile: every field plus the total."""
        return asdict(self) | {"images": self.total}

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> TrainingData:
        """Inverse of `profile`; KeyError/TypeError/ValueError on a profile that is not ours."""
        synthetic = profile.get("synthetic")
        return cls(source=str(profile["source"]),
                   synthetic=None if synthetic is None else bool(synthetic),
                   manifest_sha256=str(profile["manifest_sha256"]),
                   transformed_digest=str(profile["transformed_digest"]),
                   counts={str(split): {str(label): int(n) for label, n in per_class.items()}
                           for split, per_class in profile["counts"].items()},
                   production=dict(profile.get("production") or {}))


def count_pictures(transformed: Path, splits: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Pictures per split and class folder under `transformed/<split>/<class>/` (hidden files
    left out, as in training)."""
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        folder = transformed / split
        counts[split] = {sub.name: sum(1 for p in sub.rglob("*")
                                       if p.is_file() and not p.name.startswith("."))
                         for sub in sorted(folder.iterdir()) if sub.is_dir()} \
            if folder.is_dir() else {}
    return counts


def describe(transformed: Path, splits: tuple[str, ...], provenance: Provenance | None,
             manifest_sha256: str, transformed_digest: str,
             production: dict[str, Any] | None = None) -> TrainingData:
    """The `TrainingData` of the transformed folder (its digests and production pictures
    computed by the caller)."""
    return TrainingData(
        source=provenance.source if provenance is not None else str(transformed),
        synthetic=provenance.synthetic if provenance is not None else None,
        manifest_sha256=manifest_sha256, transformed_digest=transformed_digest,
        counts=count_pictures(transformed, splits), production=dict(production or {}))


def _source(source: str) -> Any:
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource  # registered by mlflow.data

    kind, _, value = source.partition(":")
    if kind == "kaggle" and value:
        return HTTPDatasetSource(KAGGLE_URL + value)
    path = value if kind in ("dir", "archive") and value else source
    return LocalArtifactDatasetSource(Path(path).as_uri() if Path(path).is_absolute() else path)


def log_input(data: TrainingData) -> None:
    """`mlflow.log_input` the data set into the active run (context `training`)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    class ImageFolders(MetaDataset):
        """A MetaDataset with a profile (MetaDataset itself has none)."""

        @property
        def profile(self) -> dict[str, Any]:
            return data.profile()

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile, sort_keys=True)}

    mlflow.log_input(ImageFolders(_source(data.source), name=DATASET_NAME,
                                  digest=data.transformed_digest), context=CONTEXT)


def from_run(run: Any) -> TrainingData | None:
    """The training data set an MLflow run logged (`run.inputs`), or None (older runs)."""
    for item in getattr(run.inputs, "dataset_inputs", None) or ():
        dataset = item.dataset
        context = {tag.key: tag.value for tag in item.tags}.get("mlflow.data.context")
        if dataset.name != DATASET_NAME or context != CONTEXT or not dataset.profile:
            continue
        try:
            return TrainingData.from_profile(json.loads(dataset.profile))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("run %s: data set %s has an unreadable profile (%s)", run.info.run_id,
                        dataset.name, exc)
    return None
