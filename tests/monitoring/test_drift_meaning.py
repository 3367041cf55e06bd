"""Drift that means something, on real photos (tests/monitoring/conftest.py's `photo_features`:
MobileNetV2 with a cat/dog head fitted on the sample; skipped with its reason when the sample is
absent), with the shipped thresholds:

- a client app that resizes every upload to 640x480 (and re-encodes it) moves width and height,
  which are reported as informational, and no retraining drift is detected; the same photos
  darkened still drift;
- an uptime probe that sends one photo 200 times beside a clean window counts as one picture:
  no embedding drift, where the 200 rows counted each would read as drift.
"""

from __future__ import annotations

import pandas as pd
import pytest

from catsdogs.config import MonitorParams, load_params
from catsdogs.monitoring.drift import EMBEDDING, INFORMATIONAL, compare
from tests.conftest import REPO_ROOT
from tests.monitoring.conftest import PROBE_REPEATS, WINDOW, PhotoFeatures

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def settings() -> MonitorParams:
    """The shipped thresholds (params.yaml), not test-tuned ones."""
    return load_params(REPO_ROOT / "params.yaml").monitor


def test_uploads_resized_by_the_client_are_no_retraining_drift(photo_features: PhotoFeatures,
                                                               settings: MonitorParams) -> None:
    resized = compare(photo_features.reference, photo_features.resized, settings, report=False)
    assert (photo_features.resized[["width", "height"]] == (640, 480)).all(axis=None)
    for name in INFORMATIONAL:
        assert resized.signal(name).drifted and resized.signal(name).informational, name
    assert not resized.detected, resized.summary()
    # the case: counted like the other signals, width and height alone would decide
    assert sum(s.drifted for s in resized.signals) / len(resized.signals) >= settings.threshold
    assert not resized.signal(EMBEDDING).drifted
    darkened = compare(photo_features.reference, photo_features.shifted["darkened"], settings,
                       report=False)
    assert darkened.detected and darkened.signal("brightness").drifted


def test_a_probe_repeating_one_photo_counts_once(photo_features: PhotoFeatures,
                                                 settings: MonitorParams) -> None:
    probe = photo_features.probe
    assert probe["content_hash"].nunique() == 1 and len(probe) == PROBE_REPEATS
    window = pd.concat([photo_features.clean[1], probe], ignore_index=True)
    counted_once = compare(photo_features.reference, window, settings, report=False)
    assert (counted_once.current_rows, counted_once.duplicate_rows) == (
        WINDOW + 1, PROBE_REPEATS - 1)
    assert not counted_once.detected and not counted_once.signal(EMBEDDING).drifted, (
        counted_once.summary())
    counted_each = compare(photo_features.reference, window.drop(columns=["content_hash"]),
                           settings, report=False)
    assert counted_each.signal(EMBEDDING).drifted and counted_each.detected
