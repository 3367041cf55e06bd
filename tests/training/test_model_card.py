"""Model cards, the training data set (`mlflow.log_input`) and the champion history, against a
real MLflow server: the card of a really trained version (lineage digests and counts, the
confusion matrix), the moves of @champion through promote / post-deploy check / rollback (what
`previous_champion` picks, the history in the cards), and `catsdogs champion history | card`."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from catsdogs import cli, tracking
from catsdogs.data import lineage
from catsdogs.paths import DataPaths
from catsdogs.registry import model_card
from catsdogs.registry.history import champion_history, move_champion, previous_champion
from catsdogs.registry.names import (
    BY_POST_DEPLOY_CHECK,
    BY_PROMOTE,
    BY_ROLLBACK,
    CARD_ARTIFACT,
    CONFUSION_PICTURE,
    CONFUSION_TAG,
    DEPLOY_REASON_TAG,
    DEPLOY_STATUS_TAG,
    DEPLOY_TARGET_TAG,
    MISCLASSIFIED_ARTIFACTS,
    MISCLASSIFIED_TAG,
    ROLLED_BACK,
    SERVING_VARIANTS_TAG,
)
from catsdogs.registry.record import AliasMove, register, version_tags
from catsdogs.stages.train import SPLITS, data_hash
from tests.training.conftest import IMAGE_SIZE
from tests.training.crafted import ColourRule

NAME = "CatsDogsCNN-history-test"


def _files(paths: DataPaths) -> Counter:
    return Counter((p.parts[-3], p.parts[-2]) for split in SPLITS
                   for p in paths.split_dir(split).rglob("*.jpg"))


def test_trained_version_card_lineage_and_confusion(trained: dict, tiny_data: DataPaths,
                                                    tracking_uri: str, tmp_path: Path,
                                                    artifacts_dir: Path) -> None:
    client = MlflowClient()
    name = "CatsDogsCNN"
    run = client.get_run(trained["run_id"])

    # the data set on the run: source, digests, counts per split and class as on disk
    data = lineage.from_run(run)
    assert data is not None
    assert data.transformed_digest == data_hash(tiny_data)
    assert data.manifest_sha256 == "absent"       # the tiny layout has no prepared manifest
    assert data.source.startswith("dir:") and data.synthetic is True
    on_disk = _files(tiny_data)
    assert {(s, c): n for s, per in data.counts.items() for c, n in per.items()} == on_disk
    (logged,) = [i.dataset for i in run.inputs.dataset_inputs]
    assert (logged.name, logged.digest, logged.source_type) == (
        lineage.DATASET_NAME, data_hash(tiny_data), "local")

    # the card: the version's description and an artifact of its run, the same facts
    version = client.get_model_version(name, trained["version"])
    card = version.description
    local = client.download_artifacts(trained["run_id"], CARD_ARTIFACT, str(tmp_path))
    assert Path(local).read_text() == card
    assert card.startswith(f"# Model card: {name} v{trained['version']}")
    assert f"digest `{data_hash(tiny_data)}`" in card
    assert "Prepared manifest sha256: `absent`" in card
    for split in SPLITS:
        cat, dog = on_disk[(split, "cat")], on_disk[(split, "dog")]
        assert f"| {split} | {cat} | {dog} | {cat + dog} |" in card
    matrix = json.loads(run.data.tags[CONFUSION_TAG])["rows_true_cols_predicted"]
    assert sum(map(sum, matrix)) == on_disk[("test", "cat")] + on_disk[("test", "dog")]
    for label, row in zip(("cat", "dog"), matrix, strict=True):
        assert f"| {label} | {row[0]} | {row[1]} |" in card
    test = trained["test"]
    assert (f"{test['f1']:.4f} [{test['f1_ci_low']:.4f}, {test['f1_ci_high']:.4f}]" in card
            and f"{test['accuracy']:.4f} [{test['accuracy_ci_low']:.4f}, " in card)
    assert "| log_loss | ece |" in card and "Wilson" in card
    assert f"Calibration: T = {run.data.metrics['temperature']:.3f} fitted on the val" in card
    # the confusion matrix as a picture, and the misclassified test pictures with their heatmaps
    assert f"![Test confusion matrix]({CONFUSION_PICTURE})" in card
    assert CONFUSION_PICTURE in {a.path for a in client.list_artifacts(trained["run_id"],
                                                                       "reports")}
    found = json.loads(run.data.tags[MISCLASSIFIED_TAG])
    wrong = matrix[0][1] + matrix[1][0]
    assert found["total"] == wrong and len(found["shown"]) == min(wrong, found["limit"])
    if not wrong:
        assert "Misclassified test pictures: none." in card
    stored = {a.path for a in client.list_artifacts(trained["run_id"], MISCLASSIFIED_ARTIFACTS)}
    assert stored == {f"{MISCLASSIFIED_ARTIFACTS}/{item['image']}" for item in found["shown"]}
    confidences = [item["confidence"] for item in found["shown"]]
    assert confidences == sorted(confidences, reverse=True)
    for item in found["shown"]:
        assert item["true"] != item["predicted"] and item["confidence"] >= 0.5
        assert (tiny_data.split_dir("test") / item["file"]).is_file()
        assert item["file"].startswith(f"{item['true']}/")
        assert (f"| ![{item['file']}]({MISCLASSIFIED_ARTIFACTS}/{item['image']}) | "
                f"`{item['file']}` | {item['true']} | {item['predicted']} |") in card
    if found["shown"]:
        thumbnail = client.download_artifacts(
            trained["run_id"], f"{MISCLASSIFIED_ARTIFACTS}/{found['shown'][0]['image']}",
            str(tmp_path))
        with Image.open(thumbnail) as image:
            assert image.format == "PNG" and max(image.size) <= 160
    assert "`model.arch`=mobilenet_v2" in card and "`train.epochs`=1" in card
    assert "**Warning:**" in card and "generated stand-in pictures" in card
    assert "## Intended use" in card and "## Known limits" in card
    assert "Serving variants: not measured yet" in card
    assert "Promotion: not judged yet" in card and "Deployment: not deployed yet" in card

    # refreshing an unchanged card writes nothing; the serving variants the import measured show
    before = client.get_model_version(name, trained["version"]).last_updated_timestamp
    model_card.refresh_card(client, name, trained["version"])
    assert client.get_model_version(name, trained["version"]).last_updated_timestamp == before
    measured = {"cpu": "AMD EPYC, 2 CPUs, flags: avx2", "min_agreement": 0.995,
                "chosen": "openvino-int8", "measured": [
                    {"variant": "torch-fp32", "agreement": 1.0, "images": 400,
                     "ms_per_image": {"1": 5.39, "8": 4.28}, "adopted": True, "reason": "ref"},
                    {"variant": "openvino-int8", "agreement": 0.9975, "images": 400,
                     "ms_per_image": {"1": 3.11, "8": 2.67}, "adopted": True, "reason": "ok"}]}
    client.set_model_version_tag(name, trained["version"], SERVING_VARIANTS_TAG,
                                 json.dumps(measured))
    card = model_card.refresh_card(client, name, trained["version"])[trained["version"]]
    assert "at least 99.5% of the photos" in card and "the measured choice was `openvino-int8`" in card
    assert "| openvino-int8 | 99.75% of 400 | 3.11 | 2.67 | yes |" in card
    assert client.get_model_version(name, trained["version"]).description == card
    (artifacts_dir / "model-card-trained.md").write_text(card)


def _register(paths: DataPaths, weight: float, bias: float) -> str:
    tracking.connect(paths)
    experiment = tracking.experiment_id("Cats vs Dogs CNN", paths)
    example = np.random.default_rng(0).normal(size=(2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
    with mlflow.start_run(experiment_id=experiment):
        version = register(ColourRule(weight, bias), NAME, example,
                           version_tags(IMAGE_SIZE, ("cat", "dog"), "colour"))
    return version.version


def test_history_previous_champion_cards_and_cli(tiny_data: DataPaths, tracking_uri: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 artifacts_dir: Path) -> None:
    client = MlflowClient()
    v1, v2, v3 = (_register(tiny_data, 1, bias) for bias in (0.0, 0.1, 0.2))
    assert champion_history(client, NAME) == [] and previous_champion(client, NAME) is None

    move_champion(client, NAME, v1, reason="no champion yet", by=BY_PROMOTE)
    move_champion(client, NAME, v2, reason="f1 0.9 beats 0.8", by=BY_PROMOTE)
    assert previous_champion(client, NAME) == v1
    move_champion(client, NAME, v3, reason="f1 0.95 beats 0.9", by=BY_PROMOTE)
    assert previous_champion(client, NAME) == v2

    # the post-deploy check fails v3: tagged rolled back, @champion back to v2
    client.set_model_version_tag(NAME, v3, DEPLOY_STATUS_TAG, ROLLED_BACK)
    client.set_model_version_tag(NAME, v3, DEPLOY_REASON_TAG, "accuracy 0.41 below 0.93 - 0.05")
    client.set_model_version_tag(NAME, v3, DEPLOY_TARGET_TAG, "compose")
    move_champion(client, NAME, v2, reason="accuracy 0.41 below 0.93 - 0.05",
                  by=BY_POST_DEPLOY_CHECK)
    # v3 was rolled back: not a candidate; v2 is current: the previous one is v1
    assert previous_champion(client, NAME) == v1
    move_champion(client, NAME, v1, reason="by hand", by=BY_ROLLBACK)
    assert previous_champion(client, NAME) == v2          # v3 still skipped

    moves = champion_history(client, NAME)
    assert [(m.from_version, m.to_version, m.by) for m in moves] == [
        (None, v1, BY_PROMOTE), (v1, v2, BY_PROMOTE), (v2, v3, BY_PROMOTE),
        (v3, v2, BY_POST_DEPLOY_CHECK), (v2, v1, BY_ROLLBACK)]
    assert [m.time for m in moves] == sorted(m.time for m in moves)

    # every move refreshed both versions' cards; the deploy status shows once refreshed
    card3 = client.get_model_version(NAME, v3).description
    assert "| v2 | v3 | promote | f1 0.95 beats 0.9 |" in card3
    assert "| v3 | v2 | post-deploy check | accuracy 0.41 below 0.93 - 0.05 |" in card3
    assert "Deployment: rolled_back (on compose): accuracy 0.41 below 0.93 - 0.05" in card3
    card1 = client.get_model_version(NAME, v1).description
    assert "Now: **@champion**" in card1 and "| v2 | v1 | rollback | by hand |" in card1
    assert "Now: **@champion**" not in client.get_model_version(NAME, v2).description
    assert "No move of @champion involved this version yet" not in card1
    assert "The run logged no data set" in card1          # registered without training data
    (artifacts_dir / "model-card-history.md").write_text(card3)

    # catsdogs champion history: text and --json
    common = ["--model", NAME, "--data-dir", str(tiny_data.root)]
    assert cli.main(["champion", "history", *common]) == 0
    text = capsys.readouterr().out
    assert f"{NAME}@champion is v{v1} in {tracking_uri}; 5 moves, oldest first:" in text
    (artifacts_dir / "champion-history.txt").write_text(text)
    lines = [line for line in text.splitlines() if " -> " in line and "reason" not in line]
    assert len(lines) == 5 and "(none) -> v" + v1 in lines[0] and "rollback" in lines[-1]
    assert cli.main(["champion", "history", "--json", *common]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["champion"] == v1 and document["store"] == tracking_uri
    assert [AliasMove(**m) for m in document["moves"]] == moves

    # catsdogs champion card: the champion's by default, a given version, a missing one
    assert cli.main(["champion", "card", "--json", *common]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == v1 and document["card"] == card1
    assert cli.main(["champion", "card", "--version", v3, *common]) == 0
    assert "# Model card: " + f"{NAME} v{v3}" in capsys.readouterr().out
    assert cli.main(["champion", "card", "--version", "999", *common]) != 0
    error = capsys.readouterr().err
    assert "v999" in error and "Traceback" not in error


def test_description_fits_the_registry_with_a_long_history() -> None:
    moves = [AliasMove(f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}.000+00:00", "1", "2",
                       "x" * 120, BY_ROLLBACK) for i in range(80)]
    facts = model_card.CardFacts(
        name="M", version="2", run_id="r", experiment_id="1", registered="2026-01-01T00:00:00",
        aliases=("champion",), tags={"arch": "resnet18"}, params={}, metrics={}, data=None,
        confusion=None, moves=moves)
    full, short = model_card.render(facts), model_card.description(facts)
    assert len(full) > model_card.DESCRIPTION_LIMIT >= len(short)
    assert full.count("| rollback |") == 80
    assert short.count("| rollback |") == model_card.SHORT_HISTORY
    assert "75 earlier moves" in short and CARD_ARTIFACT in short


def test_card_shows_the_production_pictures_of_the_training_data() -> None:
    from catsdogs.data.lineage import TrainingData

    production = {"per_split": {"production_test": 5, "train": 17, "val": 2},
                  "labelled_from": "2026-03-01T08:00:00+00:00",
                  "labelled_to": "2026-03-02T09:00:00+00:00"}
    data = TrainingData(source="dir:/x", synthetic=False, manifest_sha256="m",
                        transformed_digest="d", counts={"train": {"cat": 9, "dog": 8}},
                        production=production)
    assert TrainingData.from_profile(data.profile()) == data   # the MLflow profile round trip
    facts = model_card.CardFacts(
        name="M", version="2", run_id="r", experiment_id="1", registered="2026-01-01T00:00:00",
        aliases=(), tags={}, params={}, metrics={}, data=data, confusion=None, moves=[])
    assert ("- From production: 19 training pictures (train 17, val 2) labelled from "
            "2026-03-01T08:00:00+00:00 to 2026-03-02T09:00:00+00:00; 5 held out as the "
            "recent-production test set") in model_card.render(facts)
    older = TrainingData.from_profile({k: v for k, v in data.profile().items()
                                       if k != "production"})   # a run logged before it
    assert "- From production: none" in model_card.render(
        dataclasses.replace(facts, data=older))


def test_misclassified_most_confident_first_within_the_limit(tmp_path: Path) -> None:
    from catsdogs.training.model import build_model
    from catsdogs.training.reports import misclassified

    torch.manual_seed(0)
    net = build_model("mobilenet_v2", weights="none")
    pixels = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, size=(5, 3, 32, 32), dtype=np.uint8))
    labels, probs = [0, 0, 1, 1, 0], [0.9, 0.2, 0.1, 0.6, 0.55]   # 0, 2 and 4 are wrong
    names = ["cat/a.jpg", "cat/b.jpg", "dog/c.jpg", "dog/d.jpg", "cat/e.jpg"]
    found = misclassified(net, pixels, labels, probs, names, tmp_path / "wrong", limit=2)
    assert found["total"] == 3 and found["limit"] == 2
    assert found["shown"] == [
        {"file": "cat/a.jpg", "true": "cat", "predicted": "dog", "confidence": 0.9,
         "image": "01-cat-as-dog.png"},
        {"file": "dog/c.jpg", "true": "dog", "predicted": "cat", "confidence": 0.9,
         "image": "02-dog-as-cat.png"}]
    assert sorted(p.name for p in (tmp_path / "wrong").iterdir()) == [
        "01-cat-as-dog.png", "02-dog-as-cat.png"]
    with Image.open(tmp_path / "wrong" / "01-cat-as-dog.png") as image:
        shown = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert shown.shape == (32, 32, 3)
    assert np.abs(shown - pixels[0].numpy().transpose(1, 2, 0)).mean() > 5   # heatmap drawn
    assert not list(net.modules())[-1]._forward_hooks          # the network itself untouched
    none = misclassified(net, pixels, [1, 0, 0, 1, 1], probs, names, tmp_path / "none")
    assert none == {"total": 0, "limit": 8, "shown": []}


def test_card_shows_the_known_out_of_distribution_pictures() -> None:
    """The OOD calibration's "neither" pictures (`ood.calibrate`): a line with how many and the
    share flagged, whether they moved the threshold; none for a run without them."""
    metrics = {"test_accuracy": 0.9, "ood_threshold": 12.5}
    facts = model_card.CardFacts(
        name="M", version="2", run_id="r", experiment_id="1", registered="2026-01-01T00:00:00",
        aliases=(), tags={}, params={}, metrics=metrics, data=None, confusion=None, moves=[])
    assert "known out-of-distribution" not in model_card.render(facts)
    few = metrics | {"ood_known_pictures": 7, "ood_known_used": 0.0,
                     "ood_known_flagged_share": 4 / 7}
    assert ("Out-of-distribution threshold: 12.50, calibrated with 7 known out-of-distribution "
            "('neither'-labelled production) pictures (too few to move it: "
            "train.ood_min_known); it flags 57.1% of them.") in model_card.render(
        dataclasses.replace(facts, metrics=few))
    used = few | {"ood_known_pictures": 40, "ood_known_used": 1.0, "ood_known_flagged_share": 0.95}
    assert ("calibrated with 40 known out-of-distribution ('neither'-labelled production) "
            "pictures (used); it flags 95.0% of them.") in model_card.render(
        dataclasses.replace(facts, metrics=used))
