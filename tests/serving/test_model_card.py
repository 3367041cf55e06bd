"""The served version's model card: the import stores it in the Bento model, a real `bentoml
serve` answers it in /model (`card`) and at /model/card (text/markdown), the page shows it and
links to it (headless chromium), and a re-import brings the stored card up to date."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from bentoservice.web import CARD_FILE
from catsdogs.deployment.service_entry import IMPORT_MODEL
from tests.browser import chromium_page
from tests.serving.conftest import MODEL_NAME, REPO_ROOT, BentoServer

pytestmark = pytest.mark.services


def test_model_and_model_card_endpoints(bento_server: BentoServer, tracking_uri: str) -> None:
    info = requests.get(f"{bento_server.url}/model", timeout=30).json()
    card = info["card"]
    assert card.startswith(f"# Model card: {MODEL_NAME} v{bento_server.version}\n")
    assert "**Warning:**" in card and "generated stand-in pictures" in card
    assert f"| - | v{bento_server.version} | promote | registered by the serving tests |" in card
    answer = requests.get(f"{bento_server.url}/model/card", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/markdown; charset=utf-8"
    assert answer.text == card
    # the same text the registry holds as the version's description
    assert MlflowClient().get_model_version(MODEL_NAME, bento_server.version).description == card


@pytest.mark.browser
def test_page_shows_and_links_the_card(bento_server: BentoServer, artifacts_dir: Path) -> None:
    with chromium_page(900, 900) as page:
        page.goto(bento_server.url + "/")
        page.wait_for_selector("#card:not([hidden])", timeout=30_000)
        assert page.get_attribute("#card-link", "href") == "/model/card"
        assert page.is_visible("#card-link")
        assert not page.is_visible("#card-text")           # folded until asked
        page.click("#card summary")
        page.wait_for_selector("#card-text", state="visible")
        text = page.text_content("#card-text") or ""
        assert f"# Model card: {MODEL_NAME} v{bento_server.version}" in text
        assert "## Promotion and deployment" in text
        page.screenshot(path=str(artifacts_dir / "serving-web-page-model-card.png"),
                        full_page=True)
        page.click("#card-link")                            # the link opens the text itself
        page.wait_for_url("**/model/card")
        assert (page.text_content("body") or "").startswith("# Model card: ")


def test_reimport_brings_the_stored_card_up_to_date(bento_server: BentoServer,
                                                    tracking_uri: str) -> None:
    """The card's history changes after the import (a deployment, a rollback): importing the
    same version again stores the new card and nothing else."""
    from bentoservice.import_model import _tag_variants

    client = MlflowClient()
    client.set_model_version_tag(MODEL_NAME, bento_server.version, "deploy.status", "deployed")
    _tag_variants({"registered_model": MODEL_NAME, "version": bento_server.version},
                  {"cpu": "test CPU", "min_agreement": 0.995, "chosen": "openvino-int8",
                   "measured": [{"variant": "openvino-int8", "agreement": 0.998, "images": 200,
                                 "ms_per_image": {"1": 3.0, "8": 2.5}, "adopted": True,
                                 "reason": "faster"}]})
    env = {**os.environ, "BENTOML_HOME": str(bento_server.log_file.parent / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    argv = [sys.executable, "-m", IMPORT_MODEL, "--model-uri",
            f"models:/{MODEL_NAME}@champion", "--calibration-images", "0",
            "--data-dir", str(bento_server.log_file.parent / "data")]
    first = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           check=False, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "already imported" in first.stdout and "model card was updated" in first.stdout
    stored = list((bento_server.log_file.parent / "bentoml" / "models").rglob(CARD_FILE))
    assert len(stored) == 1
    card = stored[0].read_text()
    assert "- Deployment: deployed" in card and "| openvino-int8 | 99.80% of 200 | 3.00 | 2.50 | yes |" in card
    assert client.get_model_version(MODEL_NAME, bento_server.version).description == card
    again = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           check=False, timeout=300)
    assert again.returncode == 0 and "model card was updated" not in again.stdout
