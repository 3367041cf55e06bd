"""Service configuration, read once from `CATSDOGS_*` environment variables with pydantic-settings
(names, defaults and meanings: docs/serving.md). A bad value stops the service at start-up with
one message naming the variable, what it got and what it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from catsdogs.inference.variants import VariantName


class Settings(BaseSettings):
    """The service's settings; each field is read from `CATSDOGS_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="CATSDOGS_", frozen=True, extra="ignore", env_ignore_empty=True,
                                      case_sensitive=False, protected_namespaces=())

    bento_model: str = Field("catsdogs_cnn:latest", min_length=1)  # Bento model tag
    max_batch_size: int = Field(8, ge=1)  # adaptive batching: largest batch
    max_latency_ms: int = Field(2000, ge=1)  # adaptive batching: latency budget (ms)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)  # bytes per picture
    max_pixels: int = Field(40_000_000, ge=1)  # width x height
    min_side: int = Field(16, ge=1)  # pixels
    max_aspect_ratio: float = Field(10.0, ge=1.0)  # longest / shortest side
    max_batch_images: int = Field(32, ge=1)  # files per /predict_batch request
    model_calls_in_flight: int = Field(2, ge=1)  # API -> model service calls at once
    decode_threads: int = Field(0, ge=0)  # 0: one per CPU core
    torch_threads: int = Field(0, ge=0)  # 0: one per CPU core
    runtime: Literal["auto"] | VariantName = "auto"  # serving variant (catsdogs.inference.variants)
    jit: bool = True  # torch variants on CPU: frozen TorchScript graph, oneDNN fusion (1/0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    startup_delay_s: float = Field(0.0, ge=0.0)  # wait before loading the model (seconds)
    # the prediction log (catsdogs.monitoring.prediction_log; docs/serving.md)
    prediction_log: bool = True  # record every prediction (1/0, true/false)
    prediction_log_url: str = ""  # SQLAlchemy URL; empty: sqlite:///<data dir>/monitoring/predictions.db
    prediction_log_batch_rows: int = Field(256, ge=1)  # rows per insert
    prediction_log_flush_s: float = Field(2.0, gt=0.0)  # longest wait before an insert (seconds)
    prediction_log_queue: int = Field(1024, ge=1)  # rows waiting at most; beyond, dropped and counted
    prediction_log_retention_days: float = Field(30.0, ge=0.0)  # older rows deleted; 0: kept forever
    prediction_log_sample_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of pictures saved
    prediction_log_sample_dir: str = ""  # where; empty: <data dir>/monitoring/pictures

    def prediction_log_target(self) -> str:
        """The prediction log's SQLAlchemy URL (the setting, else SQLite in the data dir)."""
        from catsdogs.monitoring.prediction_log import default_url
        from catsdogs.paths import DataPaths

        return self.prediction_log_url or default_url(DataPaths.resolve().root)

    def prediction_log_pictures(self) -> Path:
        from catsdogs.paths import DataPaths

        return (Path(self.prediction_log_sample_dir) if self.prediction_log_sample_dir
                else DataPaths.resolve().root / "monitoring" / "pictures")


def load_settings() -> Settings:
    """`Settings()` from the environment; SystemExit naming every bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CATSDOGS_{'_'.join(map(str, error['loc'])).upper()}="
            f"{error.get('input')!r}: {error['msg']}" for error in exc.errors())
        raise SystemExit(f"bad service setting: {problems} (see docs/serving.md)") from None


SETTINGS = load_settings()
