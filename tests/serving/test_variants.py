"""Serving variants (bentoservice/variants.py): the rule that adopts a variant (label agreement
and speed), the choice at start-up and its fallback when a runtime is missing, the OpenVINO
graphs against the torch network (same pixels in, same probabilities and embedding out), the
import's measurement on real photos, and a real `bentoml serve` of an OpenVINO INT8 variant."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from bentoservice.variants import (
    MIN_AGREEMENT,
    REFERENCE,
    VARIANT_NAMES,
    VARIANTS_FOLDER,
    Choice,
    Measurement,
    OpenVinoPredictor,
    cannot_run,
    choose,
    export_openvino,
    judge,
    measure,
    ranked,
)
from catsdogs.data.images import square_image
from catsdogs.monitoring.features import with_embedding
from catsdogs.training.model import normalize
from tests.serving.conftest import IMAGE_SIZE, serve_tiny
from tests.serving.networks import trained_looking

SIZE = IMAGE_SIZE
FP32 = Measurement(REFERENCE, 1.0, 400, {1: 5.0, 8: 4.0})


def _fast(variant: str, agreement: float, b1: float = 3.0, b8: float = 2.5) -> Measurement:
    return Measurement(variant, agreement, 400, {1: b1, 8: b8})


def test_a_variant_is_adopted_only_when_it_agrees_and_is_faster_at_every_batch() -> None:
    judged = {m.variant: m for m in judge([
        FP32,
        _fast("openvino-int8", 0.9975),
        _fast("openvino-fp32", MIN_AGREEMENT - 0.0025),         # disagrees too often
        _fast("torch-bf16", 1.0, b1=5.5),                       # slower alone
    ])}
    assert judged[REFERENCE].adopted
    assert judged["openvino-int8"].adopted and "99.75%" in judged["openvino-int8"].reason
    assert not judged["openvino-fp32"].adopted and "below 99.5%" in judged["openvino-fp32"].reason
    assert not judged["torch-bf16"].adopted and "at batch 1" in judged["torch-bf16"].reason
    assert ranked(list(judged.values())) == ["openvino-int8", REFERENCE]
    # within timing noise (under 5% faster) is not faster
    assert not judge([FP32, _fast("openvino-fp32", 1.0, b1=4.9, b8=3.9)])[1].adopted
    # a variant that did not build keeps its reason
    broken = judge([FP32, Measurement("torch-bf16", None, 400, reason="did not build: X")])[1]
    assert (broken.adopted, broken.reason) == (False, "did not build: X")


def test_fastest_adopted_variant_wins_and_unmeasured_models_serve_fp32(tmp_path: Path) -> None:
    both = judge([FP32, _fast("openvino-fp32", 1.0, b8=3.5), _fast("openvino-int8", 0.999)])
    assert ranked(both) == ["openvino-int8", "openvino-fp32", REFERENCE]
    assert choose("auto", [], tmp_path) == Choice(
        REFERENCE, "the import measured no variants (no calibration photos): torch fp32", False)
    assert choose("auto", both, tmp_path, device_type="cuda").variant == REFERENCE


def test_missing_runtime_falls_back_with_a_log_line(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    measured = judge([FP32, _fast("openvino-int8", 0.999)])
    for variant in ("openvino-int8",):
        graph = tmp_path / VARIANTS_FOLDER / variant / "model.xml"
        graph.parent.mkdir(parents=True)
        graph.write_text("<net/>")
    monkeypatch.setitem(sys.modules, "openvino", None)   # `import openvino` raises ImportError
    with caplog.at_level(logging.WARNING, logger="bentoservice.variants"):
        picked = choose("auto", measured, tmp_path)
        forced = choose("openvino-int8", measured, tmp_path)
    assert (picked.variant, picked.fell_back) == (REFERENCE, True)
    assert forced.variant == REFERENCE and forced.fell_back
    assert "openvino-int8 was measured fastest but cannot run here" in caplog.text
    assert "the openvino package is not installed" in caplog.text
    assert "CATSDOGS_RUNTIME=openvino-int8 cannot run here" in caplog.text


def test_a_model_imported_without_the_graphs_cannot_run_them(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    why = cannot_run("openvino-int8", tmp_path)
    assert why is not None and "re-import it" in why
    assert cannot_run("torch-fp32", tmp_path) is None
    assert "unknown variant" in (cannot_run("tensorrt", tmp_path) or "")
    forced = choose("openvino-fp32", [], tmp_path)
    assert (forced.variant, forced.fell_back) == (REFERENCE, True)


def _pictures(count: int, seed: int = 0) -> np.ndarray:
    """Smooth colour pictures, N,H,W,3 uint8 (calibration needs picture-like statistics)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    low, high = rng.integers(0, 256, (count, 1, 1, 3)), rng.integers(0, 256, (count, 1, 1, 3))
    pictures = low + (high - low) * (ramp[None, :, None, None] * ramp[None, None, :, None])
    noise = rng.integers(-20, 21, (count, SIZE, SIZE, 3))
    return np.clip(pictures + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    pytest.importorskip("openvino")
    net = trained_looking("mobilenet_v2")
    folder = tmp_path_factory.mktemp("variants")
    assert export_openvino(copy.deepcopy(net), SIZE, folder, _pictures(32)) == [
        "openvino-fp32", "openvino-int8"]
    return net, folder


def test_openvino_fp32_graph_gives_the_torch_answers_and_embedding(
        exported: tuple[torch.nn.Module, Path]) -> None:
    """Same uint8 pixels in: the normalisation in the graph is training's, so probabilities and
    embedding match the eager network's."""
    net, folder = exported
    pixels = torch.from_numpy(_pictures(6, seed=5))
    with torch.inference_mode():
        logits, embedding = with_embedding(copy.deepcopy(net))(
            normalize(pixels.permute(0, 3, 1, 2).contiguous()))
    predictor = OpenVinoPredictor(folder / VARIANTS_FOLDER / "openvino-fp32" / "model.xml", 2)
    probabilities, served_embedding = predictor.outputs(pixels)
    torch.testing.assert_close(probabilities, torch.softmax(logits, 1), atol=1e-4, rtol=1e-3)
    assert served_embedding is not None
    torch.testing.assert_close(served_embedding, embedding, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("variant", ["openvino-fp32", "openvino-int8"])
def test_each_picture_gets_the_same_answer_whatever_batch_it_is_in(
        exported: tuple[torch.nn.Module, Path], variant: str) -> None:
    """Batches of 1 run in latency mode, larger ones split over streams: same answers."""
    _, folder = exported
    predictor = OpenVinoPredictor(folder / VARIANTS_FOLDER / variant / "model.xml", 2)
    predictor.warm_up(8, SIZE)
    pixels = torch.from_numpy(_pictures(7, seed=6))
    together, embedding = predictor.outputs(pixels)
    alone = [predictor.outputs(pixels[i:i + 1]) for i in range(7)]
    assert together.shape == (7, 2) and embedding is not None and embedding.shape == (7, 1280)
    torch.testing.assert_close(together, torch.cat([a[0] for a in alone]), atol=1e-4, rtol=1e-3)


def test_import_measures_every_runnable_variant_on_real_photos(sample_dir: Path,
                                                                tmp_path: Path) -> None:
    """The measurement the import stores: agreement on the photos and time at batch 1 and 8 for
    each variant that runs here, judged by the rule (which variant wins depends on the CPU)."""
    pytest.importorskip("openvino")
    files = sorted((sample_dir / "cat").glob("*.jpg"))[:24] + sorted(
        (sample_dir / "dog").glob("*.jpg"))[:24]
    pixels = np.stack([np.asarray(square_image(f, SIZE)) for f in files])
    measured = measure(trained_looking("mobilenet_v2"), tmp_path, pixels)
    names = [m.variant for m in measured]
    assert names[0] == REFERENCE and {"openvino-fp32", "openvino-int8"} <= set(names)
    assert set(names) <= set(VARIANT_NAMES)
    for m in measured:
        assert m.images == 48 and m.agreement is not None and 0.0 <= m.agreement <= 1.0
        assert set(m.ms_per_image) == {1, 8} and all(ms > 0 for ms in m.ms_per_image.values())
    assert measured == judge(measured)                     # stored exactly as the rule judged
    assert (tmp_path / VARIANTS_FOLDER / "openvino-int8" / "model.bin").stat().st_size > 0


@pytest.mark.services
def test_service_serves_the_openvino_int8_variant(mlflow_server: str, sample_dir: Path,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """A real `bentoml serve` of a model imported with real calibration photos, the INT8 variant
    forced: /model says what runs and what the import measured; answers keep the embedding's
    out-of-distribution score; a photo alone and in a batch get the same answer."""
    pytest.importorskip("openvino")
    workdir = tmp_path_factory.mktemp("bento-openvino")
    photos = sorted((sample_dir / "cat").glob("*.jpg"))[:3] + sorted(
        (sample_dir / "dog").glob("*.jpg"))[:3]
    with serve_tiny(mlflow_server, workdir, "CatsDogsVariantsTest",
                    ("--calibration-dir", str(sample_dir), "--calibration-images", "32"),
                    {"CATSDOGS_RUNTIME": "openvino-int8"}) as server:
        info = requests.get(f"{server.url}/model", timeout=30).json()
        runtime = info["runtime"]
        assert (runtime["variant"], runtime["reason"]) == ("openvino-int8",
                                                           "CATSDOGS_RUNTIME=openvino-int8")
        measured = {m["variant"]: m for m in runtime["measured"]}
        assert {REFERENCE, "openvino-fp32", "openvino-int8"} <= set(measured)
        assert measured["openvino-int8"]["images"] == 32
        assert "flags: " in runtime["measured_on"] and " CPUs" in runtime["measured_on"]
        alone = [requests.post(f"{server.url}/predict", files={"image": p.read_bytes()},
                               timeout=60).json() for p in photos]
        batch = requests.post(f"{server.url}/predict_batch",
                              files=[("images", p.read_bytes()) for p in photos],
                              timeout=60).json()
        assert [a["label"] for a in alone] == [b["label"] for b in batch]
        for a, b in zip(alone, batch, strict=True):
            assert a["ood_score"] is not None and a["in_distribution"] is not None
            assert abs(a["confidence"] - b["confidence"]) < 1e-4
        assert "variant openvino-int8 (CATSDOGS_RUNTIME=openvino-int8)" in \
            server.log_file.read_text()
