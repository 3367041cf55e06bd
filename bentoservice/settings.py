"""The service's settings: `catsdogs.settings.ServingSettings` (`CATSDOGS_*` variables; names,
defaults and meanings in docs/serving.md, generated from the class), read once when the service
starts. A bad value stops the service with one message naming every bad variable, what it got
and what it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catsdogs.paths import DataPaths
from catsdogs.settings import LoggingSettings, ServingSettings, SettingsError, load


def load_settings(cls: type[ServingSettings] | type[LoggingSettings] = ServingSettings
                  ) -> Any:
    """`cls` (`ServingSettings`, or `LoggingSettings`) from the environment; SystemExit naming
    every bad variable."""
    try:
        return load(cls)
    except SettingsError as exc:
        raise SystemExit(f"bad service setting: {str(exc).removeprefix('bad setting: ')}"
                         ) from None


def prediction_log_target(settings: ServingSettings) -> str:
    """The prediction log's SQLAlchemy URL (the setting, else SQLite in the data dir)."""
    from catsdogs.monitoring.prediction_log import default_url

    return settings.prediction_log_url or default_url(DataPaths.resolve().root)


def prediction_log_pictures(settings: ServingSettings) -> Path:
    """Where sampled pictures go (the setting, else `<data dir>/monitoring/pictures`)."""
    return settings.prediction_log_sample_dir or DataPaths.resolve().root / "monitoring" / "pictures"


SETTINGS: ServingSettings = load_settings()
LOG_FORMAT: str = load_settings(LoggingSettings).log_format
