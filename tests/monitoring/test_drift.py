"""The drift engine's contract on generated rows: its decision rule, the reference sampling, and
clear errors for frames it cannot compare (real photos: test_drift_proof.py)."""

from __future__ import annotations

import pytest

from catsdogs.config import MonitorParams
from catsdogs.errors import UserError
from catsdogs.monitoring.drift import EMBEDDING, SIGNALS, compare
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
    assert moved.score == sum(s.drifted for s in moved.signals) / len(SIGNALS)
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
    assert result.score == pytest.approx(2 / 8) and result.detected
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
