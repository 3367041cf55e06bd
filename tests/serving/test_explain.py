"""POST /explain on a real `bentoml serve`: a PNG of the photo with the answer's Grad-CAM heatmap,
the same answer as /predict in its headers, a JSON variant, /predict's upload rules."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from catsdogs.monitoring.prediction_log import read_predictions
from tests.serving.conftest import MODEL_NAME, BentoServer
from tests.serving.images import encode, picture
from tests.serving.test_service import metric

pytestmark = pytest.mark.services
TIMEOUT = 120
SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/petimages-sample"


def explain(server: BentoServer, data: bytes, query: str = "", **headers: str
            ) -> requests.Response:
    return requests.post(f"{server.url}/explain{query}", files={"image": ("photo.jpg", data)},
                         headers=headers, timeout=TIMEOUT)


def predict(server: BentoServer, data: bytes) -> dict:
    response = requests.post(f"{server.url}/predict", files={"image": ("photo.jpg", data)},
                             timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def png_of(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def photos() -> tuple[bytes, bytes]:
    """A real cat and a real dog photo from ../shared when present, else two generated JPEGs."""
    found = [sorted((SAMPLE / kind).glob("*.jpg"))[:1] if (SAMPLE / kind).is_dir() else []
             for kind in ("cat", "dog")]
    if all(found):
        return found[0][0].read_bytes(), found[1][0].read_bytes()
    return encode(picture(3), "JPEG"), encode(picture(4), "JPEG")


def test_explain_returns_the_photo_with_a_heatmap_and_predicts_answer(
        bento_server: BentoServer) -> None:
    data = encode(picture(5, (160, 120)), "PNG")
    response = explain(bento_server, data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    overlaid = png_of(response.content)
    assert overlaid.shape == (120, 160, 3)                          # the photo's own size
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    assert np.abs(overlaid - original).mean() > 5                   # a heatmap is drawn over it
    answer = predict(bento_server, data)
    assert response.headers["x-catsdogs-label"] == answer["label"]
    assert float(response.headers["x-catsdogs-confidence"]) == pytest.approx(
        answer["confidence"], abs=1e-5)
    assert response.headers["x-catsdogs-model-version"] == bento_server.version
    assert response.headers["x-catsdogs-explained-with"] == "torch-fp32"
    assert response.headers["x-catsdogs-served-variant"] == "torch-fp32"   # imported without
    # a large photo comes back at most 768 px on its longest side, its aspect ratio kept
    big = explain(bento_server, encode(picture(6, (1600, 800)), "JPEG"))
    assert big.status_code == 200 and png_of(big.content).shape == (384, 768, 3)


def test_json_variant_and_the_heatmap_differs_between_a_cat_and_a_dog(
        bento_server: BentoServer) -> None:
    cat, dog = photos()
    bodies = []
    for data, how in ((cat, {"query": "?format=json"}), (dog, {"Accept": "application/json"})):
        query = how.pop("query", "")
        response = explain(bento_server, data, query, **how)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["explained_with"] == "torch-fp32" and body["served_variant"] == "torch-fp32"
        assert body["prediction"]["model"] == {"name": MODEL_NAME,
                                               "version": bento_server.version}
        answer = predict(bento_server, data)
        assert body["prediction"]["label"] == answer["label"]
        assert body["prediction"]["confidence"] == pytest.approx(answer["confidence"], abs=1e-5)
        overlaid = png_of(base64.b64decode(body["heatmap_png"]))
        assert overlaid.shape == (body["height"], body["width"], 3)
        original = Image.open(io.BytesIO(data)).convert("RGB")
        original.thumbnail((768, 768))
        assert (body["width"], body["height"]) == original.size
        # the heat: what the overlay added to the photo, on a common 32 x 32 grid
        heat = overlaid - np.asarray(original, dtype=np.float32)
        bodies.append(np.asarray(Image.fromarray(np.abs(heat).mean(axis=2).astype(np.uint8))
                                 .resize((32, 32)), dtype=np.float32))
    assert np.abs(bodies[0] - bodies[1]).mean() > 2
    # the same photo twice: the same PNG (deterministic)
    assert explain(bento_server, cat).content == explain(bento_server, cat).content


@pytest.mark.parametrize(("files", "status", "reason"), [
    ({"image": ("notes.txt", b"not a picture at all\n")}, 400, "not_an_image"),
    ({"photo": ("cat.png", b"\x89PNG")}, 400, "invalid_request"),
    ([("image", ("a.png", b"\x89PNG1")), ("image", ("b.png", b"\x89PNG2"))], 400,
     "too_many_images"),
])
def test_bad_uploads_are_refused_like_predict(bento_server: BentoServer, files, status: int,
                                             reason: str) -> None:
    response = requests.post(f"{bento_server.url}/explain", files=files, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert response.headers["x-catsdogs-reject-reason"] == reason
    assert response.json()["reason"] == reason
    if reason == "too_many_images":
        assert "one photo per /explain request" in response.json()["error"]


def test_an_empty_body_and_a_get_are_refused(bento_server: BentoServer) -> None:
    empty = requests.post(f"{bento_server.url}/explain", data=b"",
                          headers={"Content-Type": "multipart/form-data; boundary=x"},
                          timeout=TIMEOUT)
    assert empty.status_code == 400 and empty.json()["reason"] == "empty"
    assert requests.get(f"{bento_server.url}/explain", timeout=TIMEOUT).status_code in (404, 405)


def test_openapi_documents_explain_as_a_png(bento_server: BentoServer) -> None:
    spec = requests.get(f"{bento_server.url}/docs.json", timeout=TIMEOUT).json()
    operation = spec["paths"]["/explain"]["post"]
    assert "Grad-CAM" in operation.get("description", "")
    assert "image/png" in operation["responses"]["200"]["content"]


def test_an_explanation_is_not_counted_or_logged_as_a_second_prediction(
        bento_server: BentoServer) -> None:
    """The page asks /predict and then /explain for each upload: monitoring sees it once."""
    def counts() -> tuple[float, float, int]:
        time.sleep(0.5)                               # the log's writer flushes every 0.2 s
        text = requests.get(f"{bento_server.url}/metrics", timeout=TIMEOUT).text
        return (sum(metric(text, "catsdogs_predictions_total", label=k) for k in ("cat", "dog")),
                metric(text, "catsdogs_explain_seconds_count"),
                len(read_predictions(bento_server.prediction_log_url)))

    before = counts()
    assert explain(bento_server, encode(picture(8), "JPEG")).status_code == 200
    after = counts()
    assert (after[0], after[2]) == (before[0], before[2])
    assert after[1] == before[1] + 1
    predict(bento_server, encode(picture(8), "JPEG"))
    predicted = counts()
    assert (predicted[0], predicted[2]) == (before[0] + 1, before[2] + 1)
