"""bentoservice/settings.py: CATSDOGS_* variables read with pydantic-settings, documented defaults,
one clear error naming each bad variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bentoservice.settings import load_settings
from catsdogs.inference.variants import VARIANT_NAMES
from catsdogs.settings import VARIANTS
from catsdogs.settings import ServingSettings as Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def test_defaults_match_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"CATSDOGS_{name.upper()}", raising=False)
    settings = load_settings()
    assert settings.bento_model == "catsdogs_cnn:latest"
    assert (settings.max_batch_size, settings.max_upload_bytes, settings.max_pixels,
            settings.min_side, settings.max_aspect_ratio, settings.max_batch_images) == (
        8, 10 * 1024 * 1024, 40_000_000, 16, 10.0, 32)
    assert (settings.runtime, settings.device, settings.jit) == ("auto", "auto", True)
    documented = set(re.findall(r"`(CATSDOGS_[A-Z_0-9]+)`", DOCS.read_text()))
    assert {f"CATSDOGS_{name.upper()}" for name in Settings.model_fields} <= documented


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_MAX_PIXELS", " 1234 ")
    monkeypatch.setenv("CATSDOGS_JIT", "0")
    monkeypatch.setenv("CATSDOGS_RUNTIME", "openvino-int8")
    monkeypatch.setenv("CATSDOGS_BENTO_MODEL", "catsdogs_cnn:abc")
    monkeypatch.setenv("CATSDOGS_MIN_SIDE", "")  # empty: the default
    settings = load_settings()
    assert (settings.max_pixels, settings.jit, settings.runtime, settings.bento_model,
            settings.min_side) == (1234, False, "openvino-int8", "catsdogs_cnn:abc", 16)


def test_bad_values_stop_with_one_message_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_MAX_PIXELS", "lots")
    monkeypatch.setenv("CATSDOGS_DEVICE", "tpu")
    monkeypatch.setenv("CATSDOGS_MAX_BATCH_SIZE", "0")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    message = str(stopped.value)
    assert "CATSDOGS_MAX_PIXELS='lots'" in message
    assert "CATSDOGS_DEVICE='tpu'" in message
    assert "CATSDOGS_MAX_BATCH_SIZE='0'" in message
    assert "Traceback" not in message


def test_the_runtime_setting_names_every_serving_variant() -> None:
    """`catsdogs.settings` imports no torch, so it spells the variants' names; they agree."""
    assert VARIANTS == VARIANT_NAMES
