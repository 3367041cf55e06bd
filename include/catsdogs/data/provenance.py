"""Where the training data came from, carried with the data from ingest to the registered model.

`ingest` writes `raw/provenance.json` (`{"source": "dir:/abs/path", "synthetic": false}`);
`prepare` and `transform` copy it into their outputs (also when they skip, so it always describes
the data beside it); `train` tags the MLflow run and the registered model version with it
(`data.source`, `data.synthetic`); the Bento import copies those tags into the served model's
metadata, and the service, its web page and the demo summary say so when a model was trained on
generated stand-in images.

Generated stand-in sets (`catsdogs.data.synthetic.generate_dataset`, what `make demo` uses without
Kaggle credentials) carry a marker file, `.catsdogs-generated.json`, at their root. A source is
"synthetic" when the marker is among its files; it is never guessed from paths or names. The
marker is a hidden file, so ingest leaves it out of `raw/` like any other clutter.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.storage import atomic_file

log = logging.getLogger(__name__)

PROVENANCE_NAME = "provenance.json"
GENERATED_MARKER = ".catsdogs-generated.json"
SOURCE_TAG = "data.source"          # registry model-version tag and MLflow run tag
SYNTHETIC_TAG = "data.synthetic"    # "true" | "false"
REAL_DATA_HINT = (
    "For a model of real cats and dogs, give Kaggle credentials (export KAGGLE_USERNAME and "
    "KAGGLE_KEY, or save ~/.kaggle/kaggle.json) or a folder of real photos with cat/ and dog/ "
    "sub-folders (make demo DEMO_SOURCE=dir:/path/to/photos, or catsdogs ingest --source "
    "dir:/path/to/photos), then train again."
)


@dataclass(frozen=True)
class Provenance:
    """The data a model was trained on: its ingest source and whether it was generated."""

    source: str        # ingest source: `kaggle:OWNER/DATASET`, `dir:/abs/path`, `archive:/abs/path`
    synthetic: bool    # generated stand-in pictures (coloured shapes), not real photos

    def tags(self) -> dict[str, str]:
        """`{"data.source": ..., "data.synthetic": "true"|"false"}` for MLflow runs and versions."""
        return {SOURCE_TAG: self.source, SYNTHETIC_TAG: "true" if self.synthetic else "false"}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Provenance | None:
        """The provenance in MLflow tags; None when they do not say (models trained before it was
        recorded)."""
        if SOURCE_TAG not in tags:
            return None
        return cls(tags[SOURCE_TAG], tags.get(SYNTHETIC_TAG, "").lower() == "true")

    def note(self) -> str:
        """A plain warning for people when the data was generated; '' for real data."""
        if not self.synthetic:
            return ""
        return ("This model was trained on generated stand-in pictures (coloured shapes from "
                f"{self.source}), not on real photos: its answers for real cats and dogs mean "
                f"nothing. {REAL_DATA_HINT}")

    def as_dict(self) -> dict[str, Any]:
        """JSON form: `{"source", "synthetic", "note"}`."""
        return {"source": self.source, "synthetic": self.synthetic, "note": self.note()}


def mark_generated(root: Path, **details: Any) -> None:
    """Mark `root` as a generated stand-in data set (called by the generator)."""
    (root / GENERATED_MARKER).write_text(json.dumps({"generator": "catsdogs.data.synthetic",
                                                     **details}, sort_keys=True))


def is_generated(root: Path) -> bool:
    """True when a generator's marker is anywhere under `root` (a folder of unpacked files)."""
    for _directory, _subdirs, names in os.walk(root):
        if GENERATED_MARKER in names:
            return True
    return False


def write(folder: Path, provenance: Provenance) -> None:
    """`folder/provenance.json`, atomically."""
    with atomic_file(folder / PROVENANCE_NAME) as tmp:
        tmp.write_text(json.dumps({"source": provenance.source,
                                   "synthetic": provenance.synthetic}, sort_keys=True) + "\n")


def read(folder: Path) -> Provenance | None:
    """The provenance stored in `folder`, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / PROVENANCE_NAME).read_text())
        return Provenance(str(data["source"]), bool(data["synthetic"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def carry(source_folder: Path, target_folder: Path) -> Provenance | None:
    """Make `target_folder`'s provenance the same as `source_folder`'s (removed when the source
    has none). Writes only on a change. Returns the provenance."""
    found = read(source_folder)
    if found is None:
        (target_folder / PROVENANCE_NAME).unlink(missing_ok=True)
    elif read(target_folder) != found:
        write(target_folder, found)
    return found
