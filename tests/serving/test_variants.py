"""Serving variants (catsdogs.inference.variants): the rule that adopts a variant (label agreement
and speed), the choice at start-up and its fallback when a runtime is missing, the OpenVINO
graphs against the torch network (same pixels in, same probabilities and embedding out), the
import's measurement on real photos, and a real `bentoml serve` of an OpenVINO INT8 variant.
Everything that loads OpenVINO runs in a process of its own (tests/serving/variants_probe.py, the
import, the service)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from catsdogs.inference.variants import (
    MIN_AGREEMENT,
    REFERENCE,
    VARIANT_NAMES,
    VARIANTS_FOLDER,
    Choice,
    Measurement,
    choose,
    judge,
    ranked,
)
from tests.serving.conftest import REPO_ROOT, serve_tiny

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
    with caplog.at_level(logging.WARNING, logger="catsdogs.inference.variants"):
        picked = choose("auto", measured, tmp_path)
        forced = choose("openvino-int8", measured, tmp_path)
    assert (picked.variant, picked.fell_back) == (REFERENCE, True)
    assert forced.variant == REFERENCE and forced.fell_back
    assert "openvino-int8 was measured fastest but cannot run here" in caplog.text
    assert "the openvino package is not installed" in caplog.text
    assert "CATSDOGS_RUNTIME=openvino-int8 cannot run here" in caplog.text


def _probe(*args: str | Path) -> dict:
    """tests/serving/variants_probe.py in its own process (OpenVINO stays out of this one)."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino package is not installed")
    done = subprocess.run([sys.executable, "-m", "tests.serving.variants_probe", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(REPO_ROOT / "include"), str(REPO_ROOT)])})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openvino_graphs_give_the_torch_answers_whatever_the_batch(tmp_path: Path) -> None:
    """Same uint8 pixels in: the normalisation in the graph is training's, so the fp32 graph's
    probabilities and embedding are the eager network's; batches of 1 run in latency mode,
    larger ones split over streams, and every picture gets the same answer either way. A model
    folder without the graphs cannot run them."""
    found = _probe("graphs", tmp_path)
    assert found["written"] == ["openvino-fp32", "openvino-int8"]
    assert "re-import it" in found["no_graphs"]
    fp32 = found["openvino-fp32"]
    assert fp32["probabilities_vs_torch"] < 1e-3
    assert fp32["embedding_vs_torch"] <= 1e-3 * max(1.0, fp32["embedding_scale"])
    for variant in ("openvino-fp32", "openvino-int8"):
        assert found[variant]["shapes"] == [[7, 2], [7, 1280]]
        assert found[variant]["batch_vs_alone"] < 1e-3, (variant, found[variant])


def test_import_measures_every_runnable_variant_on_real_photos(sample_dir: Path,
                                                                tmp_path: Path) -> None:
    """The measurement the import stores: agreement on the photos and time at batch 1 and 8 for
    each variant that runs here, judged by the rule (which variant wins depends on the CPU)."""
    found = _probe("measure", tmp_path, sample_dir)
    measured = [Measurement.from_dict(m) for m in found["measured"]]
    names = [m.variant for m in measured]
    assert names[0] == REFERENCE and {"openvino-fp32", "openvino-int8"} <= set(names)
    assert set(names) <= set(VARIANT_NAMES)
    for m in measured:
        assert m.images == 48 and m.agreement is not None and 0.0 <= m.agreement <= 1.0
        assert set(m.ms_per_image) == {1, 8} and all(ms > 0 for ms in m.ms_per_image.values())
    assert measured == judge(measured)                     # stored exactly as the rule judged
    assert found["int8_bytes"] > 0


@pytest.mark.services
def test_service_serves_the_openvino_int8_variant(mlflow_server: str, sample_dir: Path,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """A real `bentoml serve` of a model imported with real calibration photos, the INT8 variant
    forced: /model says what runs and what the import measured; answers keep the embedding's
    out-of-distribution score; a photo alone and in a batch get the same answer; /explain gives
    the INT8 answer with the torch network's heatmap."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino package is not installed")
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
        # /explain answers with the served (INT8) answer, its heatmap from the torch network
        explained = requests.post(f"{server.url}/explain",
                                  files={"image": photos[0].read_bytes()}, timeout=120)
        assert explained.status_code == 200, explained.text
        assert explained.headers["content-type"] == "image/png"
        assert explained.headers["x-catsdogs-label"] == alone[0]["label"]
        assert float(explained.headers["x-catsdogs-confidence"]) == pytest.approx(
            alone[0]["confidence"], abs=1e-4)
        assert explained.headers["x-catsdogs-served-variant"] == "openvino-int8"
        assert explained.headers["x-catsdogs-explained-with"] == REFERENCE
