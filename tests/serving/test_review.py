"""The review queue against a real `bentoml serve` of the tiny model (conftest.py): the service
keeps pictures by params.yaml's `review:` policy (CATSDOGS_PREDICTION_LOG_SAMPLE_RATE=1 keeps
every upload; a policy that keeps none keeps no file), records why in `kept_for`, serves the
queue and its pictures only by prediction_id and only with an API key when keys are on, and the
review page labels the queue with the keyboard (c, d, n; s skips) in headless chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from catsdogs.monitoring.keeping import QUEUE_ORDER
from tests.serving.conftest import BentoServer, another_server
from tests.serving.test_feedback import logged
from tests.serving.test_prediction_log_serving import photo

pytestmark = pytest.mark.services
TIMEOUT = 60
KEY = "review-key-0123456789"


def _predict(url: str, picture: bytes) -> dict:
    answer = requests.post(f"{url}/predict", files={"image": ("a.jpg", picture)},
                           headers={"X-API-Key": KEY}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def keyed(bento_server: BentoServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[str, str, Path]]:
    """A server with API keys that keeps every upload: (url, its prediction log, its pictures)."""
    workdir = tmp_path_factory.mktemp("review")
    (workdir / "keys").write_text(f"{KEY}\n")
    log_url, pictures = f"sqlite:///{workdir / 'predictions.db'}", workdir / "pictures"
    with another_server(bento_server, workdir, {
            "CATSDOGS_API_KEYS_FILE": str(workdir / "keys"),
            "CATSDOGS_PREDICTION_LOG_URL": log_url,
            "CATSDOGS_PREDICTION_LOG_SAMPLE_RATE": "1",
            "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR": str(pictures)}) as url:
        yield url, log_url, pictures


def test_kept_uploads_are_served_by_id_only_and_only_with_a_key(
        keyed: tuple[str, str, Path]) -> None:
    url, log_url, pictures = keyed
    uploads = [photo(seed) for seed in (201, 202, 203)]
    ids = [_predict(url, picture)["prediction_id"] for picture in uploads]
    rows = logged(log_url, ids)
    for prediction_id, picture in zip(ids, uploads, strict=True):
        row = rows.loc[prediction_id]
        assert row["kept_for"] in QUEUE_ORDER   # sample rate 1: every upload, for some reason
        assert Path(row["picture"]).is_relative_to(pictures)
        assert Path(row["picture"]).read_bytes() == picture       # the upload as sent

    assert requests.get(f"{url}/review/queue", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{url}/review/picture", params={"prediction_id": ids[0]},
                        timeout=TIMEOUT).status_code == 401
    key = {"X-API-Key": KEY}
    body = requests.get(f"{url}/review/queue", params={"limit": 200}, headers=key,
                        timeout=TIMEOUT).json()
    queued = [item for item in body["items"] if item["prediction_id"] in ids]
    assert len(queued) == 3 and "picture" not in queued[0]   # no path leaves the service
    ranks = [(QUEUE_ORDER.index(item["kept_for"]), item["confidence"]) for item in queued]
    assert ranks == sorted(ranks)   # by reason, then lowest confidence first
    assert sum(body["waiting"].values()) >= 3

    served = requests.get(f"{url}/review/picture", params={"prediction_id": ids[1]},
                          headers=key, timeout=TIMEOUT)
    assert served.status_code == 200 and served.content == uploads[1]
    assert served.headers["content-type"] == "image/jpeg"
    assert "no-store" in served.headers["cache-control"]
    for wrong in ("0" * 32, "../../etc/passwd", str(Path(rows.loc[ids[1], "picture"])), ""):
        refused = requests.get(f"{url}/review/picture", params={"prediction_id": wrong},
                               headers=key, timeout=TIMEOUT)
        assert refused.status_code == 404 and refused.json()["reason"] == "unknown_picture"
    assert requests.get(f"{url}/review", timeout=TIMEOUT).status_code == 200  # no user data


def test_a_policy_that_keeps_none_keeps_no_picture(bento_server: BentoServer,
                                                   tmp_path: Path) -> None:
    """The service reads `review:` from the params file ($CATSDOGS_PARAMS)."""
    params = tmp_path / "params.yaml"
    params.write_text("review:\n  low_confidence: 0\n  keep_ood: false\n  random_share: 0\n"
                      "  recent_share: 0\n")
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    with another_server(bento_server, tmp_path, {
            "CATSDOGS_PARAMS": str(params), "CATSDOGS_PREDICTION_LOG_URL": log_url,
            "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR": str(tmp_path / "pictures")}) as url:
        ids = [_predict(url, photo(seed))["prediction_id"] for seed in (211, 212)]
        rows = logged(log_url, ids)
        assert rows["picture"].isna().all() and rows["kept_for"].isna().all()
        assert not (tmp_path / "pictures").exists()
        assert requests.get(f"{url}/review/queue", timeout=TIMEOUT).json()["items"] == []


@pytest.mark.browser
def test_the_review_page_labels_the_queue_with_the_keyboard(
        keyed: tuple[str, str, Path], artifacts_dir: Path) -> None:
    from tests.browser import chromium_page

    url, log_url, _ = keyed
    for seed in (221, 222, 223):
        _predict(url, photo(seed))
    with chromium_page(900, 900) as page:
        page.goto(url + "/review")
        page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)  # 401: asks for a key
        page.fill("#key", KEY)
        page.click("#key-form button")
        shown = []
        for key, expected in (("c", "Recorded as cat"), ("s", "Skipped"),
                              ("d", "Recorded as dog"), ("n", "Recorded as neither")):
            page.wait_for_function("document.getElementById('picture').dataset.predictionId"
                                   f" && !{shown!r}.includes(document.getElementById('picture')"
                                   ".dataset.predictionId)", timeout=30_000)
            shown.append(page.evaluate("document.getElementById('picture').dataset.predictionId"))
            if key == "c":
                page.screenshot(path=str(artifacts_dir / "serving-review-page.png"),
                                full_page=True)
            page.keyboard.press(key)
            page.wait_for_function("document.getElementById('status').textContent"
                                   f".startsWith({expected!r})", timeout=30_000)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in shown) and len(set(shown)) == 4
    rows = logged(log_url, shown)
    labels = [None if pd.isna(label) else label for label in rows.loc[shown, "true_label"]]
    assert labels == ["cat", None, "dog", "neither"]
