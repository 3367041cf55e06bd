"""The prediction log and out-of-distribution fields, served for real (conftest.py's
`bentoml serve` of the tiny model, whose run carries an out-of-distribution calibration):
answers carry `in_distribution`/`ood_score`, every answer becomes a row of the SQLite log, and a
second server whose store is unusable still answers every request."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from catsdogs.monitoring.prediction_log import read_predictions
from tests.serving.conftest import BentoServer, another_server
from tests.serving.test_service import metric

pytestmark = pytest.mark.services
TIMEOUT = 60


def photo(seed: int, size: tuple[int, int] = (120, 90), kind: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def rows_for(url: str, scores: list[float], timeout: float = 30.0):
    """The log's rows whose ood_score is one of `scores`, once all of them have landed."""
    deadline = time.monotonic() + timeout
    while True:
        frame = read_predictions(url)
        if not frame.empty:
            found = frame[frame["ood_score"].round(3).isin([round(s, 3) for s in scores])]
            if len(found) >= len(scores):
                return found
        assert time.monotonic() < deadline, f"{len(scores)} rows did not land in {url}"
        time.sleep(0.3)


def test_answers_carry_the_out_of_distribution_fields(bento_server: BentoServer) -> None:
    body = requests.post(f"{bento_server.url}/predict", files={"image": ("a.jpg", photo(1))},
                         timeout=TIMEOUT).json()
    assert isinstance(body["in_distribution"], bool)
    assert isinstance(body["ood_score"], float) and body["ood_score"] >= 0


def test_every_prediction_lands_in_the_log(bento_server: BentoServer) -> None:
    single = [requests.post(f"{bento_server.url}/predict",
                            files={"image": (f"{i}.jpg", photo(10 + i, (200 + i, 100)))},
                            timeout=TIMEOUT).json() for i in range(3)]
    batch = requests.post(f"{bento_server.url}/predict_batch",
                          files=[("images", ("p.png", photo(20, (64, 80), "PNG"))),
                                 ("images", ("q.jpg", photo(21, (300, 200))))],
                          timeout=TIMEOUT).json()
    answers = single + batch
    rows = rows_for(bento_server.prediction_log_url, [a["ood_score"] for a in answers])
    by_score = {round(r.ood_score, 3): r for r in rows.itertuples()}
    sizes = [(200, 100), (201, 100), (202, 100), (64, 80), (300, 200)]
    formats = ["JPEG"] * 3 + ["PNG", "JPEG"]
    for answer, size, kind in zip(answers, sizes, formats, strict=True):
        row = by_score[round(answer["ood_score"], 3)]
        assert (row.label, row.model_version, row.model_name) == (
            answer["label"], bento_server.version, answer["model"]["name"])
        assert row.confidence == pytest.approx(answer["confidence"], rel=1e-6)
        assert (row.width, row.height, row.format) == (*size, kind)
        assert bool(row.in_distribution) == answer["in_distribution"]
        assert 0 <= row.brightness <= 1 and 0 <= row.contrast <= 1 and 0 <= row.saturation <= 1
        assert row.time.tzinfo is not None
    embedding = rows[[c for c in rows.columns if c.startswith("emb_")]]
    assert embedding.shape[1] == 512 and np.isfinite(embedding.to_numpy()).all()  # resnet18
    metrics = requests.get(f"{bento_server.url}/metrics", timeout=TIMEOUT).text
    assert metric(metrics, "catsdogs_prediction_log_rows_total", outcome="written") >= 5


def test_out_of_distribution_answers_are_counted(bento_server: BentoServer) -> None:
    before = requests.get(f"{bento_server.url}/metrics", timeout=TIMEOUT).text
    answers = [requests.post(f"{bento_server.url}/predict",
                             files={"image": ("n.png", photo(40 + i, (96, 96), "PNG"))},
                             timeout=TIMEOUT).json() for i in range(4)]
    after = requests.get(f"{bento_server.url}/metrics", timeout=TIMEOUT).text
    outside = sum(not a["in_distribution"] for a in answers)
    counted = (metric(after, "catsdogs_out_of_distribution_total")
               - metric(before, "catsdogs_out_of_distribution_total"))
    assert outside > 0 and counted == outside  # noise is far from the calibration pictures


@pytest.fixture(scope="module")
def broken_store_server(bento_server: BentoServer, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[str]:
    """A second `bentoml serve` of the same model whose prediction log cannot be written (its
    SQLite folder is a file) and whose queue holds 2 rows."""
    workdir = tmp_path_factory.mktemp("broken-store")
    blocker = workdir / "not-a-folder"
    blocker.write_text("where the database's folder should be")
    with another_server(bento_server, workdir, {
            "CATSDOGS_PREDICTION_LOG_URL": f"sqlite:///{blocker}/predictions.db",
            "CATSDOGS_PREDICTION_LOG_QUEUE": "2", "CATSDOGS_PREDICTION_LOG_BATCH_ROWS": "1"}) as url:
        yield url


def test_an_unusable_store_never_fails_a_request(broken_store_server: str) -> None:
    def send(seed: int) -> int:
        return requests.post(f"{broken_store_server}/predict",
                             files={"image": ("x.jpg", photo(seed))}, timeout=TIMEOUT).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses == [200] * 40
    deadline = time.monotonic() + 20
    while True:
        text = requests.get(f"{broken_store_server}/metrics", timeout=TIMEOUT).text
        lost = (metric(text, "catsdogs_prediction_log_rows_total", outcome="dropped_store_error")
                + metric(text, "catsdogs_prediction_log_rows_total",
                         outcome="dropped_queue_full"))
        if lost == 40:
            break
        assert time.monotonic() < deadline, f"{lost} of 40 rows counted as lost"
        time.sleep(0.5)
    assert metric(text, "catsdogs_prediction_log_rows_total", outcome="dropped_store_error") > 0
    assert metric(text, "catsdogs_prediction_log_rows_total", outcome="written") == 0



def test_feedback_to_an_unusable_store_is_a_503(broken_store_server: str) -> None:
    answer = requests.post(f"{broken_store_server}/feedback", timeout=TIMEOUT,
                           json={"prediction_id": "0" * 32, "label": "cat"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["reason"] == "feedback_unavailable"
    assert answer.headers["x-catsdogs-reject-reason"] == "feedback_unavailable"


@pytest.mark.browser
def test_page_says_when_a_picture_is_not_a_cat_or_a_dog(bento_server: BentoServer,
                                                         tmp_path: Path,
                                                         artifacts_dir: Path) -> None:
    from tests.browser import chromium_page

    noise = tmp_path / "noise.png"
    noise.write_bytes(photo(77, (160, 160), "PNG"))
    answer = requests.post(f"{bento_server.url}/predict",
                           files={"image": ("noise.png", noise.read_bytes())},
                           timeout=TIMEOUT).json()
    assert answer["in_distribution"] is False
    with chromium_page(900, 900) as page:
        page.goto(bento_server.url + "/")
        page.set_input_files("#file", str(noise))
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        assert page.is_visible("#ood-note")
        assert "does not look like a cat or a dog" in page.text_content("#ood-note")
        page.screenshot(path=str(artifacts_dir / "serving-web-page-out-of-distribution.png"),
                        full_page=True)
