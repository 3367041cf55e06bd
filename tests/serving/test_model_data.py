"""The served model says what it was trained on: a model trained on the generated stand-in set
(the demo without Kaggle credentials) is called out on /model, in the service log and on the web
page, with how to get a real one; the registry helper the demo summary uses reads the same tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from catsdogs import tracking
from catsdogs.data.provenance import Provenance
from catsdogs.paths import DataPaths
from catsdogs.registry.names import CHAMPION
from catsdogs.registry.record import find
from tests.browser import chromium_page
from tests.serving.conftest import DATA_SOURCE, MODEL_NAME, BentoServer

pytestmark = pytest.mark.services


def test_model_endpoint_and_log_say_generated_data(bento_server: BentoServer) -> None:
    info = requests.get(f"{bento_server.url}/model", timeout=30).json()
    assert info["version"] == bento_server.version
    data = info["data"]
    assert (data["source"], data["synthetic"]) == (DATA_SOURCE, True)
    assert "generated stand-in pictures" in data["note"] and "not on real photos" in data["note"]
    assert "KAGGLE_USERNAME" in data["note"] and "DEMO_SOURCE=dir:" in data["note"]
    assert "generated stand-in pictures" in bento_server.log_file.read_text()


def test_champion_data_helper_reads_the_registry(bento_server: BentoServer, tracking_uri: str,
                                                 tmp_path: Path) -> None:
    tracking.connect(DataPaths(tmp_path))
    client = MlflowClient()
    assert find(client, MODEL_NAME, CHAMPION).data == Provenance(DATA_SOURCE, True)
    assert find(client, "NoSuchModel", CHAMPION) is None


@pytest.mark.browser
def test_page_warns_about_a_generated_stand_in_model(bento_server: BentoServer,
                                                     artifacts_dir: Path) -> None:
    real = {"name": MODEL_NAME, "version": "7", "run_id": "r", "classes": ["cat", "dog"],
            "data": Provenance("kaggle:owner/cats-and-dogs", False).as_dict()}
    with chromium_page(900, 700) as page:
        page.goto(bento_server.url + "/")
        page.wait_for_selector("#data-note:not([hidden])", timeout=30_000)
        note = page.text_content("#data-note") or ""
        assert "generated stand-in pictures" in note and "KAGGLE_USERNAME" in note
        assert "GENERATED" in (page.text_content("#model-data") or "")
        page.screenshot(path=str(artifacts_dir / "serving-web-page-generated-data.png"),
                        full_page=True)

        # the same page for a model trained on real data: no warning, the source named
        page.route("**/model", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(real)))
        page.reload()
        page.wait_for_function(
            "document.getElementById('model-data').textContent.includes('kaggle:')")
        assert page.is_hidden("#data-note")
        assert "v7" in (page.text_content("#model-version") or "")
