""""neither"-labelled production pictures calibrate the out-of-distribution threshold (issue 30,
part 3): pictures kept and labelled through a real prediction log (`PredictionLog`, as the
service writes it) reach the real ingest, validate, prepare, transform and train stages (tiny
network, 1 epoch, the session's real MLflow server), and the run's `ood.json`, metrics and model
card say how many were used and what share the threshold flags."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from catsdogs.config import NEITHER
from catsdogs.data import feedback
from catsdogs.data.synthetic import generate_dataset
from catsdogs.monitoring.prediction_log import default_url
from catsdogs.monitoring.reference import download_ood, load_reference
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, train, transform, validate
from tests.data.helpers import encode, label_pictures, noise_image
from tests.training.conftest import tiny_params

KNOWN = 12   # noise and text pictures labelled "neither"


def _text_picture(seed: int) -> bytes:
    image = Image.new("RGB", (160, 120), "white")
    ImageDraw.Draw(image).text((10, 50), f"invoice no. {seed:05d}", fill="black")
    return encode(image, "PNG")


def test_neither_pictures_reach_the_ood_calibration(mlflow_server: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    source = generate_dataset(tmp_path / "source", per_class=20)
    paths = DataPaths(tmp_path / "data")
    params = tiny_params("validation.min_samples_per_class=5", "transform.workers=1",
                         f"train.ood_min_known={KNOWN}", "train.ood_min_in_distribution=0.5")
    a_source_picture = sorted((source / "cat").glob("*.jpg"))[0].read_bytes()
    pictures = ([(encode(noise_image(300 + i), "JPEG"), NEITHER) for i in range(KNOWN // 2)]
                + [(_text_picture(i), NEITHER) for i in range(KNOWN // 2)]
                + [(a_source_picture, NEITHER)])   # the source's bytes: never used
    label_pictures(default_url(paths.root), tmp_path / "kept", pictures, 0,
                   dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC))

    summary = ingest.run(params, paths, source=f"dir:{source}").details
    assert summary["feedback"] == 0   # no cat/dog label: nothing merged into the class folders
    assert summary["feedback_neither"] == KNOWN and summary["feedback_in_source"] == 1
    known = feedback.known_ood(paths.raw)
    assert len(known) == KNOWN and all(p.parent == paths.raw / NEITHER for p in known)
    assert hashlib.sha256(a_source_picture).hexdigest()[:16] not in "".join(p.name for p in known)
    validate.run(params, paths)
    prepare.run(params, paths)
    transform.run(params, paths)
    in_splits = {p.name for p in paths.transformed.rglob("*") if p.is_file()}
    assert not any(p.stem in name for p in known for name in in_splits)   # not in any split

    details = train.run(params, paths, force=True).details
    run = MlflowClient().get_run(details["run_id"])
    folder = download_ood(details["run_id"], tmp_path / "ood")
    assert folder is not None
    meta = json.loads((folder / "ood.json").read_text())
    record = meta["known_ood"]
    assert record["pictures"] == KNOWN and record["used"] is True
    assert record["min_pictures"] == KNOWN and record["min_in_distribution"] == 0.5
    assert meta["threshold"] <= record["quantile_threshold"]
    assert 0.0 <= record["flagged_share"] <= 1.0
    metrics = run.data.metrics
    assert metrics["ood_known_pictures"] == KNOWN and metrics["ood_known_used"] == 1.0
    assert metrics["ood_known_flagged_share"] == pytest.approx(record["flagged_share"])
    assert metrics["ood_threshold"] == pytest.approx(meta["threshold"])
    # the chosen threshold keeps at least the floor of val in distribution (the reference
    # profile's scores, the known pictures left out of it)
    frame = load_reference(details["run_id"])
    val = frame[frame["split"] == "val"]["ood_score"].to_numpy()
    assert np.mean(val <= meta["threshold"]) >= 0.5
    assert len(frame) == sum(1 for _ in paths.split_dir("train").rglob("*.*")) + len(val)
    card = Path(mlflow.artifacts.download_artifacts(
        run_id=details["run_id"], artifact_path="model_card.md", dst_path=str(tmp_path / "card"))
    ).read_text()
    assert (f"calibrated with {KNOWN} known out-of-distribution ('neither'-labelled production) "
            f"pictures (used); it flags {100 * record['flagged_share']:.1f}% of them.") in card
