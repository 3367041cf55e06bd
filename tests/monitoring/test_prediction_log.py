"""The prediction log's writer and reader against a real SQLite file (the service's default store;
the same SQLAlchemy code path writes to Postgres in compose)."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from catsdogs.config import ReviewParams
from catsdogs.monitoring import prediction_log
from catsdogs.monitoring.features import image_statistics
from catsdogs.monitoring.prediction_log import (
    PREDICTIONS,
    PredictionLog,
    PredictionRecord,
    default_url,
    read_predictions,
)

D = 16


def record(seed: int, when: dt.datetime | None = None, picture: bytes | None = None
           ) -> PredictionRecord:
    rng = np.random.default_rng(seed)
    return PredictionRecord(
        time=when or dt.datetime.now(dt.UTC), model_name="CatsDogsCNN", model_version="3",
        label="cat" if seed % 2 else "dog", confidence=0.5 + seed / 100, width=640 + seed,
        height=480, format="JPEG", pixels=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        embedding=rng.normal(size=D).astype(np.float32), ood_score=float(seed),
        in_distribution=seed < 5, picture=picture)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_rows_land_with_statistics_and_embedding(tmp_path: Path) -> None:
    url = default_url(tmp_path / "data")
    fates: Counter[str] = Counter()
    writer = PredictionLog(url, batch_rows=4, flush_s=0.2,
                           on_rows=lambda outcome, n: fates.update({outcome: n})).start()
    records = [record(i) for i in range(10)]
    assert all(writer.submit(r) for r in records)
    writer.close()
    assert fates == {"written": 10}
    assert (tmp_path / "data" / "monitoring" / "predictions.db").exists()
    frame = read_predictions(url)
    assert len(frame) == 10 and str(frame["time"].dt.tz) == "UTC"
    assert [f"emb_{i}" for i in range(D)] == [c for c in frame.columns if c.startswith("emb_")]
    for (_, row), original in zip(frame.iterrows(), records, strict=True):
        np.testing.assert_allclose(row[[f"emb_{i}" for i in range(D)]].to_numpy(np.float32),
                                   original.embedding, rtol=1e-3, atol=1e-4)  # kept as float16
        stats = image_statistics(original.pixels)
        assert row["brightness"] == pytest.approx(stats["brightness"])
        assert row["saturation"] == pytest.approx(stats["saturation"])
        assert (row["label"], row["width"], row["format"], bool(row["in_distribution"])) == (
            original.label, original.width, "JPEG", original.in_distribution)
    later = read_predictions(url, since=records[5].time)
    assert len(later) == 5
    assert read_predictions(url, model_version="4").empty


def test_flushes_on_time_not_only_on_size(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=1000, flush_s=0.3).start()
    writer.submit(record(1))
    wait_for(lambda: len(read_predictions(url)) == 1)
    writer.close()


@pytest.fixture
def just_booted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`time.monotonic()` as on a machine (or pod) booted ten seconds ago: it counts from boot on
    Linux, so throttles must not take its value for "long ago"."""
    real, started = time.monotonic, time.monotonic()
    monkeypatch.setattr(prediction_log.time, "monotonic", lambda: 10.0 + real() - started)


def test_embeddings_are_stored_as_float16_and_float32_rows_still_read(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=10, flush_s=0.1).start()
    writer.submit(record(1))
    writer.close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        stored = connection.execute(sa.select(PREDICTIONS.c.embedding)).scalar_one()
        assert len(stored) == 2 * D + 1   # float16 and its tag: half the float32 size
        older = record(2)   # a row as written before float16: D float32
        connection.execute(PREDICTIONS.insert(), [{
            "time": older.time, "model_name": "CatsDogsCNN", "model_version": "3",
            "label": "dog", "confidence": 0.5,
            "embedding": older.embedding.astype("<f4").tobytes()}])
    engine.dispose()
    frame = read_predictions(url)
    matrix = frame[[f"emb_{i}" for i in range(D)]].to_numpy(np.float32)
    np.testing.assert_allclose(matrix[0], record(1).embedding, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(matrix[1], older.embedding)


def test_the_oldest_rows_past_the_cap_are_deleted(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    writer = PredictionLog(url, batch_rows=4, flush_s=0.1, max_rows=5).start()
    for i in range(12):
        writer.submit(record(i))
    writer.close()
    kept = read_predictions(url)
    assert kept["ood_score"].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_retention_deletes_old_rows(tmp_path: Path, just_booted: None) -> None:
    """The first write of a writer runs retention, however long the machine has been up."""
    url = default_url(tmp_path)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    first = PredictionLog(url, batch_rows=10, flush_s=0.1, retention_days=0).start()
    for i in range(3):
        first.submit(record(i, when=old))
    first.close()
    assert len(read_predictions(url)) == 3
    second = PredictionLog(url, batch_rows=10, flush_s=0.1, retention_days=7).start()
    second.submit(record(7))
    second.close()
    kept = read_predictions(url)
    assert len(kept) == 1 and kept["ood_score"].tolist() == [7.0]


def test_store_down_drops_and_counts_never_raises(tmp_path: Path, just_booted: None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Rows are dropped and counted, and the first failure is logged at once (also on a machine
    up for less than the error line's throttle)."""
    caplog.set_level("WARNING", logger=prediction_log.__name__)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    fates: Counter[str] = Counter()
    writer = PredictionLog(f"sqlite:///{blocker}/sub/predictions.db", batch_rows=2,
                           flush_s=0.1, on_rows=lambda o, n: fates.update({o: n})).start()
    for i in range(5):
        assert writer.submit(record(i))
    writer.close()
    assert fates == {"dropped_store_error": 5}
    assert any("rows not written" in r.message for r in caplog.records)


def test_store_coming_back_is_written_again(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.write_text("blocks the database for now")
    url = f"sqlite:///{folder}/predictions.db"
    fates: Counter[str] = Counter()
    writer = PredictionLog(url, batch_rows=1, flush_s=0.05,
                           on_rows=lambda o, n: fates.update({o: n})).start()
    writer.submit(record(1))
    wait_for(lambda: fates["dropped_store_error"] == 1)
    folder.unlink()
    writer.submit(record(2))
    writer.close()
    assert fates == {"dropped_store_error": 1, "written": 1}
    assert read_predictions(url)["ood_score"].tolist() == [2.0]


def test_full_queue_drops_with_a_count_without_blocking(tmp_path: Path) -> None:
    fates: Counter[str] = Counter()
    writer = PredictionLog(default_url(tmp_path), queue_size=3,
                           on_rows=lambda o, n: fates.update({o: n}))  # not started: nothing drains
    started = time.perf_counter()
    accepted = [writer.submit(record(i)) for i in range(10)]
    assert time.perf_counter() - started < 1.0
    assert accepted == [True] * 3 + [False] * 7 and fates == {"dropped_queue_full": 7}


def test_kept_pictures_are_saved_and_linked(tmp_path: Path) -> None:
    """A record the policy keeps (`kept_for`) has its picture saved and linked; one it keeps
    not (no reason) has none, even with bytes."""
    url = default_url(tmp_path)
    writer = PredictionLog(url, flush_s=0.1, policy=ReviewParams(), sample_rate=1.0,
                           sample_dir=tmp_path / "samples")
    assert writer.keep_for(0.99, True) == "random"
    writer.start()
    kept = record(1, picture=b"\xff\xd8jpeg bytes")
    kept.kept_for = "low_confidence"
    writer.submit(kept)
    writer.submit(record(2, picture=b"not kept"))
    writer.close()
    frame = read_predictions(url)
    saved = [Path(p) for p in frame["picture"] if isinstance(p, str)]
    assert len(saved) == 1 and saved[0].read_bytes() == b"\xff\xd8jpeg bytes"
    assert saved[0].suffix == ".jpg" and saved[0].is_relative_to(tmp_path / "samples")
    assert frame["kept_for"].fillna("").tolist() == ["low_confidence", ""]
    assert PredictionLog(url, policy=ReviewParams()).keep_for(0.1, False) is None  # no folder


def test_absent_table_reads_as_no_rows(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    sa.create_engine(url)  # nothing created yet
    (tmp_path / "monitoring").mkdir()
    assert read_predictions(url).empty
    assert PREDICTIONS.name == "predictions"
