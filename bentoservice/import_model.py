"""Import a registered MLflow model (default `models:/CatsDogsCNN@champion`) into the Bento model
store, so `bentoml build` packages it and the served image needs no MLflow server at run time.

    python -m bentoservice.import_model [--model-uri models:/CatsDogsCNN@champion]

The model URI is resolved once (`catsdogs.registry.record.resolve`) to a version number; the
import downloads that number (`models:/NAME/N`), never the alias again, so a promotion during the
import cannot store one version's weights under another's number. The Bento model carries that
version's registry name, version, run id, architecture, image size, classes and the training
data's source (`data_source`, `data_synthetic`: from the version's `data.*` tags) in its
metadata, all derived from the same record. With calibration photos the import also builds the
serving variants (OpenVINO fp32 and INT8, calibrated on those photos; catsdogs.inference.variants)
into the Bento model's `variants/` folder and measures every variant that runs on this CPU: label
agreement with fp32 and milliseconds a picture at the service's batch sizes. The measurements go into the metadata
(`serving_variants`: the service serves the fastest adopted one its CPU can run) and onto the
registry version (`serving.variants` tag), so its model card shows them.

The version's model card (`catsdogs.registry.model_card`) is refreshed and stored in the Bento
model as `model_card.md`; the service serves it at `/model/card`. Re-importing the same registry
version imports nothing again; it only brings the stored card up to date (the card's history
changes as the version is promoted, deployed or rolled back) and measures the serving variants
of a model imported before they existed.

The training run's out-of-distribution calibration is copied into the Bento model's `ood/`
folder; a run without one is refused (retrain): the service would answer `in_distribution: null`.

Whole or nothing: the Bento model gets its completion mark (`import_complete` in its metadata,
`bentoservice.runtime.missing_parts`) only after the weights, the calibration, the serving
variants and the metadata are all stored; any failure (an MLflow server that stops answering,
one line naming it and the step: `catsdogs.tracking.talking_to_mlflow`) removes the model it was
storing. A stored model of the same version without the mark (left by a killed import) is
removed and imported again ("repaired"), never "skipped (up to date)"; the service refuses to
serve a model that lacks a part (`service.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catsdogs.config import Params, load_params
from catsdogs.console import setup_logging
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.summary import Summary
from catsdogs.tracking import talking_to_mlflow

if TYPE_CHECKING:
    from catsdogs.registry.record import VersionRecord

logger = logging.getLogger(__name__)

BENTO_MODEL_NAME = "catsdogs_cnn"
OOD_FOLDER_NAME = "ood"  # the training run's ood.json + ood.npz inside the Bento model (runtime.OOD_FOLDER)


def bento_metadata(record: VersionRecord, model_uri: str, params: Params) -> dict[str, Any]:
    """The Bento model's metadata, from the version `model_uri` was resolved to (`record`):
    registry name, version, run id, the alias it was reached by ('' for a numbered URI), the URI
    as given, arch (`params.model.arch` for a version without the tag), image size, classes, and
    the training data's source (`data_source`, `data_synthetic`; absent when unknown)."""
    data = record.data
    return {
        "registered_model": record.name,
        "version": record.version,
        "alias": model_uri.split("@", 1)[1] if "@" in model_uri else "",
        "run_id": record.run_id,
        "source_uri": model_uri,
        "arch": record.arch or params.model.arch,
        "image_size": record.image_size,
        "classes": list(record.classes),
        **({"data_source": data.source, "data_synthetic": data.synthetic} if data else {}),
    }


def _existing(bento_model: str, version: str, run_id: str) -> tuple[str | None, list[str]]:
    """(tag of a whole stored Bento model imported from the same registry version or None, the
    tags of incomplete ones of that version, removed now: `runtime.missing_parts`)."""
    import bentoml
    from bentoml.exceptions import NotFound

    from bentoservice.runtime import missing_parts

    try:
        stored = bentoml.models.list(bento_model)
    except NotFound:
        return None, []
    found, removed = None, []
    for model in stored:
        labels = model.info.labels
        if labels.get("mlflow_version") != version or labels.get("mlflow_run_id") != run_id:
            continue
        missing = missing_parts(Path(model.path), dict(model.info.metadata))
        if not missing:
            found = found or str(model.tag)
            continue
        logger.warning("removing the incomplete Bento model %s (missing %s): importing it again",
                       model.tag, ", ".join(missing))
        bentoml.models.delete(model.tag)
        removed.append(str(model.tag))
    return found, removed


def calibration_files(folder: Path | None, limit: int, seed: int = 0) -> list[Path]:
    """Up to `limit` photos (balanced over class sub-folders) to calibrate and measure the
    serving variants on."""
    if folder is None or limit <= 0 or not folder.is_dir():
        return []
    groups = [sorted(p for p in sub.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
              for sub in sorted(folder.iterdir()) if sub.is_dir()]
    rng = random.Random(seed)
    per_group = max(1, limit // max(1, len(groups)))
    chosen: list[Path] = []
    for files in groups:
        chosen += rng.sample(files, min(per_group, len(files)))
    return chosen[:limit]


def measure_variants(model_dir: Path, variants_dir: Path, metadata: dict[str, Any],
                     files: Sequence[Path]) -> dict[str, Any] | None:
    """Build and measure the serving variants of the imported model on `files` (decoded exactly
    as the service decodes an upload); the `serving_variants` metadata, None without photos."""
    import numpy as np

    from bentoservice.runtime import ModelInfo, load_network
    from catsdogs.data.images import ImageRejected, square_image
    from catsdogs.inference.compute import cpu_description
    from catsdogs.inference.variants import MIN_AGREEMENT, measure, ranked

    pixels = []
    for path in files:
        try:
            pixels.append(np.asarray(square_image(path, metadata["image_size"])))
        except ImageRejected:
            continue
    if not pixels:
        return None
    network = load_network(model_dir, ModelInfo.from_metadata(metadata, bento_tag=""))
    measured = measure(network, variants_dir, np.stack(pixels))
    for m in measured:
        logger.info("serving variant %-13s agreement %s, ms a picture %s: %s", m.variant,
                    "n/a" if m.agreement is None else f"{100 * m.agreement:.2f}%",
                    {b: round(ms, 2) for b, ms in m.ms_per_image.items()},
                    ("adopted: " if m.adopted else "not adopted: ") + m.reason)
    return {"cpu": cpu_description(), "min_agreement": MIN_AGREEMENT,
            "chosen": ranked(measured)[0], "measured": [m.as_dict() for m in measured]}


def _tag_variants(metadata: dict[str, Any], variants: dict[str, Any]) -> None:
    """Record the measurement on the registry version (`serving.variants` tag, JSON)."""
    from mlflow import MlflowClient

    from catsdogs.registry.names import SERVING_VARIANTS_TAG

    MlflowClient().set_model_version_tag(metadata["registered_model"], metadata["version"],
                                         SERVING_VARIANTS_TAG, json.dumps(variants))


def _store_card(stored: Any, metadata: dict[str, Any]) -> bool:
    """Refresh the version's model card in the registry and write it into the Bento model's
    folder (`CARD_FILE`); True when the stored file changed. A registry that refuses leaves the
    model without a fresh card, said in the log (the import itself stands)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bentoservice.web import CARD_FILE
    from catsdogs.registry.model_card import refresh_card
    from catsdogs.storage import atomic_file
    from catsdogs.tracking import raise_if_outage

    name, version = metadata["registered_model"], metadata["version"]
    try:
        card = refresh_card(MlflowClient(), name, version)[version]
    except MlflowException as exc:
        raise_if_outage(exc, f"refreshing the model card of {name} v{version}")
        logger.warning("the model card of %s v%s could not be rendered (%s): the service will "
                       "say it has none", name, version, exc)
        return False
    target = Path(stored.path_of(CARD_FILE))
    if target.is_file() and target.read_text() == card:
        return False
    with atomic_file(target) as tmp:
        tmp.write_text(card)
    logger.info("model card of %s v%s stored in %s", name, version, stored.tag)
    return True


def import_ood(run_id: str, folder: Path) -> bool:
    """Copy the training run's out-of-distribution calibration (`monitoring/ood.json`, `ood.npz`:
    catsdogs.monitoring.reference) into the Bento model; False (and a warning) when the run has
    none (the import then refuses the model)."""
    from catsdogs.monitoring.reference import download_ood

    return download_ood(run_id, folder) is not None


def run(params: Params, paths: DataPaths, model_uri: str | None = None,
        bento_model: str = BENTO_MODEL_NAME, calibration_dir: Path | None = None,
        calibration_images: int = 400) -> Summary:
    """Import the model into the Bento store; skip when that registry version is already there.

    `model_uri` (default `models:/<registered name>@champion`) is resolved once; the weights
    downloaded, the metadata, labels, variants tag and card all concern that version. Raises
    UserError when the registry does not have it."""
    import bentoml
    from mlflow import MlflowClient

    from bentoservice.runtime import VARIANTS_KEY
    from catsdogs.registry.integrity import download_verified
    from catsdogs.registry.names import CHAMPION
    from catsdogs.registry.record import resolve
    from catsdogs.tracking import connect, talking_to_mlflow

    model_uri = model_uri or f"models:/{params.mlflow.registered_model_name}@{CHAMPION}"
    connect(paths, create=False)
    with talking_to_mlflow(f"resolving {model_uri}"):
        record = resolve(MlflowClient(), model_uri)
    metadata = bento_metadata(record, model_uri, params)
    labels = {"mlflow_model": record.name, "mlflow_version": record.version,
              "mlflow_run_id": record.run_id}
    found, removed = _existing(bento_model, record.version, record.run_id)
    files = calibration_files(calibration_dir, calibration_images)
    if found:
        stored = bentoml.models.get(found)
        with talking_to_mlflow(f"updating the stored {found} (variants, model card)"):
            measured = VARIANTS_KEY not in stored.info.metadata and _add_variants(
                stored, metadata, files)
            card = _store_card(stored, metadata)
        return Summary("bento-import", f"{model_uri} (version {metadata['version']}) already "
                       f"imported as {found}"
                       + ("; its serving variants were measured" if measured else "")
                       + ("; its model card was updated" if card else ""),
                       skipped=True, details={"tag": found, **metadata})
    # the resolved number, not `model_uri`: an alias may point elsewhere by now; imported from
    # the folder whose sha256 was checked against the registration's (a tampered artifact is
    # refused here, naming the version, before it is unpickled or reaches any image)
    with (tempfile.TemporaryDirectory(prefix="catsdogs-import-") as folder,
          talking_to_mlflow(f"downloading the weights of {record.name} v{record.version}")):
        verified = download_verified(record, Path(folder))
        imported = bentoml.mlflow.import_model(bento_model, str(verified), labels=labels,
                                               metadata=metadata)
    stored = bentoml.models.get(imported.tag)  # the copy in the store (import used a temp dir)
    try:
        _complete(stored, record, metadata, files)
    except BaseException:
        bentoml.models.delete(stored.tag)
        logger.warning("the import of %s stopped before the Bento model was whole: %s removed "
                       "(nothing partial is left; run the import again)", model_uri, stored.tag)
        raise
    logger.info("imported %s (version %s, run %s) as %s", model_uri, metadata["version"],
                metadata["run_id"], stored.tag)
    repaired = f" (repaired: the incomplete {', '.join(removed)} removed)" if removed else ""
    return Summary("bento-import", f"{model_uri} (version {metadata['version']}) -> "
                   f"{stored.tag}{repaired}",
                   details={"tag": str(stored.tag), "repaired": removed, **metadata})


def _complete(stored: Any, record: VersionRecord, metadata: dict[str, Any],
              files: Sequence[Path]) -> None:
    """Store every part of the freshly imported model beside its weights, check them
    (`runtime.missing_parts`), then write the completion mark: the last write of an import."""
    from bentoservice.runtime import IMPORT_COMPLETE_KEY, missing_parts
    from catsdogs.tracking import talking_to_mlflow

    with talking_to_mlflow(f"downloading the out-of-distribution calibration of run "
                           f"{record.run_id}"):
        if not import_ood(record.run_id, Path(stored.path_of(OOD_FOLDER_NAME))):
            raise UserError(f"{record.name} v{record.version} (run {record.run_id}) has no "
                            "out-of-distribution calibration (monitoring/ood.json, ood.npz): it "
                            "was trained before calibrations were logged; retrain it "
                            "(`catsdogs train`) to serve a model that scores every answer")
    with talking_to_mlflow(f"building and tagging the serving variants of v{record.version}"):
        _add_variants(stored, metadata, files)
    with talking_to_mlflow(f"refreshing the model card of v{record.version}"):
        _store_card(stored, metadata)
    missing = [m for m in missing_parts(Path(stored.path), {**stored.info.metadata, **metadata,
                                                            IMPORT_COMPLETE_KEY: True})]
    if missing:
        raise UserError(f"the imported Bento model {stored.tag} is incomplete (missing "
                        f"{', '.join(missing)}); run the import again")
    stored.info.metadata.update({**metadata, IMPORT_COMPLETE_KEY: True})
    stored.flush()


def _add_variants(stored: Any, metadata: dict[str, Any], files: Sequence[Path]) -> bool:
    """Build and measure the serving variants into the stored Bento model (its `variants/`
    folder and `serving_variants` metadata, also in `metadata`) and tag the registry version;
    False when there are no photos to measure on. A model imported before the variants existed
    gets them the next time it is imported."""
    from bentoservice.runtime import MLFLOW_MODEL_FOLDER, VARIANTS_KEY

    variants = measure_variants(Path(stored.path_of(MLFLOW_MODEL_FOLDER)), Path(stored.path),
                                metadata, files)
    if variants is None:
        return False
    metadata[VARIANTS_KEY] = variants
    stored.info.metadata.update(metadata)
    stored.flush()
    _tag_variants(metadata, variants)
    return True


def default_calibration_dir(paths: DataPaths) -> Path | None:
    """Photos for the serving variants: `$CATSDOGS_SAMPLE_DIR` when set, else the data dir's test
    split (`transformed/test`); None (nothing measured, the service serves torch fp32, said in
    the log) when neither exists."""
    from catsdogs.settings import ServingSettings, load

    for candidate in (load(ServingSettings).sample_dir, paths.split_dir("test")):
        if candidate is not None and candidate.is_dir():
            return candidate
    logger.info("no calibration photos (CATSDOGS_SAMPLE_DIR unset, no test split at %s): the "
                "serving variants are not measured and the service will serve torch fp32",
                paths.split_dir("test"))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bentoservice.import_model",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default=None,
                        help="MLflow model URI (default: models:/<registered name>@champion)")
    parser.add_argument("--bento-model", default=BENTO_MODEL_NAME,
                        help=f"name in the Bento model store (default: {BENTO_MODEL_NAME})")
    parser.add_argument("--calibration-dir", type=Path, default=None,
                        help="photos in class sub-folders for the serving variants (default: "
                        "$CATSDOGS_SAMPLE_DIR, else the data dir's transformed/test split)")
    parser.add_argument("--calibration-images", type=int, default=400,
                        help="how many photos calibrate and measure the serving variants "
                        "(0: none; the service serves torch fp32)")
    parser.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    parser.add_argument("--data-dir", default=None, help="data directory (embedded MLflow store)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print the summary as one JSON document (with the Bento `tag`)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        params = load_params(args.params)
        paths = DataPaths.resolve(args.data_dir)
        with talking_to_mlflow("importing the model into the Bento store"):
            summary = run(params, paths, args.model_uri, args.bento_model,
                          args.calibration_dir or (default_calibration_dir(paths)
                                                   if args.calibration_images > 0 else None),
                          args.calibration_images)
    except UserError as exc:
        print(f"bento-import: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary.to_dict()) if args.as_json else summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
