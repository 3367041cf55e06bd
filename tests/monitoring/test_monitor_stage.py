"""`catsdogs monitor` against a real MLflow server, a SQLite prediction log written through the
log's own table, and a real Pushgateway: the report lands in the data dir and MLflow, the scores
in the Pushgateway, a window already checked is up to date, too few rows is a clear skip, and a
missing reference or an unreachable log is a UserError naming the fix. The rows are generated
(a shifted Gaussian embedding, darker pictures): this tests the stage; the drift method itself
is proven on real photos in test_drift_proof.py."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from catsdogs.cli import main
from catsdogs.config import load_params
from catsdogs.errors import UserError
from catsdogs.monitoring.prediction_log import default_url, read_predictions
from catsdogs.paths import DataPaths
from catsdogs.stages import monitor
from tests.conftest import REPO_ROOT
from tests.monitoring.logs import (
    MODEL,
    ensure_registered,
    generated_rows,
    pushgateway,
    register_with_reference,
    scrape,
    write_log,
)


def _reference() -> object:
    import pandas as pd

    val = generated_rows(200, seed=1).assign(split="val")
    train = generated_rows(200, shift=3.0, seed=2).assign(split="train")  # must not be used
    return pd.concat([train, val], ignore_index=True)


pytestmark = pytest.mark.services


@pytest.fixture
def params():
    return load_params(REPO_ROOT / "params.yaml")


def test_too_few_predictions_is_a_clear_skip(tmp_path: Path, capsys) -> None:
    paths = DataPaths(tmp_path / "data")
    write_log(default_url(paths.root), generated_rows(10), "1")
    code = main(["monitor", "--data-dir", str(paths.root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["skipped"] is True and out["drift_detected"] is False
    assert out["reason"] == "not_enough_rows" and out["rows"] == 10
    assert "not enough predictions" in out["message"] and "monitor.min_rows" in out["message"]
    assert not (paths.root / "reports" / "monitoring").exists()


def test_a_probes_repeats_count_once_in_the_window(tmp_path: Path, capsys) -> None:
    """10 pictures and one photo sent 100 times: 11 distinct pictures, below min_rows."""
    import pandas as pd

    paths = DataPaths(tmp_path / "data")
    distinct = generated_rows(10, seed=7).assign(content_hash=[f"h{i}" for i in range(10)])
    probe = generated_rows(1, seed=8).assign(content_hash="probe")
    write_log(default_url(paths.root), pd.concat([distinct, *[probe] * 100],
                                                 ignore_index=True), "1")
    assert main(["monitor", "--data-dir", str(paths.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "not_enough_rows"
    assert (out["rows"], out["duplicate_rows"]) == (11, 99)


def test_clean_then_drifted_window(tmp_path: Path, tracking_uri: str, params, monkeypatch) -> None:
    version = register_with_reference(_reference())
    clean = DataPaths(tmp_path / "clean")
    write_log(default_url(clean.root), generated_rows(80, seed=3), version)
    with pushgateway(tmp_path) as gateway:
        monkeypatch.setenv(monitor.PUSHGATEWAY_ENV, gateway)
        summary = monitor.run(params, clean).to_dict()
        assert summary["drift_detected"] is False and summary["model_version"] == version
        assert summary["rows"] == 80 and summary["reference_rows"] == 200  # the val rows only
        assert summary["pushed"] is True
        assert summary["queued_for_review"] == 0   # no drift: nothing asks for labels
        report = Path(summary["report"])
        assert report.is_file() and report.parent == clean.root / "reports" / "monitoring"
        assert "Drift in embeddings 'embedding'" in report.read_text()  # Evidently's report
        metrics = scrape(gateway)
        assert f'catsdogs_drift_detected{{instance="",job="catsdogs_monitor",model_name="{MODEL}"'\
               f',model_version="{version}"}} 0' in metrics
        assert 'signal="embedding"' in metrics

        again = monitor.run(params, clean).to_dict()
        assert again["skipped"] is True and again["run_id"] == summary["run_id"]

        drifted = DataPaths(tmp_path / "drifted")
        # the service kept a share of the window briefly (`recent`): the drift event queues them
        shifted = generated_rows(80, shift=1.5, seed=4).assign(
            kept_for=[("recent" if i % 4 == 0 else None) for i in range(80)],
            picture=[(f"/pictures/{i}.jpg" if i % 4 == 0 else None) for i in range(80)])
        write_log(default_url(drifted.root), shifted, version)
        found = monitor.run(params, drifted).to_dict()
        assert found["drift_detected"] is True
        assert found["queued_for_review"] == 20
        assert "20 pictures of the window queued for review" in found["message"]
        assert read_predictions(default_url(drifted.root))["kept_for"].value_counts().to_dict(
        ) == {"drift": 20}
        assert found["signals"]["embedding"]["drifted"] is True
        assert found["signals"]["brightness"]["drifted"] is True
        assert "DRIFT detected" in found["message"]
        assert f'catsdogs_drift_detected{{instance="",job="catsdogs_monitor",model_name="{MODEL}"'\
               f',model_version="{version}"}} 1' in scrape(gateway)

    run = MlflowClient().get_run(found["run_id"])
    assert run.data.metrics["drift.detected"] == 1.0
    assert run.data.metrics["drift.score"] == pytest.approx(found["drift_score"])
    assert run.data.tags["model_version"] == version
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == f"{params.mlflow.experiment_name} monitoring"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "monitoring")}
    assert "monitoring/drift.json" in artifacts
    assert any(path.endswith(".html") for path in artifacts)


def test_no_pushgateway_configured_is_a_log_line(tmp_path, tracking_uri, params, monkeypatch,
                                                 caplog) -> None:
    monkeypatch.delenv(monitor.PUSHGATEWAY_ENV, raising=False)
    version = register_with_reference(_reference())
    paths = DataPaths(tmp_path / "data")
    write_log(default_url(paths.root), generated_rows(60, seed=5), version)
    with caplog.at_level("INFO"):
        summary = monitor.run(params, paths).to_dict()
    assert summary["pushed"] is False
    assert "CATSDOGS_PUSHGATEWAY_URL is not set" in caplog.text


def test_a_version_without_reference_names_the_fix(tmp_path, tracking_uri, params) -> None:
    mlflow.set_experiment("monitor tests")
    with mlflow.start_run() as run:
        mlflow.log_param("old", "version")
    version = ensure_registered().create_model_version(  # type: ignore[attr-defined]
        MODEL, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version
    paths = DataPaths(tmp_path / "data")
    write_log(default_url(paths.root), generated_rows(60), str(version))
    with pytest.raises(UserError, match="no reference profile.*catsdogs train"):
        monitor.run(params, paths)


def test_an_unreachable_log_is_a_user_error_without_its_password(tmp_path, params) -> None:
    url = "postgresql+psycopg2://monitor:s3cretpw@127.0.0.1:1/monitoring"
    with pytest.raises(UserError) as caught:
        monitor.run(params, DataPaths(tmp_path), log_url=url)
    assert "unreadable" in str(caught.value) and "s3cretpw" not in str(caught.value)
