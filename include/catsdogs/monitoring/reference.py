"""The reference profile: what the training pictures looked like to the model, logged with every
trained model version so that whichever version is served has its own reference.

The train stage calls `log_reference` inside its MLflow run, after the best weights are loaded. It
is inference only, over the tensor cache the training already read (`catsdogs.training.cache`):
one forward pass per picture of the train and val splits through `catsdogs.inference.scorer.Scorer`
(the same (probabilities, embedding) pass the service runs), with the run's `Compute`: the
training device, precision and memory layout the run chose.

Artifacts of the training run (the served version's `run_id` finds them):

- `monitoring/reference.parquet` (`REFERENCE_ARTIFACT`): one row per picture of the train and val
  splits, columns
    split (str: train|val), true_label (str), label (str: predicted), confidence (float: its
    probability), width, height (int: the ORIGINAL picture's pixels, from the prepared manifest
    when the data dir has it, else the transformed file's), format (str: JPEG, PNG, ...),
    brightness, contrast, saturation (float in [0, 1], `features.image_statistics` of the model's
    input pixels), ood_score (float), in_distribution (bool), emb_0 .. emb_{D-1} (float32: the
    full penultimate-layer embedding, D = 1280 for mobilenet_v2, 512 for resnet18).
- `monitoring/ood.json` + `monitoring/ood.npz` (`OOD_ARTIFACTS`): the out-of-distribution
  detector fitted on the train split and calibrated on the val split and, when ingest kept
  enough "neither"-labelled production pictures, on those known out-of-distribution pictures
  too (`catsdogs.monitoring.ood.calibrate`; `known_ood` in ood.json says how many and what share
  of them the threshold flags).

`load_reference(run_id)` and `download_ood(run_id, folder)` read them back.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catsdogs.monitoring.features import embedding_columns, image_statistics
from catsdogs.paths import DataPaths

if TYPE_CHECKING:
    from catsdogs.inference.compute import Compute

log = logging.getLogger(__name__)

ARTIFACT_DIR = "monitoring"
REFERENCE_FILE = "reference.parquet"
REFERENCE_ARTIFACT = f"{ARTIFACT_DIR}/{REFERENCE_FILE}"
OOD_ARTIFACTS = (f"{ARTIFACT_DIR}/ood.json", f"{ARTIFACT_DIR}/ood.npz")
REFERENCE_SPLITS = ("train", "val")
PROFILE_BATCH = 64


def run_network(net: Any, pixels: Any, compute: Compute | None = None,
                batch_size: int = PROFILE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """N,3,S,S uint8 pixels through `catsdogs.inference.scorer.Scorer` -> (N,D float32
    embedding, N,C float32 probabilities). `compute`: as the training run measured best on this
    machine (bf16 autocast: 1.7x faster than fp32 for MobileNetV2 at 128 px on an AVX512-BF16
    Xeon); None: fp32 on the CPU."""
    import torch

    from catsdogs.inference.compute import Compute
    from catsdogs.inference.scorer import Scorer

    scorer = Scorer(net, compute or Compute())
    pixels = torch.as_tensor(pixels)
    probabilities, embeddings = scorer.score_all(
        pixels[start:start + batch_size].permute(0, 2, 3, 1)       # N,H,W,3 views
        for start in range(0, len(pixels), batch_size))
    return embeddings, probabilities


def picture_headers(paths: DataPaths, split: str, files: Sequence[Path]
                    ) -> list[tuple[int, int, str]]:
    """(width, height, format) of each transformed file's ORIGINAL picture: through
    `transformed/splits.csv` to the prepared manifest's row; the transformed file's own header
    where either is missing (e.g. a hand-made transformed/ folder)."""
    from PIL import Image

    from catsdogs.data.manifest import read_csv

    original: dict[str, tuple[int, int, str]] = {}
    if paths.splits_csv.exists() and paths.prepared_manifest.exists():
        try:
            prepared = {r["path"]: r for r in read_csv(paths.prepared_manifest,
                                                        ("path", "width", "height", "format"),
                                                        "prepare")}
            for row in read_csv(paths.splits_csv, ("path", "source"), "transform"):
                found = prepared.get(row["source"])
                if found is not None:
                    original[row["path"]] = (int(found["width"]), int(found["height"]),
                                             found["format"].upper())
        except Exception as exc:  # noqa: BLE001 (the headers below are a good stand-in)
            log.warning("reference profile: original picture sizes unreadable (%s); using the "
                        "transformed files' sizes", exc)
    headers = []
    for file in files:
        key = str(file.relative_to(paths.transformed))
        if key in original:
            headers.append(original[key])
            continue
        with Image.open(file) as image:
            headers.append((image.width, image.height, str(image.format or "")))
    return headers


def profile_frame(split: str, labels: np.ndarray, probabilities: np.ndarray,
                  pixels: Any, headers: Sequence[tuple[int, int, str]],
                  classes: Sequence[str]) -> Any:
    """The reference rows of one split (columns: module docstring, without the OOD columns)."""
    import pandas as pd

    predicted = probabilities.argmax(axis=1)
    stats = [image_statistics(np.asarray(pixels[i]).transpose(1, 2, 0))
             for i in range(len(labels))]
    return pd.DataFrame({
        "split": split, "true_label": [classes[int(i)] for i in labels],
        "label": [classes[int(i)] for i in predicted],
        "confidence": probabilities.max(axis=1).astype(np.float64),
        "width": [h[0] for h in headers], "height": [h[1] for h in headers],
        "format": [h[2] for h in headers],
        **{key: [s[key] for s in stats] for key in ("brightness", "contrast", "saturation")}})


def log_reference(net: Any, data: dict[str, Any], paths: DataPaths, classes: Sequence[str],
                  compute: Compute, quantile: float, known_ood: Any | None = None,
                  min_known: int = 20, min_in_distribution: float = 0.95) -> dict[str, Any]:
    """Profile the train and val splits, fit and calibrate the out-of-distribution detector, log
    `REFERENCE_ARTIFACT` and `OOD_ARTIFACTS` to the active MLflow run. `data`: split name ->
    `TensorSplit` (uint8 N,3,S,S pictures, N labels); `compute`: the run's device, precision and
    layout (`run_network`); `quantile`: the OOD threshold's quantile of the val scores, in (0, 1);
    `known_ood`: uint8 K,3,S,S known out-of-distribution pictures (None: none), used from
    `min_known` on, keeping at least `min_in_distribution` of val in distribution
    (`catsdogs.monitoring.ood.calibrate`; they are not in the reference profile). Returns what it
    measured (pictures, seconds, threshold, val in-distribution rate, `known_ood`)."""
    import mlflow
    import pandas as pd

    from catsdogs.monitoring import ood
    from catsdogs.training.loading import list_images

    started = time.perf_counter()
    frames, embeddings, labels = [], {}, {}
    for split in REFERENCE_SPLITS:
        tensors = data[split]
        emb, probs = run_network(net, tensors.pixels, compute)
        files = [path for path, _ in list_images(paths.split_dir(split))]
        labels[split] = tensors.labels.numpy()
        embeddings[split] = emb
        frames.append(profile_frame(split, labels[split], probs, tensors.pixels,
                                    picture_headers(paths, split, files), classes))
    known = (run_network(net, known_ood, compute)[0]
             if known_ood is not None and len(known_ood) else None)
    detector = ood.fit(embeddings["train"], labels["train"], embeddings["val"], tuple(classes),
                       quantile, known, min_known, min_in_distribution)
    every = np.concatenate([embeddings[s] for s in REFERENCE_SPLITS])
    frame = pd.concat(frames, ignore_index=True)
    scores = detector.score(every)
    frame["ood_score"] = scores.astype(np.float64)
    frame["in_distribution"] = detector.in_distribution(scores)
    frame = pd.concat([frame, pd.DataFrame(every, columns=embedding_columns(every.shape[1]))],
                      axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        folder.mkdir()
        frame.to_parquet(folder / REFERENCE_FILE, index=False)
        detector.save(folder)
        mlflow.log_artifacts(str(folder), ARTIFACT_DIR)
    seconds = time.perf_counter() - started
    summary = {"pictures": len(frame), "embedding_size": int(every.shape[1]),
               "seconds": round(seconds, 2), "ood_threshold": detector.threshold,
               "val_in_distribution_rate": detector.calibration["val_in_distribution_rate"],
               "known_ood": detector.calibration["known_ood"]}
    log.info("reference profile: %d pictures (train + val), %d-d embedding, out-of-distribution "
             "threshold %.4g (%.0f%% of val in distribution) in %.1fs", len(frame),
             every.shape[1], detector.threshold, 100 * summary["val_in_distribution_rate"],
             seconds)
    if summary["known_ood"]["pictures"]:
        record = summary["known_ood"]
        log.info("out-of-distribution calibration: %d known out-of-distribution ('neither') "
                 "pictures, %s; the threshold flags %.0f%% of them", record["pictures"],
                 "used" if record["used"] else f"fewer than {min_known}: not used",
                 100 * record["flagged_share"])
    return summary


def load_reference(run_id: str) -> Any:
    """The reference profile (a pandas DataFrame) of a training run. Raises
    `mlflow.exceptions.MlflowException` when the run has none (trained before profiles existed)."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                    artifact_path=REFERENCE_ARTIFACT, dst_path=tmp)
        return pd.read_parquet(local)


def download_ood(run_id: str, folder: Path) -> Path | None:
    """Copy the run's `ood.json` and `ood.npz` into `folder`; None when the run has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from catsdogs.tracking import raise_if_outage

    folder.mkdir(parents=True, exist_ok=True)
    try:
        for artifact in OOD_ARTIFACTS:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                        dst_path=str(folder / ".download"))
            Path(local).replace(folder / Path(artifact).name)
    except (MlflowException, OSError) as exc:
        raise_if_outage(exc, f"downloading the out-of-distribution calibration of run {run_id}")
        log.warning("run %s has no out-of-distribution calibration (%s): trained before "
                    "reference profiles existed?", run_id, exc)
        return None
    finally:
        import shutil

        shutil.rmtree(folder / ".download", ignore_errors=True)
    return folder
