"""bentoservice.import_model's default calibration photos for the serving variants: $CATSDOGS_SAMPLE_DIR,
else the data dir's test split, else none (said in the log): never a path outside the project."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bentoservice.import_model import default_calibration_dir
from catsdogs.paths import DataPaths


def test_calibration_dir_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    paths = DataPaths(tmp_path / "data")
    monkeypatch.delenv("CATSDOGS_SAMPLE_DIR", raising=False)
    with caplog.at_level(logging.INFO, logger="bentoservice.import_model"):
        assert default_calibration_dir(paths) is None
    assert "no calibration photos" in caplog.text

    paths.split_dir("test").mkdir(parents=True)
    assert default_calibration_dir(paths) == paths.split_dir("test")

    sample = tmp_path / "sample"
    sample.mkdir()
    monkeypatch.setenv("CATSDOGS_SAMPLE_DIR", str(sample))
    assert default_calibration_dir(paths) == sample
