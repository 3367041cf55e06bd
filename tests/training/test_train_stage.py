"""The train stage against a real MLflow server: metrics, artefacts, registry, reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from catsdogs.errors import UserError
from catsdogs.stages import train
from tests.servers import free_port
from tests.training.conftest import IMAGE_SIZE, tiny_params

EPOCH_METRICS = ("train_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                 "val_roc_auc")
TEST_METRICS = tuple(f"test_{name}{suffix}" for name in ("accuracy", "precision", "recall", "f1",
                                                         "roc_auc", "log_loss", "ece")
                     for suffix in ("", "_ci_low", "_ci_high"))
ARTEFACTS = ("reports/confusion_matrix.png", "reports/roc_curve.png",
             "reports/classification_report.txt", "reports/model_performance_report.md",
             "validation/summary.json", "eda/class_balance.json")


def _all_artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path or None):
        found |= _all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_run_logs_params_metrics_tags_and_artefacts(trained: dict, tiny_data,
                                                    tracking_uri: str) -> None:
    client = MlflowClient()
    run = client.get_run(trained["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "Cats vs Dogs CNN"
    expected_params = {k: str(v) for k, v in tiny_params().flat().items()} | {
        "train_production_pictures": "0", "train_production_share": "0.0",
        "train_production_drawn_share": "0.0"}      # no labelled production picture here
    assert run.data.params == expected_params
    assert trained["production_weight"] == 1.0 and trained["train_production_share"] == 0.0
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [point.step for point in history] == [1], name
    for name in TEST_METRICS:
        expected = trained["test"][name[5:]]
        if expected is None:      # undefined (a 1-epoch model may call nothing a dog): not logged
            assert name not in run.data.metrics, name
        else:
            assert run.data.metrics[name] == pytest.approx(expected), name
    assert {f"test_{m}{s}" for m in ("accuracy", "f1", "log_loss", "ece")       # always defined
            for s in ("", "_ci_low", "_ci_high")} <= set(run.data.metrics)
    assert run.data.metrics["temperature"] > 0 and "val_log_loss_after" in run.data.metrics
    for tag in ("device", "precision", "data.manifest_sha256", "data.transformed_sha256",
                "git.commit"):
        assert run.data.tags.get(tag), tag
    assert run.data.tags["device"] == "cpu"
    assert run.data.tags["data.synthetic"] == "true"  # build_transformed's set is generated
    assert run.data.tags["data.source"].startswith("dir:/")
    artefacts = _all_artifacts(client, run.info.run_id)
    assert set(ARTEFACTS) <= artefacts
    assert (Path(tiny_data.eda) / ".stamp.json").exists()
    assert not [path for path in artefacts if Path(path).name.startswith(".")], artefacts
    report = client.download_artifacts(run.info.run_id, "reports/model_performance_report.md")
    text = Path(report).read_text()
    assert "Best epoch by validation F1: 1" in text and "| f1 |" in text
    assert "| metric | value | 95% interval |" in text and "Wilson score" in text


def test_registered_version_has_challenger_alias_and_metadata(trained: dict,
                                                              tracking_uri: str) -> None:
    from catsdogs.registry.record import resolve

    version = MlflowClient().get_model_version_by_alias("CatsDogsCNN", "challenger")
    assert version.version == trained["version"]
    assert version.run_id == trained["run_id"]
    ref = resolve(MlflowClient(), "models:/CatsDogsCNN@challenger")
    assert (ref.version, ref.run_id, ref.image_size, ref.classes) == (
        trained["version"], trained["run_id"], IMAGE_SIZE, ("cat", "dog"))
    run_tags = MlflowClient().get_run(trained["run_id"]).data.tags
    assert version.tags["data.synthetic"] == "true"
    assert version.tags["data.source"] == run_tags["data.source"]
    assert ref.data is not None and ref.data.synthetic
    assert ref.data.source == run_tags["data.source"]
    assert "generated stand-in" in ref.data.note() and "KAGGLE_USERNAME" in ref.data.note()


@pytest.mark.parametrize("batch", [1, 7])
def test_model_reloads_from_registry_for_any_batch_size(trained: dict, tracking_uri: str,
                                                        batch: int) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch

    model = mlflow.pytorch.load_model("models:/CatsDogsCNN@challenger").eval()
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        probs = torch.softmax(model(images), dim=1)
    assert probs.shape == (batch, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(batch), atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model("models:/CatsDogsCNN@challenger")
    logits = np.asarray(pyfunc.predict(images.numpy()))
    assert logits.shape == (batch, 2)


def test_the_safe_load_gives_the_pickled_network_s_answers(trained: dict,
                                                          tracking_uri: str) -> None:
    """`load_model` (the arch built from code, the safetensors weights: nothing unpickled) is the
    network MLflow's pickle holds: the same logits for the same pictures."""
    import mlflow.pytorch

    from catsdogs.registry.record import load_model, resolve

    record = resolve(MlflowClient(), "models:/CatsDogsCNN@challenger")
    safe = load_model(record, torch.device("cpu"))
    pickled = mlflow.pytorch.load_model(record.uri).eval()
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        assert torch.equal(safe(images), pickled(images))


def test_same_data_and_params_is_skipped(trained: dict, tiny_data, tracking_uri: str) -> None:
    summary = train.run(tiny_params(), tiny_data)
    assert summary.skipped
    assert summary.details["run_id"] == trained["run_id"]


def test_unreachable_tracking_server_fails_fast_naming_it(tiny_data, monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(UserError, match=f"MLflow tracking server {url} is not reachable"):
        train.run(tiny_params(), tiny_data, force=True)
