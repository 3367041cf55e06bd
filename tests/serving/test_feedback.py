"""Feedback against a real `bentoml serve` of the tiny model (conftest.py): every logged answer
of /predict, /predict_batch and /predict_base64 carries its prediction-log row's
`prediction_id`; POST /feedback records the true label (and when) in that row, the later label
winning and nothing else changing; `catsdogs_feedback_total` counts each answer's first label
(right, wrong, neither; a relabel not again); an unknown id is 404, a bad label or body 400, in the
service's `{"error", "reason"}` shape; a row the log's cap deleted is 404; with the log off
answers carry no id; /docs describes the route; the web page's buttons post it."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from catsdogs.config import FEEDBACK_LABELS
from catsdogs.monitoring.prediction_log import read_predictions
from tests.serving.conftest import BentoServer, another_server
from tests.serving.test_prediction_log_serving import photo
from tests.serving.test_service import metric

pytestmark = pytest.mark.services
TIMEOUT = 60
REJECT_HEADER = "x-catsdogs-reject-reason"


def predict(url: str, seed: int) -> dict:
    answer = requests.post(f"{url}/predict", files={"image": ("a.jpg", photo(seed))},
                           timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def feedback(url: str, body: object, **kwargs: object) -> requests.Response:
    return requests.post(f"{url}/feedback", json=body, timeout=TIMEOUT, **kwargs)


def logged(url: str, ids: list[str], timeout: float = 30.0) -> pd.DataFrame:
    """The log's rows of `ids` (indexed by prediction_id), once all of them have landed."""
    deadline = time.monotonic() + timeout
    while True:
        frame = read_predictions(url)
        found = frame[frame["prediction_id"].isin(ids)] if not frame.empty else frame
        if len(found) == len(ids):
            return found.set_index("prediction_id")
        assert time.monotonic() < deadline, f"{len(ids)} rows did not land in {url}"
        time.sleep(0.2)


def refused(response: requests.Response, status: int, reason: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers[REJECT_HEADER] == reason
    body = response.json()
    assert body["reason"] == reason and body["error"]
    return body["error"]


def test_every_answer_carries_its_rows_prediction_id(bento_server: BentoServer) -> None:
    url = bento_server.url
    single = predict(url, 101)
    batch = requests.post(f"{url}/predict_batch", timeout=TIMEOUT, files=[
        ("images", ("p.jpg", photo(102))), ("images", ("q.jpg", photo(103)))]).json()
    encoded = requests.post(f"{url}/predict_base64", timeout=TIMEOUT, json={
        "image": base64.b64encode(photo(104)).decode()}).json()
    answers = [single, *batch, encoded]
    ids = [answer["prediction_id"] for answer in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 4
    rows = logged(bento_server.prediction_log_url, ids)
    for answer in answers:
        row = rows.loc[answer["prediction_id"]]
        assert row["ood_score"] == pytest.approx(answer["ood_score"], rel=1e-6)
        assert row["label"] == answer["label"] and pd.isna(row["true_label"])
        assert re.fullmatch(r"[0-9a-f]{64}", row["content_hash"])


def test_the_same_picture_has_the_same_content_hash(bento_server: BentoServer) -> None:
    ids = [predict(bento_server.url, 110)["prediction_id"] for _ in range(2)]
    ids.append(predict(bento_server.url, 111)["prediction_id"])
    hashes = logged(bento_server.prediction_log_url, ids).loc[ids, "content_hash"].tolist()
    assert hashes[0] == hashes[1] != hashes[2]


def test_feedback_records_the_true_label_and_the_later_wins(bento_server: BentoServer) -> None:
    url, log_url = bento_server.url, bento_server.prediction_log_url
    answer = predict(url, 120)
    prediction_id = answer["prediction_id"]
    # sent at once: the row may still be queued in the writer; the label follows its insert
    first = feedback(url, {"prediction_id": prediction_id, "label": "dog"})
    assert first.status_code == 200, first.text
    assert first.json()["prediction_id"] == prediction_id and first.json()["label"] == "dog"
    before = logged(log_url, [prediction_id]).loc[prediction_id]
    assert before["true_label"] == "dog"
    later = feedback(url, {"prediction_id": prediction_id, "label": "neither"})
    assert later.status_code == 200, later.text
    after = logged(log_url, [prediction_id]).loc[prediction_id]
    assert after["true_label"] == "neither"
    assert after["labelled_at"] == pd.Timestamp(later.json()["labelled_at"])
    assert after["labelled_at"] > before["labelled_at"]
    untouched = [c for c in after.index if c not in ("true_label", "labelled_at")]
    assert after[untouched].equals(before[untouched])
    for label in FEEDBACK_LABELS:
        assert feedback(url, {"prediction_id": prediction_id, "label": label}).ok


def feedback_counts(url: str, version: str) -> dict[tuple[str, str], float]:
    """`catsdogs_feedback_total` by (label, correct) for answers of model `version`."""
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    return {(label, correct): metric(text, "catsdogs_feedback_total", label=label,
                                     correct=correct, version=version)
            for label in FEEDBACK_LABELS for correct in ("true", "false", "n/a")}


def test_feedback_counts_right_wrong_and_neither_once_per_answer(
        bento_server: BentoServer) -> None:
    url = bento_server.url
    right, wrong, other = (predict(url, seed) for seed in (140, 141, 142))
    version = right["model"]["version"]
    flip = {"cat": "dog", "dog": "cat"}
    before = feedback_counts(url, version)
    # `right` labelled at once (its row likely still queued: counted when it lands), `wrong`
    # once its row is in the store (counted by the request itself)
    assert feedback(url, {"prediction_id": right["prediction_id"], "label": right["label"]}).ok
    logged(bento_server.prediction_log_url, [wrong["prediction_id"]])
    assert feedback(url, {"prediction_id": wrong["prediction_id"],
                          "label": flip[wrong["label"]]}).ok
    assert feedback(url, {"prediction_id": other["prediction_id"], "label": "neither"}).ok
    expected = {key: 0.0 for key in before}
    for key in ((right["label"], "true"), (flip[wrong["label"]], "false"), ("neither", "n/a")):
        expected[key] += 1

    def moved() -> dict[tuple[str, str], float]:
        now = feedback_counts(url, version)
        return {key: now[key] - before[key] for key in now}

    deadline = time.monotonic() + 30
    while moved() != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert moved() == expected
    logged(bento_server.prediction_log_url, [right["prediction_id"], other["prediction_id"]])
    # relabels (every row is in the store now: each is recorded, and counted or not, by its
    # request): recorded in the row, not counted again
    for answer in (right, wrong, other):
        relabel = feedback(url, {"prediction_id": answer["prediction_id"], "label": "dog"})
        assert relabel.ok, relabel.text
    rows = logged(bento_server.prediction_log_url, [a["prediction_id"] for a in (right, wrong,
                                                                                 other)])
    assert (rows["true_label"] == "dog").all()
    assert moved() == expected


def test_unknown_ids_bad_labels_and_bad_bodies_are_refused(bento_server: BentoServer) -> None:
    url = bento_server.url
    prediction_id = predict(url, 130)["prediction_id"]
    started = time.monotonic()
    message = refused(feedback(url, {"prediction_id": "0" * 32, "label": "cat"}), 404,
                      "unknown_prediction")
    assert "no prediction" in message
    assert time.monotonic() - started < 10    # one second look after flush_s + 1 s
    message = refused(feedback(url, {"prediction_id": prediction_id, "label": "horse"}), 400,
                      "bad_label")
    assert all(label in message for label in FEEDBACK_LABELS)
    refused(feedback(url, {"prediction_id": prediction_id, "label": "Cat"}), 400, "bad_label")
    refused(feedback(url, {"prediction_id": prediction_id}), 400, "invalid_request")
    refused(feedback(url, {"prediction_id": 5, "label": "cat"}), 400, "invalid_request")
    refused(feedback(url, ["cat"]), 400, "invalid_request")
    refused(requests.post(f"{url}/feedback", data=b'{"prediction_id": ', timeout=TIMEOUT,
                          headers={"Content-Type": "application/json"}), 400, "invalid_request")
    refused(requests.post(f"{url}/feedback", data=b"", timeout=TIMEOUT), 400, "empty")
    refused(requests.post(f"{url}/feedback", files={"label": ("x", b"cat")}, timeout=TIMEOUT),
            415, "unsupported_media_type")
    refused(requests.post(f"{url}/feedback", timeout=TIMEOUT, json={
        "prediction_id": prediction_id, "label": "cat", "note": "x" * 5000}), 413, "too_large")
    refused(requests.get(f"{url}/feedback", timeout=TIMEOUT), 405, "method_not_allowed")
    row = logged(bento_server.prediction_log_url, [prediction_id]).loc[prediction_id]
    assert pd.isna(row["true_label"])     # nothing refused reached the row


def test_openapi_describes_feedback(bento_server: BentoServer) -> None:
    spec = requests.get(f"{bento_server.url}/docs.json", timeout=TIMEOUT).json()
    operation = spec["paths"]["/feedback"]["post"]
    assert "true label" in operation["description"]
    text = str(spec)
    assert "neither" in text and "prediction_id" in text


def test_a_row_the_cap_deleted_is_404(bento_server: BentoServer, tmp_path: Path) -> None:
    log_url = f"sqlite:///{tmp_path / 'capped.db'}"
    with another_server(bento_server, tmp_path, {"CATSDOGS_PREDICTION_LOG_URL": log_url,
                                                 "CATSDOGS_PREDICTION_LOG_MAX_ROWS": "2"}) as url:
        ids = []
        for seed in range(140, 143):
            ids.append(predict(url, seed)["prediction_id"])
            logged(log_url, ids[-1:])        # one insert each: the cap acts after each
        assert read_predictions(log_url)["prediction_id"].tolist() == ids[1:]
        refused(feedback(url, {"prediction_id": ids[0], "label": "cat"}), 404,
                "unknown_prediction")
        assert feedback(url, {"prediction_id": ids[2], "label": "cat"}).status_code == 200


def test_with_the_log_off_answers_carry_no_id(bento_server: BentoServer, tmp_path: Path) -> None:
    with another_server(bento_server, tmp_path, {"CATSDOGS_PREDICTION_LOG": "0"}) as url:
        assert predict(url, 150)["prediction_id"] is None
        message = refused(feedback(url, {"prediction_id": "0" * 32, "label": "dog"}), 404,
                          "unknown_prediction")
        assert "CATSDOGS_PREDICTION_LOG=0" in message


@pytest.mark.browser
def test_the_page_sends_feedback(bento_server: BentoServer, tmp_path: Path,
                                 artifacts_dir: Path) -> None:
    from tests.browser import chromium_page

    picture = tmp_path / "pet.jpg"
    picture.write_bytes(photo(160))
    with chromium_page(900, 900) as page:
        page.goto(bento_server.url + "/")
        page.set_input_files("#file", str(picture))
        page.wait_for_selector("#feedback:not([hidden])", timeout=30_000)
        prediction_id = page.evaluate("predictionId")
        assert re.fullmatch(r"[0-9a-f]{32}", prediction_id)
        page.click("#feedback button[data-label='neither']")
        page.wait_for_function(
            "document.getElementById('feedback-status').textContent.startsWith('Thanks')")
        assert "neither" in page.text_content("#feedback-status")
        page.screenshot(path=str(artifacts_dir / "serving-web-page-feedback.png"),
                        full_page=True)
    row = logged(bento_server.prediction_log_url, [prediction_id]).loc[prediction_id]
    assert row["true_label"] == "neither"
