"""The prediction log's label store (feedback): `PredictionLog.label` on a real SQLite store, a
row still queued, the later label winning (also when written first), the first label of a row
told to `on_label` once (the service counts it), ids unknown or deleted by the cap, the content hash,
tables written before these columns, and several processes writing rows and labels at once."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from catsdogs.config import FEEDBACK_LABELS
from catsdogs.monitoring.prediction_log import (
    Labelled,
    PredictionLog,
    PredictionRecord,
    content_hash,
    default_url,
    make_engine,
    read_predictions,
    record_label,
)
from tests.monitoring.test_prediction_log import record

WRITERS = 4
ROWS_EACH = 25


def at(second: int) -> dt.datetime:
    return dt.datetime(2026, 1, 1, 12, 0, second, tzinfo=dt.UTC)


def test_a_written_row_takes_the_later_label_and_nothing_else_changes(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=1, flush_s=0.05).start()
    records = [record(i) for i in range(3)]
    assert all(writer.submit(r) for r in records)
    writer.close()
    before = read_predictions(url)
    told: list[tuple[str, Labelled]] = []
    writer = PredictionLog(url, flush_s=0.05,   # a restarted service: nothing pending
                           on_label=lambda label, labelled: told.append((label, labelled))).start()
    assert writer.label(records[1].prediction_id, "dog", at(1))
    assert writer.label(records[1].prediction_id, "neither", at(2))
    writer.close()
    answer = records[1]   # record(1): "cat" by version "3"
    assert told == [("dog", Labelled(answer.label, answer.model_version, first=True)),
                    ("neither", Labelled(answer.label, answer.model_version, first=False))]
    after = read_predictions(url)
    assert after["prediction_id"].tolist() == [r.prediction_id for r in records]
    labelled = after.set_index("prediction_id").loc[records[1].prediction_id]
    assert labelled["true_label"] == "neither"
    assert labelled["labelled_at"] == at(2)
    assert after["true_label"].isna().sum() == 2
    untouched = [c for c in after.columns if c not in ("true_label", "labelled_at")]
    assert after[untouched].equals(before[untouched])


def test_an_earlier_label_written_last_does_not_win(tmp_path: Path) -> None:
    """Two replicas' labels for one row landing out of order: the later given stays."""
    url = default_url(tmp_path)
    writer = PredictionLog(url, flush_s=0.05).start()
    one = record(5)
    writer.submit(one)
    writer.close()
    engine = make_engine(url)
    try:
        assert record_label(engine, one.prediction_id, "dog", at(9)) == Labelled(
            one.label, one.model_version, first=True)
        # found, and older: not recorded, and not a first label either
        assert record_label(engine, one.prediction_id, "cat", at(8)) == Labelled(
            one.label, one.model_version, first=False)
        assert record_label(engine, "0" * 32, "cat", at(9)) is None
    finally:
        engine.dispose()
    row = read_predictions(url).iloc[0]
    assert (row["true_label"], row["labelled_at"]) == ("dog", at(9))


def test_a_label_for_a_queued_row_lands_after_its_insert(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    told: list[tuple[str, Labelled]] = []
    writer = PredictionLog(url, batch_rows=1000, flush_s=60,           # holds rows a minute
                           on_label=lambda label, labelled: told.append((label, labelled))).start()
    queued = record(4)
    writer.submit(queued)
    assert writer.label(queued.prediction_id, "cat", at(3), wait_s=0)
    assert writer.label(queued.prediction_id, "dog", at(4), wait_s=0)  # later wins
    assert told == []                                    # told when the label lands, not before
    writer.close()                                                      # flushes
    assert told == [("dog", Labelled("dog", "3", first=True))]   # record(4) answered "dog"
    row = read_predictions(url).iloc[0]
    assert (row["prediction_id"], row["true_label"]) == (queued.prediction_id, "dog")


def test_unknown_and_capped_ids_take_no_label(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=1, flush_s=0.05, max_rows=2).start()
    records = [record(i) for i in range(3)]
    for one in records:
        writer.submit(one)
    writer.close()
    assert read_predictions(url)["prediction_id"].tolist() == [
        r.prediction_id for r in records[1:]]
    writer = PredictionLog(url).start()
    assert not writer.label(records[0].prediction_id, "cat", at(5), wait_s=0.1)  # capped away
    assert not writer.label("0" * 32, "cat", at(6), wait_s=0.1)
    assert writer.label(records[2].prediction_id, "cat", at(7), wait_s=0.1)
    writer.close()


def test_the_content_hash_is_the_model_inputs(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, flush_s=0.05).start()
    same_a, same_b, other = record(1), record(1), record(2)
    for one in (same_a, same_b, other):
        writer.submit(one)
    writer.close()
    hashes = read_predictions(url)["content_hash"].tolist()
    assert hashes[0] == hashes[1] == content_hash(same_a.pixels) != hashes[2]
    assert len(hashes[0]) == 64


def test_a_table_from_before_feedback_is_read_and_upgraded(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    engine = sa.create_engine(url)
    (tmp_path / "monitoring").mkdir()
    old = sa.MetaData()
    table = sa.Table("predictions", old, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("time", sa.DateTime(timezone=True), nullable=False),
                     sa.Column("model_name", sa.String(200), nullable=False),
                     sa.Column("model_version", sa.String(50), nullable=False),
                     sa.Column("label", sa.String(50), nullable=False),
                     sa.Column("confidence", sa.Float, nullable=False))
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert(), [{"time": dt.datetime.now(dt.UTC), "model_name": "m",
                                             "model_version": "1", "label": "cat",
                                             "confidence": 0.9}])
    engine.dispose()
    assert read_predictions(url)["prediction_id"].isna().all()   # not upgraded yet: NULLs
    writer = PredictionLog(url, flush_s=0.05).start()
    new = record(3)
    writer.submit(new)
    writer.close()
    assert writer.label(new.prediction_id, "dog", at(8), wait_s=0)
    frame = read_predictions(url)
    assert frame["true_label"].tolist()[1] == "dog" and frame["true_label"].isna().tolist()[0]


def _writer_process(url: str, index: int, start: multiprocessing.synchronize.Barrier) -> None:
    """Process `index`: log ROWS_EACH rows of its own, wait for every writer, then label the
    rows of the writer before it (queued or written in that other process)."""
    writer = PredictionLog(url, batch_rows=5, flush_s=0.2).start()
    for row in range(ROWS_EACH):
        writer.submit(PredictionRecord(
            time=dt.datetime.now(dt.UTC), model_name="m", model_version="1", label="cat",
            confidence=0.9, width=10, height=10, format="JPEG",
            pixels=np.full((8, 8, 3), row, np.uint8), embedding=None, ood_score=None,
            in_distribution=None, prediction_id=f"{index:02d}{row:030d}"))
    start.wait(timeout=60)
    earlier = (index - 1) % WRITERS
    for row in range(ROWS_EACH):
        assert writer.label(f"{earlier:02d}{row:030d}", FEEDBACK_LABELS[index % 3],
                            dt.datetime.now(dt.UTC))
    writer.close()


def test_several_processes_write_rows_and_labels_at_once(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    processes = [context.Process(target=_writer_process, args=(url, index, start))
                 for index in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    frame = read_predictions(url)
    assert len(frame) == WRITERS * ROWS_EACH and frame["prediction_id"].is_unique
    for index in range(WRITERS):
        labeller = (index + 1) % WRITERS
        mine = frame[frame["prediction_id"].str.startswith(f"{index:02d}")]
        assert (mine["true_label"] == FEEDBACK_LABELS[labeller % 3]).all(), index
        assert mine["labelled_at"].notna().all()


def _labeller_process(url: str, ids: list[str], start: multiprocessing.synchronize.Barrier,
                      firsts: multiprocessing.Queue) -> None:
    """Label every row of `ids` (written before; none queued here) at once with the others, and
    report how many of those labels were their row's first."""
    counted = []
    writer = PredictionLog(url, on_label=lambda _label, labelled: counted.append(labelled.first)
                           ).start()
    start.wait(timeout=60)
    for prediction_id in ids:
        assert writer.label(prediction_id, "dog", dt.datetime.now(dt.UTC), wait_s=0)
    writer.close()
    firsts.put(sum(counted))


def test_of_several_replicas_labelling_one_row_at_once_exactly_one_counts_it(
        tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=ROWS_EACH, flush_s=0.05).start()
    records = [record(i) for i in range(ROWS_EACH)]
    for one in records:
        writer.submit(one)
    writer.close()
    ids = [r.prediction_id for r in records]
    context = multiprocessing.get_context("spawn")
    start, firsts = context.Barrier(WRITERS), context.Queue()
    processes = [context.Process(target=_labeller_process, args=(url, ids, start, firsts))
                 for _ in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    assert sum(firsts.get(timeout=10) for _ in range(WRITERS)) == ROWS_EACH
    assert (read_predictions(url)["true_label"] == "dog").all()
