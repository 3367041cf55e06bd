"""The review queue against a real SQLite prediction log written by the real writer: the keeping
policy and why each picture was kept, the queue's order, picture retention (the file goes with
its row or when its time is up), a drift event's promotion, and the Label Studio round trip
through the `catsdogs review` command."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest

from catsdogs.cli import main
from catsdogs.config import ReviewParams, load_params
from catsdogs.errors import UserError
from catsdogs.monitoring import prediction_log
from catsdogs.monitoring.keeping import keep_reason
from catsdogs.monitoring.prediction_log import (
    PREDICTIONS,
    PredictionLog,
    PredictionRecord,
    default_url,
    make_engine,
    read_predictions,
)
from catsdogs.monitoring.review import (
    LABEL_CONFIG,
    labels_from_label_studio,
    picture_of,
    promote_drift,
    queue,
    queue_size,
)
from tests.conftest import REPO_ROOT

POLICY = ReviewParams(low_confidence=0.7, keep_ood=True, random_share=0.1, recent_share=0.2,
                      recent_hours=48, retention_days=30)


def test_params_yaml_and_the_defaults_agree() -> None:
    """The service falls back on the section's defaults where no params file is mounted."""
    assert load_params(REPO_ROOT / "params.yaml").review == ReviewParams()


@pytest.mark.parametrize(("confidence", "inside", "draw", "share", "reason"), [
    (0.99, False, 0.9, None, "ood"),             # out of distribution, whatever else
    (0.55, True, 0.9, None, "low_confidence"),
    (0.55, None, 0.9, None, "low_confidence"),   # no OOD calibration: confidence decides
    (0.99, True, 0.05, None, "random"),
    (0.99, True, 0.25, None, "recent"),          # 0.1 <= draw < 0.1 + 0.2
    (0.99, True, 0.5, None, None),               # no reason: no picture
    (0.99, True, 0.999, 1.0, "random"),          # CATSDOGS_PREDICTION_LOG_SAMPLE_RATE=1 keeps all
    (0.99, True, 0.05, 0.0, "recent"),           # share 0: the draw falls in recent
])
def test_the_first_reason_that_holds_keeps_the_picture(confidence, inside, draw, share,
                                                       reason) -> None:
    assert keep_reason(POLICY, confidence, inside, share, draw) == reason


def test_a_policy_that_keeps_nothing_keeps_nothing() -> None:
    none = ReviewParams(low_confidence=0, keep_ood=False, random_share=0, recent_share=0)
    assert {keep_reason(none, c, i) for c in (0.5, 0.99) for i in (True, False, None)} == {None}


def _record(seed: int, confidence: float, kept_for: str | None, when: dt.datetime | None = None,
            inside: bool | None = True, version: str = "3") -> PredictionRecord:
    rng = np.random.default_rng(seed)
    return PredictionRecord(
        time=when or dt.datetime.now(dt.UTC), model_name="CatsDogsCNN", model_version=version,
        label="cat", confidence=confidence, width=64, height=64, format="JPEG",
        pixels=rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), embedding=None,
        ood_score=None, in_distribution=inside, kept_for=kept_for,
        picture=f"picture {seed}".encode() if kept_for else None)


def _write(url: str, folder: Path, records: list[PredictionRecord], **options: object
           ) -> list[str]:
    writer = PredictionLog(url, batch_rows=100, flush_s=0.1, policy=POLICY, sample_dir=folder,
                           **options).start()  # type: ignore[arg-type]
    for record in records:
        assert writer.submit(record)
    writer.close()
    return [r.prediction_id for r in records]


def test_the_queue_is_most_useful_first_and_leaves_labelled_and_recent_out(
        tmp_path: Path) -> None:
    url, folder = default_url(tmp_path), tmp_path / "pictures"
    ids = _write(url, folder, [
        _record(0, 0.95, "random"), _record(1, 0.65, "low_confidence"),
        _record(2, 0.55, "low_confidence"), _record(3, 0.97, "ood", inside=False),
        _record(4, 0.9, "drift"), _record(5, 0.9, "recent"), _record(6, 0.6, "low_confidence"),
        _record(7, 0.9, None)])
    engine = make_engine(url)
    assert prediction_log.record_label(engine, ids[6], "dog", dt.datetime.now(dt.UTC))
    order = [item.prediction_id for item in queue(engine)]
    # ood, then low_confidence lowest first, then drift, then random; labelled and recent not
    assert order == [ids[3], ids[2], ids[1], ids[4], ids[0]]
    assert queue_size(engine) == {"ood": 1, "low_confidence": 2, "drift": 1, "random": 1}
    assert [item.prediction_id for item in queue(engine, labelled=True)] == [ids[6]]
    assert picture_of(engine, ids[2], folder).read_bytes() == b"picture 2"
    assert picture_of(engine, ids[7], folder) is None           # nothing kept
    assert picture_of(engine, "0" * 32, folder) is None         # no such row
    assert picture_of(engine, ids[2], tmp_path / "elsewhere") is None  # only under the root
    engine.dispose()


@pytest.fixture
def just_booted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's hourly pass is due at its first write (as on a freshly booted machine)."""
    real, started = time.monotonic, time.monotonic()
    monkeypatch.setattr(prediction_log.time, "monotonic", lambda: 10.0 + real() - started)


def test_pictures_go_when_their_time_is_up_or_with_their_row(tmp_path: Path,
                                                             just_booted: None) -> None:
    """A writer's first write runs the hourly pass: rows written now, then aged in the store,
    lose their pictures (file and link) at the next writer's first write."""
    url, folder = default_url(tmp_path), tmp_path / "pictures"
    ids = _write(url, folder, [_record(0, 0.9, "recent"), _record(1, 0.9, "recent"),
                               _record(2, 0.5, "low_confidence"),
                               _record(3, 0.5, "low_confidence")], retention_days=0)
    files = dict(zip(ids, read_predictions(url)["picture"], strict=True))
    assert all(Path(path).is_file() for path in files.values())
    now = dt.datetime.now(dt.UTC)
    ages = [dt.timedelta(hours=50), dt.timedelta(hours=2),   # recent_hours 48
            dt.timedelta(days=31), dt.timedelta(days=29)]    # retention_days 30
    engine = make_engine(url)
    with engine.begin() as connection:
        for prediction_id, age in zip(ids, ages, strict=True):
            connection.execute(PREDICTIONS.update().where(
                PREDICTIONS.c.prediction_id == prediction_id).values(time=now - age))
    engine.dispose()
    _write(url, folder, [_record(9, 0.99, None)], retention_days=0)   # rows kept forever
    frame = read_predictions(url).set_index("prediction_id")
    assert frame.loc[ids, "picture"].isna().tolist() == [True, False, True, False]
    assert [Path(files[i]).exists() for i in ids] == [False, True, False, True]
    assert len(frame) == 5   # the rows stay; only the pictures went

    # the row cap deletes the oldest rows, and their pictures with them
    _write(url, folder, [_record(10, 0.5, "low_confidence")], max_rows=2)
    assert not Path(files[ids[1]]).exists() and not Path(files[ids[3]]).exists()
    assert len(read_predictions(url)) == 2


def test_a_drift_event_queues_the_windows_recent_pictures(tmp_path: Path) -> None:
    url, folder = default_url(tmp_path), tmp_path / "pictures"
    now = dt.datetime.now(dt.UTC)
    ids = _write(url, folder, [
        _record(0, 0.9, "recent", now - dt.timedelta(hours=1)),
        _record(1, 0.9, "recent", now - dt.timedelta(hours=2)),
        _record(2, 0.9, "recent", now - dt.timedelta(hours=30)),          # before the window
        _record(3, 0.9, "recent", now - dt.timedelta(hours=1), version="2"),  # another version
        _record(4, 0.5, "low_confidence", now - dt.timedelta(hours=1))])  # queued already
    engine = make_engine(url)
    assert promote_drift(engine, now - dt.timedelta(hours=24), now, "3") == 2
    frame = read_predictions(url).set_index("prediction_id")
    assert frame.loc[ids, "kept_for"].tolist() == ["drift", "drift", "recent", "recent",
                                                   "low_confidence"]
    assert queue_size(engine)["drift"] == 2
    engine.dispose()


def _ls_task(prediction_id: str, *choices: str, cancelled: bool = False) -> dict:
    return {"id": 7, "data": {"image": "http://x/y.jpg", "prediction_id": prediction_id},
            "annotations": [{"was_cancelled": cancelled, "result": [{
                "from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": list(choices)}}]}]}


def test_label_studio_export_then_import_records_the_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, folder = default_url(tmp_path / "data"), tmp_path / "pictures"
    ids = _write(url, folder, [_record(0, 0.5, "low_confidence"), _record(1, 0.6, "random"),
                               _record(2, 0.9, "recent")])
    engine = make_engine(url)
    prediction_log.record_label(engine, ids[1], "neither", dt.datetime.now(dt.UTC))
    data = ["--data-dir", str(tmp_path / "data")]

    assert main(["review", "export", "--format", "label-studio", *data]) == 0
    out = capsys.readouterr()
    tasks = json.loads(out.out)                    # stdout is the tasks alone
    assert "2 Label Studio tasks (1 labelled)" in out.err
    assert [t["data"]["prediction_id"] for t in tasks] == [ids[0], ids[1]]
    assert tasks[0]["data"]["image"] == (
        f"http://localhost:3000/review/picture?prediction_id={ids[0]}")
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}
    assert "annotations" not in tasks[0]
    assert tasks[1]["annotations"][0]["result"][0]["value"] == {"choices": ["neither"]}
    assert '<Choices name="label" toName="image"' in LABEL_CONFIG  # what the results name

    # annotated in Label Studio: the queued one is a dog, plus a task of a row deleted since
    tasks[0]["annotations"] = [_ls_task(ids[0], "Dog")["annotations"][0]]
    tasks.append(_ls_task("f" * 32, "cat"))
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    assert main(["review", "import", str(export), "--json", *data]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["recorded"], summary["unknown"]) == (2, ["f" * 32])
    frame = read_predictions(url).set_index("prediction_id")
    assert frame.loc[ids, "true_label"].fillna("").tolist() == ["dog", "neither", ""]

    assert main(["review", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["waiting"] == {
        "ood": 0, "low_confidence": 0, "drift": 0, "random": 0}
    engine.dispose()


def test_a_bad_label_refuses_the_whole_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url, folder = default_url(tmp_path / "data"), tmp_path / "pictures"
    ids = _write(url, folder, [_record(0, 0.5, "low_confidence")])
    export = tmp_path / "export.json"
    export.write_text(json.dumps([_ls_task(ids[0], "cat"), _ls_task("a" * 32, "hamster")]))
    assert main(["review", "import", str(export), "--data-dir", str(tmp_path / "data")]) == 2
    assert "label ['hamster'] is not one of cat, dog, neither" in capsys.readouterr().err
    assert read_predictions(url)["true_label"].isna().all()   # nothing recorded


def test_label_studio_exports_are_read_strictly() -> None:
    assert labels_from_label_studio([_ls_task("a" * 32, "cat", cancelled=True),
                                     {"data": {"prediction_id": "b" * 32}}]) == {}
    assert labels_from_label_studio([_ls_task("a" * 32, "dog"), _ls_task("c" * 32, "CAT")]) == {
        "a" * 32: "dog", "c" * 32: "cat"}
    with pytest.raises(UserError, match="expected a JSON list of tasks"):
        labels_from_label_studio({"tasks": []})
    with pytest.raises(UserError, match="no data.prediction_id"):
        labels_from_label_studio([{"data": {"image": "x"}, "annotations": []}])

