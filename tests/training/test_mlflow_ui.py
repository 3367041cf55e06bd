"""Links into the MLflow 3.17 UI open the runs view, not the GenAI pages: the experiment link
printed by the train stage and the run link, in headless Debian chromium against the real
server. A screenshot of each goes to test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from catsdogs import tracking
from catsdogs.paths import DataPaths
from tests.browser import chromium_page

pytestmark = [pytest.mark.browser, pytest.mark.services]
GENAI_ONLY = "Observability"  # a side-navigation heading only the GenAI pages have


@pytest.fixture
def page() -> Iterator:
    with chromium_page(1280, 800) as page:
        yield page


def test_experiment_and_run_links_open_the_runs_view(page, trained: dict, tracking_uri: str,
                                                     artifacts_dir: Path) -> None:
    run = MlflowClient().get_run(trained["run_id"])
    experiment = run.info.experiment_id
    assert tracking.ui_base_url() == tracking_uri

    page.goto(tracking.experiment_url(tracking_uri, experiment))
    page.wait_for_selector(f"text={run.info.run_name}", timeout=60_000)  # the runs table
    page.screenshot(path=str(artifacts_dir / "mlflow-experiment-link.png"))
    assert GENAI_ONLY not in page.inner_text("body")

    page.goto(tracking.run_url(tracking_uri, experiment, run.info.run_id))
    page.wait_for_selector("text=test_f1", timeout=60_000)  # the run's metrics
    assert run.info.run_name in page.inner_text("body")
    assert GENAI_ONLY not in page.inner_text("body")
    page.screenshot(path=str(artifacts_dir / "mlflow-run-link.png"))


def test_experiments_are_tagged_machine_learning(tracking_uri: str, tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    tracking.connect(paths)
    created = tracking.experiment_id("links: created by catsdogs", paths)
    older = mlflow.create_experiment("links: created before the tag")  # e.g. by an older version
    assert tracking.experiment_id("links: created before the tag", paths) == older
    for experiment in (created, older):
        tags = MlflowClient().get_experiment(experiment).tags
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_version_page_shows_the_model_card_and_run_page_the_data_set(
        page, trained: dict, tracking_uri: str, artifacts_dir: Path) -> None:
    """The card is the version's description (rendered markdown on its page); the training data
    set logged with `mlflow.log_input` is on the run page."""
    from catsdogs.data.lineage import DATASET_NAME

    page.goto(f"{tracking_uri}/#/models/CatsDogsCNN/versions/{trained['version']}")
    page.wait_for_selector(f"text=Model card: CatsDogsCNN v{trained['version']}", timeout=60_000)
    body = page.inner_text("body")
    assert "Training data" in body and "Promotion and deployment" in body
    page.screenshot(path=str(artifacts_dir / "mlflow-version-model-card.png"), full_page=True)

    run = MlflowClient().get_run(trained["run_id"])
    page.goto(tracking.run_url(tracking_uri, run.info.experiment_id, run.info.run_id))
    page.wait_for_selector(f"text={DATASET_NAME}", timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "mlflow-run-data-set.png"), full_page=True)
