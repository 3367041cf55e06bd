"""The reference profile and out-of-distribution calibration a real train run logs (the session's
1-epoch run against the real MLflow server), read back the way the service and the monitor do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from catsdogs.monitoring.features import IMAGE_COLUMNS, embedding_columns, image_statistics
from catsdogs.monitoring.ood import OodDetector
from catsdogs.monitoring.reference import (
    OOD_ARTIFACTS,
    REFERENCE_ARTIFACT,
    download_ood,
    load_reference,
    run_network,
)
from catsdogs.training.cache import load_split
from catsdogs.training.loading import list_images
from tests.training.conftest import IMAGE_SIZE


def test_reference_profile_covers_train_and_val(trained: dict, tiny_data,
                                                tracking_uri: str) -> None:
    artifacts = {a.path for a in MlflowClient().list_artifacts(trained["run_id"], "monitoring")}
    assert artifacts == {REFERENCE_ARTIFACT, *OOD_ARTIFACTS}
    frame = load_reference(trained["run_id"])
    sizes = {split: len(list_images(tiny_data.split_dir(split))) for split in ("train", "val")}
    assert frame["split"].value_counts().to_dict() == sizes
    emb = embedding_columns(1280)  # mobilenet_v2
    assert list(frame.columns) == ["split", "true_label", "label", "confidence",
                                   *IMAGE_COLUMNS, "ood_score", "in_distribution", *emb]
    assert frame["confidence"].between(0.5, 1.0).all()
    assert set(frame["label"]) <= {"cat", "dog"} and set(frame["true_label"]) == {"cat", "dog"}
    # no prepared manifest in this layout: the transformed files' own sizes
    assert set(frame["width"]) == {IMAGE_SIZE} and set(frame["format"]) <= {"PNG", "JPEG"}
    pixels = load_split(tiny_data, "train", IMAGE_SIZE).pixels
    first = frame[frame["split"] == "train"].iloc[0]
    assert first["brightness"] == pytest.approx(
        image_statistics(pixels[0].numpy().transpose(1, 2, 0))["brightness"])
    assert frame[emb].to_numpy().std() > 0


def test_ood_calibration_reproduces_the_reference_scores(trained: dict, tiny_data,
                                                         tracking_uri: str,
                                                         tmp_path: Path) -> None:
    folder = download_ood(trained["run_id"], tmp_path / "ood")
    assert folder is not None
    detector = OodDetector.load(folder)
    meta = json.loads((folder / "ood.json").read_text())
    assert meta["quantile"] == 0.99 and meta["embedding_size"] == 1280
    frame = load_reference(trained["run_id"])
    val = frame[frame["split"] == "val"]
    emb = val[embedding_columns(1280)].to_numpy(np.float32)
    np.testing.assert_allclose(detector.score(emb), val["ood_score"], rtol=1e-3)
    single = np.concatenate([detector.score(emb[i:i + 1]) for i in range(len(emb))])
    np.testing.assert_allclose(single, val["ood_score"], rtol=1e-3)  # batch size does not matter
    # the 0.99 quantile of the val scores: all but at most one val picture in distribution
    assert val["in_distribution"].sum() >= len(val) - 1
    assert meta["val_in_distribution_rate"] == pytest.approx(val["in_distribution"].mean())
    # no "neither" picture in this data dir: the quantile alone, and no known-OOD metric
    assert meta["known_ood"]["pictures"] == 0 and meta["known_ood"]["used"] is False
    assert meta["threshold"] == meta["known_ood"]["quantile_threshold"]
    assert not any(key.startswith("ood_known") for key in
                   MlflowClient().get_run(trained["run_id"]).data.metrics)


def test_run_network_embedding_is_the_heads_input(trained: dict, tracking_uri: str) -> None:
    """The (logits, embedding) module gives the registered network's own probabilities."""
    import mlflow.pytorch
    import torch

    net = mlflow.pytorch.load_model(f"runs:/{trained['run_id']}/model", map_location="cpu")
    if isinstance(net, torch.fx.GraphModule):
        from catsdogs.training.model import build_model

        rebuilt = build_model("mobilenet_v2", "none")
        rebuilt.load_state_dict(net.state_dict())
        net = rebuilt
    pixels = torch.randint(0, 256, (3, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    emb, probs = run_network(net.eval(), pixels)
    from catsdogs.inference.scorer import normalize
    from tests.serving.networks import embed

    hooked, expected = embed(net.eval(), normalize(pixels))
    np.testing.assert_allclose(emb, hooked, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
