"""The drift engine's contract on generated rows: its decision rule, the reference sampling, and
clear errors for frames it cannot compare (real photos: test_drift_proof.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from catsdogs.config import MonitorParams
from catsdogs.errors import UserError
from catsdogs.monitoring.drift import (
    EMBEDDING,
    INFORMATIONAL,
    SIGNALS,
    compare,
    distinct_pictures,
)
from tests.monitoring.logs import generated_rows

SETTINGS = MonitorParams()


def test_same_distribution_no_drift_shifted_drift() -> None:
    reference = generated_rows(300, seed=1)
    same = compare(reference, generated_rows(80, seed=2), SETTINGS)
    assert not same.detected and same.score < SETTINGS.threshold
    assert [s.name for s in same.signals] == list(SIGNALS)
    moved = compare(reference, generated_rows(80, shift=1.5, seed=3), SETTINGS)
    assert moved.detected and moved.signal(EMBEDDING).drifted
    assert moved.signal("brightness").drifted and not moved.signal("width").drifted
    deciding = [s for s in moved.signals if s.name not in INFORMATIONAL]
    assert moved.score == sum(s.drifted for s in deciding) / len(deciding) == 3 / 6
    assert moved.summary()["signals"][0]["name"] == EMBEDDING


def test_property_columns_alone_can_decide() -> None:
    """Two drifted columns (a share of 0.25) are drift even when the embedding does not move."""
    reference = generated_rows(300, seed=1)
    window = generated_rows(80, seed=4)
    window["brightness"] = window["brightness"] * 0.4
    window["saturation"] = 0.0
    result = compare(reference, window, SETTINGS)
    assert not result.signal(EMBEDDING).drifted
    assert result.signal("brightness").drifted and result.signal("saturation").drifted
    assert result.score == pytest.approx(2 / 6) and result.detected
    stricter = compare(reference, window, SETTINGS.model_copy(update={"threshold": 0.5}))
    assert not stricter.detected


def test_reference_is_sampled_to_reference_rows() -> None:
    settings = SETTINGS.model_copy(update={"reference_rows": 100})
    result = compare(generated_rows(400, seed=1), generated_rows(60, seed=2), settings)
    assert result.reference_rows == 100 and result.current_rows == 60


def test_frames_it_cannot_compare_are_user_errors() -> None:
    reference = generated_rows(100)
    with pytest.raises(UserError, match="no column.*brightness"):
        compare(reference, generated_rows(60).drop(columns=["brightness"]), SETTINGS)
    with pytest.raises(UserError, match="no embedding columns.*re-train"):
        compare(reference.drop(columns=[c for c in reference if c.startswith("emb_")]),
                generated_rows(60), SETTINGS)
    with pytest.raises(UserError, match="different embedding sizes"):
        compare(reference, generated_rows(60, size=16), SETTINGS)
    with pytest.raises(UserError, match="2\\+ rows"):
        compare(reference, generated_rows(1), SETTINGS)


def test_upload_size_alone_is_informational() -> None:
    """Every upload resized to 640x480 by the client: width and height drift, are reported, and
    decide nothing (the model sees every picture squared to its input side)."""
    reference = generated_rows(300, seed=1)
    window = generated_rows(80, seed=2).assign(width=640, height=480)
    result = compare(reference, window, SETTINGS, report=False)
    assert result.signal("width").drifted and result.signal("height").drifted
    assert result.signal("width").informational and result.signal("height").informational
    assert not any(s.informational for s in result.signals if s.name not in INFORMATIONAL)
    assert result.score == 0.0 and not result.detected
    assert {"name": "width", "informational": True}.items() <= result.summary()["signals"][
        SIGNALS.index("width")].items()


def test_repeated_pictures_count_once() -> None:
    """An uptime probe's 200 copies of one picture beside 60 ordinary ones: as 200 rows the
    embedding drifts (the domain classifier finds the cluster), counted once it does not."""
    reference = generated_rows(300, seed=1)
    ordinary = generated_rows(60, seed=2).assign(content_hash=[f"h{i}" for i in range(60)])
    probe = generated_rows(1, seed=5).assign(content_hash="probe")
    window = pd.concat([ordinary, *[probe] * 200], ignore_index=True)
    counted_each = compare(reference, window.drop(columns=["content_hash"]), SETTINGS,
                           report=False)
    assert counted_each.detected and counted_each.current_rows == 260
    once = compare(reference, window, SETTINGS, report=False)
    assert not once.detected and not once.signal(EMBEDDING).drifted
    assert (once.current_rows, once.duplicate_rows) == (61, 199)


def test_rows_without_a_hash_are_all_kept() -> None:
    frame = pd.DataFrame({"content_hash": ["a", None, "a", None, "b"], "n": range(5)})
    kept, dropped = distinct_pictures(frame)
    assert kept["n"].tolist() == [0, 1, 3, 4] and dropped == 1
    assert distinct_pictures(frame.drop(columns=["content_hash"]))[1] == 0
