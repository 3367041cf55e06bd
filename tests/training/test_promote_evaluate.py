"""Promotion against a real MLflow server, and `catsdogs evaluate` (JSON checked with sklearn)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn import metrics as sk

from catsdogs import cli, tracking
from catsdogs.paths import DataPaths
from catsdogs.registry.names import CHAMPION
from catsdogs.registry.record import find, register, version_tags
from catsdogs.stages import evaluate, promote
from tests.training.conftest import IMAGE_SIZE, tiny_params
from tests.training.crafted import ColourRule

NAME = "CatsDogsCNN-promotion-test"


def _register(model: ColourRule, paths: DataPaths, name: str = NAME) -> str:
    """Log and register `model` as a new @challenger of `name`, like the train stage does."""
    tracking.connect(paths)
    experiment = tracking.experiment_id("Cats vs Dogs CNN", paths)
    example = np.random.default_rng(0).normal(size=(2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
    with mlflow.start_run(experiment_id=experiment):
        version = register(model, name, example, version_tags(IMAGE_SIZE, ("cat", "dog"), "colour"))
    return version.version


def _champion() -> str | None:
    found = find(MlflowClient(), NAME, CHAMPION)
    return None if found is None else found.version


@pytest.mark.usefixtures("pickled_models_allowed")
def test_promotes_first_refuses_worse_promotes_better(tiny_data: DataPaths,
                                                      tracking_uri: str) -> None:
    params = tiny_params(f"mlflow.registered_model_name={NAME}")
    client = MlflowClient()

    first = _register(ColourRule(weight=0, bias=1), tiny_data)          # always "dog": F1 2/3
    summary = promote.run(params, tiny_data)
    assert summary.details["promoted"] and summary.details["champion_score"] is None
    assert _champion() == first
    assert client.get_model_version(NAME, first).tags["promotion.reason"] == "no champion yet"

    worse = _register(ColourRule(weight=0, bias=-1), tiny_data)         # always "cat": F1 0
    summary = promote.run(params, tiny_data)
    assert not summary.details["promoted"]
    assert _champion() == first
    tags = client.get_model_version(NAME, worse).tags
    assert tags["promotion.decision"] == "rejected"
    assert float(tags["promotion.challenger_score"]) == 0.0
    assert float(tags["promotion.champion_score"]) == pytest.approx(2 / 3, abs=1e-4)
    run_tags = client.get_run(client.get_model_version(NAME, worse).run_id).data.tags
    assert run_tags["promotion.decision"] == "rejected"
    assert run_tags["promotion.reason"] == tags["promotion.reason"]
    card = client.get_model_version(NAME, worse).description     # its model card says so too
    assert f"Promotion: rejected by `f1` (min_delta 0.0, against v{first})" in card
    # The same comparison again is up to date (idempotent): no re-scoring, the same answer.
    again = promote.run(params, tiny_data)
    assert again.skipped and not again.details["promoted"]
    assert "already rejected against champion" in again.message and _champion() == first
    # A different margin is a different question: judged again.
    assert not promote.run(tiny_params(f"mlflow.registered_model_name={NAME}",
                                       "promote.min_delta=0.01"), tiny_data).skipped

    better = _register(ColourRule(weight=1, bias=0), tiny_data)         # the colour rule
    summary = promote.run(params, tiny_data)
    assert summary.details["promoted"]
    assert summary.details["challenger_score"] > summary.details["champion_score"]
    assert _champion() == better
    assert promote.run(params, tiny_data).skipped                       # already champion

    result = evaluate.evaluate(params, tiny_data, tiny_data.split_dir("test"), None)
    assert result["model"] == f"models:/{NAME}@champion" and result["version"] == better


def test_decide_needs_a_gain_above_min_delta() -> None:
    assert promote.decide(0.90, None, 0.0, "f1")[0]
    assert promote.decide(0.91, 0.90, 0.0, "f1")[0]
    assert not promote.decide(0.90, 0.90, 0.0, "f1")[0]
    assert not promote.decide(0.91, 0.90, 0.02, "f1")[0]


def test_two_yardsticks_no_regression_on_either_and_a_gain_on_one() -> None:
    # a gain on recent production with the fixed split equal: promoted
    promoted, reason = promote.decide(0.90, 0.90, 0.0, "f1", production=(0.85, 0.70))
    assert promoted and "on recent production and regresses on neither" in reason
    # better on the fixed split but worse on recent production: rejected, and the other way
    promoted, reason = promote.decide(0.95, 0.90, 0.0, "f1", production=(0.69, 0.70))
    assert not promoted and "regresses on recent production" in reason
    assert not promote.decide(0.89, 0.90, 0.0, "f1", production=(0.99, 0.70))[0]
    # equal on both: no gain, not promoted; a drill's negative margin allows a small drop
    assert not promote.decide(0.90, 0.90, 0.0, "f1", production=(0.70, 0.70))[0]
    assert promote.decide(0.89, 0.90, -0.02, "f1", production=(0.69, 0.70))[0]


@pytest.mark.usefixtures("pickled_models_allowed")
def test_recent_production_is_a_second_yardstick(tiny_data: DataPaths, tracking_uri: str,
                                                  tmp_path) -> None:
    """transformed/production_test holds the test pictures under the other label (what users
    now send, where the colour rule is wrong): the colour rule, better on the fixed split,
    regresses there and is rejected; with fewer pictures than feedback.min_holdout it is judged
    on the fixed split alone and promoted."""
    import shutil

    from catsdogs.data.feedback import HELD_OUT

    name = f"{NAME}-production"
    data = DataPaths(tmp_path / "data")
    shutil.copytree(tiny_data.root, data.root)
    for label, other in (("cat", "dog"), ("dog", "cat")):
        shutil.copytree(tiny_data.split_dir("test") / label, data.split_dir(HELD_OUT) / other)
    pictures = promote.production_pictures(data)
    assert pictures == sum(1 for p in tiny_data.split_dir("test").rglob("*.jpg"))
    client = MlflowClient()
    two = tiny_params(f"mlflow.registered_model_name={name}",
                      f"feedback.min_holdout={pictures}")
    first = _register(ColourRule(weight=0, bias=1), data, name)        # always "dog"
    assert promote.run(two, data).details["production"]["judged"] is False   # no champion

    colour = _register(ColourRule(weight=1, bias=0), data, name)
    summary = promote.run(two, data).details
    assert not summary["promoted"] and summary["production"]["judged"] is True
    assert summary["challenger_score"] > summary["champion_score"]      # the fixed split
    production = summary["production"]
    assert production["challenger_score"] < production["champion_score"]
    assert "regresses on recent production" in summary["reason"]
    tags = client.get_model_version(name, colour).tags
    assert tags["promotion.production_pictures"] == str(pictures)
    assert float(tags["promotion.production_challenger_score"]) == pytest.approx(
        production["challenger_score"], abs=1e-6)
    card = client.get_model_version(name, colour).description
    assert f"Recent-production test set: {pictures} pictures; `f1`" in card
    assert find(client, name, CHAMPION).version == first
    assert promote.run(two, data).skipped   # the same question again: up to date
    extra = data.split_dir(HELD_OUT) / "cat" / "extra.jpg"   # a grown production set: judged again
    shutil.copyfile(next((data.split_dir(HELD_OUT) / "cat").glob("*.jpg")), extra)
    assert not promote.run(two, data).skipped
    extra.unlink()

    again = _register(ColourRule(weight=1, bias=0), data, name)
    one = tiny_params(f"mlflow.registered_model_name={name}",
                      f"feedback.min_holdout={pictures + 1}")
    summary = promote.run(one, data).details
    assert summary["promoted"] and summary["production"]["judged"] is False
    assert f"{pictures} pictures, fewer than feedback.min_holdout={pictures + 1}" in \
        summary["production"]["note"]
    assert find(client, name, CHAMPION).version == again
    assert "not judged (too few, or no champion)" in client.get_model_version(
        name, again).description


def test_evaluate_json_matches_sklearn(trained: dict, tiny_data: DataPaths, tracking_uri: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`catsdogs evaluate --json` on a folder: its metrics equal sklearn's on its predictions."""
    test_dir = tiny_data.split_dir("test")
    code = cli.main(["evaluate", "--images", str(test_dir), "--model",
                     f"models:/CatsDogsCNN/{trained['version']}", "--json",
                     "--data-dir", str(tiny_data.root), "--set", "train.num_workers=0"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)            # nothing but the JSON on stdout
    assert result["store"] == tracking_uri                  # the store it read
    labels = [int(p["label"] == "dog") for p in result["predictions"]]
    probs = [p["prob_dog"] for p in result["predictions"]]
    predicted = [int(p["predicted"] == "dog") for p in result["predictions"]]
    assert predicted == [int(p >= 0.5) for p in probs]
    assert result["count"] == len(list(test_dir.rglob("*.jpg"))) == len(labels)
    expected = {
        "accuracy": sk.accuracy_score(labels, predicted),
        "precision": sk.precision_score(labels, predicted, zero_division=0),
        "recall": sk.recall_score(labels, predicted, zero_division=0),
        "f1": sk.f1_score(labels, predicted, zero_division=0),
        "roc_auc": sk.roc_auc_score(labels, probs),
    }
    assert result["metrics"] == pytest.approx(expected)
    assert result["confusion_matrix"]["rows_true_cols_predicted"] == \
        sk.confusion_matrix(labels, predicted).tolist()


def test_evaluate_refuses_a_folder_without_class_folders(tmp_path, tracking_uri: str) -> None:
    from catsdogs.errors import UserError

    with pytest.raises(UserError, match="no images found"):
        evaluate.evaluate(tiny_params(), DataPaths(tmp_path), tmp_path,
                          "models:/CatsDogsCNN@challenger")
