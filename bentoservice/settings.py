"""The service's settings: `catsdogs.settings.ServingSettings` (`CATSDOGS_*` variables; names,
defaults and meanings in docs/serving.md, generated from the class), read once when the service
starts. A bad value stops the service with one message naming every bad variable, what it got
and what it takes. Its one parameter section, `review:` (which uploads are kept as pictures for
the review queue), comes from the params file (`$CATSDOGS_PARAMS`, else ./params.yaml; none
there: the section's defaults, the same values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catsdogs.config import ReviewParams, load_params
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.settings import (
    LoggingSettings,
    ServingSettings,
    SettingsError,
    StageSettings,
    load,
)


def load_settings(cls: type[ServingSettings] | type[LoggingSettings] = ServingSettings
                  ) -> Any:
    """`cls` (`ServingSettings`, or `LoggingSettings`) from the environment; SystemExit naming
    every bad variable."""
    try:
        return load(cls)
    except SettingsError as exc:
        raise SystemExit(f"bad service setting: {str(exc).removeprefix('bad setting: ')}"
                         ) from None


def load_review() -> ReviewParams:
    """The params file's `review:` section (module docstring); SystemExit naming the problem
    when the file or the section is invalid."""
    try:
        return load_params(load(StageSettings).params).review
    except (SettingsError, UserError) as exc:
        raise SystemExit(f"bad service parameter: {exc}") from None


def prediction_log_target(settings: ServingSettings) -> str:
    """The prediction log's SQLAlchemy URL (the setting, else SQLite in the data dir)."""
    from catsdogs.monitoring.prediction_log import default_url

    return settings.prediction_log_url or default_url(DataPaths.resolve().root)


def prediction_log_pictures(settings: ServingSettings) -> Path:
    """Where kept pictures go (the setting, else `<data dir>/monitoring/pictures`)."""
    return settings.prediction_log_sample_dir or DataPaths.resolve().root / "monitoring" / "pictures"


SETTINGS: ServingSettings = load_settings()
LOG_FORMAT: str = load_settings(LoggingSettings).log_format
REVIEW: ReviewParams = load_review()
