"""The score stage: label every picture of a folder or archive with a registered model.

`catsdogs score --images DIR|archive:PATH [--model models:/CatsDogsCNN@champion | VERSION]`

- The model URI (default `@champion`; a bare number is that version) is resolved ONCE, at the
  start (`catsdogs.registry.record.resolve`): a promotion in the middle of the run changes
  nothing.
- Every file under DIR (recursively, OS clutter and hidden files left out) or inside the zip/tar
  archive (unpacked once into `reports/scoring/.archives/<sha256>/`) is decoded by THE decode path
  (`catsdogs.data.images.square_image`, with the service's pixel, side and aspect limits: the
  `CATSDOGS_MAX_PIXELS`, `CATSDOGS_MIN_SIDE`, `CATSDOGS_MAX_ASPECT_RATIO` settings), over a process
  pool on every usable core, and scored in batches by the service's reference variant
  (`torch-fp32`: a serving `catsdogs.inference.scorer.Scorer`; on a GPU the torch network) with
  the version's out-of-distribution detector (`monitoring/ood.*` of its training run; none: the
  OOD columns are null and the summary says so).
- One row per file: `path` (relative to DIR or the archive), `sha256`, `label`, `confidence`,
  `prob_<class>` (prob_cat, prob_dog), `in_distribution`, `ood_score`, `model_version`, and for a
  file the decoder refused `rejection` (its reason: not_an_image, truncated, corrupt, ...) and
  `rejection_message` (the label and scores then null).
- Logged as the artifacts (`scoring/`) of an MLflow run in the experiment
  `<mlflow.experiment_name> scoring` (its `run_id`/`experiment_id` in the summary: the Airflow
  task's "MLflow run" button), and written as `scores.parquet`, `scores.csv` and `summary.json` under
  `<data dir>/reports/scoring/<run>/`, `run` = `<model name>-v<version>-<images fingerprint>`
  (paths, sizes and modification times of a folder's files; an archive's sha256), in one atomic
  rename with a stamp: a re-run with the same pictures and version is skipped.
- Resumable: the pictures are scored in chunks of `--batch-size`, each chunk's rows written
  atomically to `reports/scoring/.<run>.partial/`; a killed run (even `kill -9`) leaves whole
  chunks only, and the next run scores the chunks that are missing, then merges them (exactly one
  row per file) and removes the partial folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, atomic_file, fingerprint, is_up_to_date
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

REPORTS = ("reports", "scoring")
ARCHIVES = ".archives"
PARTIAL_SUFFIX = ".partial"
PLAN_FILE = "plan.json"
SCORES_PARQUET, SCORES_CSV, SUMMARY_JSON = "scores.parquet", "scores.csv", "summary.json"
VARIANT = "torch-fp32"       # the serving variant every service can fall back to
SCHEMA = 1                   # the rows' layout: part of the stamp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True,
                        help="folder of pictures (searched recursively) or archive:PATH (zip/tar)")
    parser.add_argument("--model", default=None,
                        help="registered model URI or version number (default: "
                             "models:/<registered name>@champion), resolved once at the start")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="pictures a forward pass (and a resumable chunk); default 64")
    parser.add_argument("--workers", type=int, default=0,
                        help="decoding processes (default 0: one per usable core)")


@dataclass(frozen=True)
class Pictures:
    """The files to score: `root` (a folder, or where the archive was unpacked), their paths
    relative to it (sorted), what was given and a fingerprint of the files."""

    given: str
    root: Path
    files: tuple[str, ...]
    fingerprint: str


def _walk(root: Path) -> list[str]:
    from catsdogs.data.sources import is_clutter

    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory, name)
            relative = path.relative_to(root)
            if not is_clutter(relative) and path.is_file():
                found.append(relative.as_posix())
    return found


def find_pictures(text: str, paths: DataPaths) -> Pictures:
    """`DIR`, `dir:DIR` or `archive:PATH` -> the files to score (an archive unpacked once, by its
    sha256, under `reports/scoring/.archives/`). UserError for a missing folder or archive."""
    from catsdogs.data.sources import extract_archive
    from catsdogs.storage import sha256_file

    if text.startswith("archive:"):
        archive = Path(text[len("archive:"):]).expanduser()
        if not archive.is_file():
            raise UserError(f"--images {text}: no such archive file")
        digest = sha256_file(archive)
        root = paths.root.joinpath(*REPORTS, ARCHIVES, digest[:16])
        if not is_up_to_date([root], digest):
            with atomic_dir(root, stamp=digest) as tmp:
                extract_archive(archive, tmp)
        return Pictures(text, root, tuple(_walk(root)), digest[:16])  # the stamp is hidden
    folder = Path(text.removeprefix("dir:")).expanduser()
    if not folder.is_dir():
        raise UserError(f"--images {text}: not a folder; give a folder of pictures or "
                        "archive:PATH (a zip or tar)")
    folder = folder.resolve()
    files = _walk(folder)
    listing = [(f, (stat := (folder / f).stat()).st_size, stat.st_mtime_ns) for f in files]
    return Pictures(text, folder, tuple(files), fingerprint(listing)[:12])


def model_uri(params: Params, model: str | None) -> str:
    """`--model`: a models:/ URI, a bare version number, or None (the champion)."""
    from catsdogs.registry.names import CHAMPION

    name = params.mlflow.registered_model_name
    if model is None:
        return f"models:/{name}@{CHAMPION}"
    if model.strip().isdigit():
        return f"models:/{name}/{model.strip()}"
    return model


def service_limits() -> Any:
    """The service's decode limits (pixels, shortest side, aspect ratio; no upload size here)."""
    from catsdogs.data.images import ImageLimits
    from catsdogs.settings import ServingSettings, load

    settings = load(ServingSettings)
    return ImageLimits(max_pixels=settings.max_pixels, min_side=settings.min_side,
                       max_aspect_ratio=settings.max_aspect_ratio,
                       names={name: f"CATSDOGS_{name.upper()}"
                              for name in ("max_pixels", "min_side", "max_aspect_ratio")})


def decode(job: tuple[Path, int, Any]) -> tuple[str, Any, str | None, str | None]:
    """One file -> (sha256, uint8 S,S,3 pixels or None, rejection reason, message). Runs in the
    decoding pool (a top-level function: picklable)."""
    import numpy as np

    from catsdogs.data.images import ImageRejected, square_image

    path, size, limits = job
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", None, "unreadable", f"cannot read the file: {exc}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, np.asarray(square_image(data, size, limits)), None, None
    except ImageRejected as exc:
        return digest, None, exc.reason, str(exc)


class Decoder:
    """Decodes chunks of files over a process pool (forkserver; its workers end with this
    process, `catsdogs.data.parallel.exit_with`), the next chunk while the current is scored."""

    def __init__(self, workers: int, files: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from catsdogs.data.parallel import SERIAL_BELOW, exit_with, worker_count

        self.count = worker_count(workers)
        self.pool = None
        if self.count > 1 and files >= SERIAL_BELOW:
            self.pool = ProcessPoolExecutor(
                max_workers=self.count, mp_context=multiprocessing.get_context("forkserver"),
                initializer=exit_with, initargs=(os.getpid(),))

    def chunks(self, jobs: Sequence[Sequence[tuple[Path, int, Any]]]
               ) -> Iterator[list[tuple[str, Any, str | None, str | None]]]:
        if self.pool is None:
            for chunk in jobs:
                yield [decode(job) for job in chunk]
            return
        pending = [self.pool.submit(decode, job) for job in jobs[0]] if jobs else []
        for index in range(len(jobs)):
            current = pending
            if index + 1 < len(jobs):
                pending = [self.pool.submit(decode, job) for job in jobs[index + 1]]
            yield [future.result() for future in current]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def load_detector(run_id: str) -> Any:
    """The version's out-of-distribution detector, None when its run has no calibration."""
    from catsdogs.monitoring.ood import OodDetector
    from catsdogs.monitoring.reference import download_ood

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_ood(run_id, Path(tmp) / "ood")
        return None if folder is None else OodDetector.load(folder)


def score_chunk(decoded: Sequence[tuple[str, Any, str | None, str | None]],
                names: Sequence[str], scorer: Any, detector: Any, classes: Sequence[str],
                version: str) -> Any:
    """The rows (a pandas DataFrame) of one chunk: the decoded pictures scored in one batch."""
    import numpy as np
    import pandas as pd
    import torch

    good = [i for i, item in enumerate(decoded) if item[1] is not None]
    n = len(decoded)
    probs = np.full((n, len(classes)), np.nan)
    scores = np.full(n, np.nan)
    inside: list[bool | None] = [None] * n
    if good:
        batch = torch.from_numpy(np.stack([decoded[i][1] for i in good]))
        probabilities, embedding = scorer.outputs(batch)
        probs[good] = probabilities.numpy()
        if detector is not None and embedding is not None:
            found = detector.score(embedding.numpy())
            scores[good] = found
            for i, flag in zip(good, detector.in_distribution(found), strict=True):
                inside[i] = bool(flag)
    labels: list[str | None] = [None] * n
    for i in good:
        labels[i] = classes[int(np.argmax(probs[i]))]
    frame = pd.DataFrame({
        "path": list(names), "sha256": [item[0] for item in decoded], "label": labels,
        "confidence": [float(np.max(probs[i])) if labels[i] else np.nan for i in range(n)],
        **{f"prob_{c}": probs[:, k] for k, c in enumerate(classes)},
        "in_distribution": pd.array(inside, dtype="boolean"),
        "ood_score": scores, "model_version": version,
        "rejection": [item[2] for item in decoded],
        "rejection_message": [item[3] for item in decoded]})
    return frame


def chunk_file(partial: Path, index: int) -> Path:
    return partial / f"chunk-{index:06d}.parquet"


def write_chunk(frame: Any, target: Path) -> None:
    """One chunk's rows, atomically (a killed run leaves whole chunks or none)."""
    with atomic_file(target) as tmp:
        frame.to_parquet(tmp, index=False)


def open_partial(partial: Path, plan: dict[str, Any]) -> None:
    """The partial folder of this run, kept when an earlier run made it with the same plan (its
    whole chunks are reused), else started afresh."""
    plan_file = partial / PLAN_FILE
    try:
        if json.loads(plan_file.read_text()) == plan:
            return
        log.info("discarding %s: made with another plan", partial)
    except (OSError, ValueError):
        pass
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with atomic_file(plan_file) as tmp:
        tmp.write_text(json.dumps(plan))


def summarise(frame: Any, classes: Sequence[str], calibrated: bool) -> dict[str, Any]:
    rejected = frame["rejection"].notna()
    return {
        "count": len(frame), "scored": int((~rejected).sum()), "rejected": int(rejected.sum()),
        "rejections": dict(Counter(frame.loc[rejected, "rejection"])),
        "labels": {c: int((frame["label"] == c).sum()) for c in classes},
        "out_of_distribution": (int(frame["in_distribution"].eq(False).sum())
                                if calibrated else None)}


def log_report(folder: Path, details: dict[str, Any], params: Params, paths: DataPaths) -> None:
    """One MLflow run in `<experiment> scoring` holding the report (`scoring/` artifacts: the
    rows and summary.json) with the counts as metrics; its `run_id` and `experiment_id` go into
    `details` (the Airflow task's "MLflow run" button opens it) and summary.json, written to
    `folder` here."""
    import mlflow

    from catsdogs import tracking

    experiment = tracking.experiment_id(f"{params.mlflow.experiment_name} scoring", paths)
    tags = {"model_name": details["model_name"], "model_version": details["version"],
            **tracking.orchestrator_tags()}
    with mlflow.start_run(experiment_id=experiment, run_name=f"score {details['run']}",
                          tags=tags) as run:
        details["run_id"], details["experiment_id"] = run.info.run_id, experiment
        (folder / SUMMARY_JSON).write_text(json.dumps(
            {k: v for k, v in details.items() if k not in ("store", "model")}, indent=2))
        mlflow.log_params({"model": details["model"], "images": details["images"],
                           "variant": details["variant"]})
        mlflow.log_metrics({key: float(details[key]) for key in
                            ("count", "scored", "rejected", "images_per_s")
                            if details.get(key) is not None})
        tracking.log_folder(folder, "scoring")


def score(params: Params, paths: DataPaths, images: str, model: str | None, batch_size: int,
          workers: int) -> tuple[dict[str, Any], bool]:
    """Score every picture of `images` (module docstring). Returns (summary details, skipped)."""
    import pandas as pd
    import torch
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.console import Progress
    from catsdogs.inference.compute import Compute, pick_device
    from catsdogs.inference.scorer import Scorer
    from catsdogs.registry.record import load_model, resolve

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give at least 1")
    store = tracking.shown_uri(tracking.connect(paths, create=False))
    uri = model_uri(params, model)
    record = resolve(MlflowClient(), uri)          # the alias, once: from here on the version
    pictures = find_pictures(images, paths)
    if not pictures.files:
        raise UserError(f"--images {images}: no files found")
    limits = service_limits()
    size, classes = record.image_size, record.classes
    run = f"{record.name}-v{record.version}-{pictures.fingerprint}"
    reports = paths.root.joinpath(*REPORTS)
    target = reports / run
    stamp = fingerprint(run, SCHEMA, VARIANT, size, classes, limits.max_pixels, limits.min_side,
                        limits.max_aspect_ratio)
    if is_up_to_date([target], stamp):
        done = json.loads((target / SUMMARY_JSON).read_text())
        return {**done, "store": store, "model": uri}, True

    partial = reports / f".{run}{PARTIAL_SUFFIX}"
    open_partial(partial, {"stamp": stamp, "batch_size": batch_size,
                           "files": len(pictures.files)})
    starts = range(0, len(pictures.files), batch_size)
    todo = [i for i in range(len(starts)) if not chunk_file(partial, i).exists()]
    resumed = len(pictures.files) - sum(min(batch_size, len(pictures.files) - starts[i])
                                        for i in todo)
    if resumed:
        log.info("resuming %s: %d of %d pictures already scored", run, resumed,
                 len(pictures.files))
    started = time.perf_counter()
    calibrated, scored_now = False, 0
    if todo:
        device = pick_device()
        net = load_model(record, device)
        scorer = Scorer(net, Compute.serving(device), serving=True, image_size=size)
        detector = load_detector(record.run_id) if scorer.embeds else None
        calibrated = detector is not None
        jobs = [[(pictures.root / f, size, limits)
                 for f in pictures.files[starts[i]:starts[i] + batch_size]] for i in todo]
        decoder = Decoder(workers, sum(len(j) for j in jobs))
        try:
            with Progress("score", total=len(pictures.files)) as counter, torch.inference_mode():
                counter.update(resumed)
                for index, decoded in zip(todo, decoder.chunks(jobs), strict=True):
                    names = pictures.files[starts[index]:starts[index] + batch_size]
                    frame = score_chunk(decoded, names, scorer, detector, classes,
                                        record.version)
                    write_chunk(frame, chunk_file(partial, index))
                    scored_now += len(names)
                    counter.update(len(names))
        finally:
            decoder.close()
    else:
        calibrated = load_detector(record.run_id) is not None
    seconds = time.perf_counter() - started

    frame = pd.concat([pd.read_parquet(chunk_file(partial, i)) for i in range(len(starts))],
                      ignore_index=True)
    if list(frame["path"]) != list(pictures.files):
        raise AssertionError(f"{partial}: the chunks do not hold one row per picture")
    details = {
        "store": store, "model": uri, "model_name": record.name, "version": record.version,
        "model_run_id": record.run_id, "variant": VARIANT, "images": pictures.given,
        "run": run, "report": str(target),
        "files": {"parquet": str(target / SCORES_PARQUET), "csv": str(target / SCORES_CSV)},
        **summarise(frame, classes, calibrated),
        "ood_calibration": calibrated,
        "resumed": resumed, "seconds": round(seconds, 2),
        "images_per_s": round(scored_now / seconds, 1) if scored_now and seconds > 0 else None}
    if not calibrated:
        details["ood_note"] = (f"{record.name} v{record.version} has no out-of-distribution "
                               "calibration: in_distribution and ood_score are null")
    with atomic_dir(target, stamp=stamp) as tmp:
        frame.to_parquet(tmp / SCORES_PARQUET, index=False)
        frame.to_csv(tmp / SCORES_CSV, index=False)
        log_report(tmp, details, params, paths)
    shutil.rmtree(partial, ignore_errors=True)
    return details, False


def run(params: Params, paths: DataPaths, images: str, model: str | None = None,
        batch_size: int = 64, workers: int = 0) -> Summary:
    """Score every picture of `images` with `model`; the report's folder and counts."""
    details, skipped = score(params, paths, str(images), model, batch_size, workers)
    labels = ", ".join(f"{n} {c}" for c, n in details["labels"].items())
    ood = (f"{details['out_of_distribution']} out of distribution"
           if details["ood_calibration"] else "no OOD calibration (ood columns null)")
    rate = (f", {details['images_per_s']} images/s" if details.get("images_per_s") and not skipped
            else "")
    resumed = f" ({details['resumed']} from an interrupted run)" if details.get("resumed") else ""
    message = (f"{details['count']} files{resumed} with {details['model_name']} "
               f"v{details['version']}: {labels}, {details['rejected']} rejected, {ood}{rate}; "
               f"{details['report']}")
    return Summary("score", message, skipped=skipped, details=details)
