"""Service configuration, read once from the environment (defaults documented in docs/serving.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer; unset it or give a number") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number; unset it or give a number") from None


@dataclass(frozen=True)
class Settings:
    model_tag: str = os.environ.get("CATSDOGS_BENTO_MODEL", "catsdogs_cnn:latest")
    max_batch_size: int = _int("CATSDOGS_MAX_BATCH_SIZE", 8)
    max_latency_ms: int = _int("CATSDOGS_MAX_LATENCY_MS", 2000)
    max_upload_bytes: int = _int("CATSDOGS_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
    max_pixels: int = _int("CATSDOGS_MAX_PIXELS", 40_000_000)
    min_side: int = _int("CATSDOGS_MIN_SIDE", 16)
    max_aspect_ratio: float = _float("CATSDOGS_MAX_ASPECT_RATIO", 10.0)
    max_batch_images: int = _int("CATSDOGS_MAX_BATCH_IMAGES", 32)
    model_calls_in_flight: int = _int("CATSDOGS_MODEL_CALLS_IN_FLIGHT", 2)
    decode_threads: int = _int("CATSDOGS_DECODE_THREADS", 0)  # 0: one per CPU core
    torch_threads: int = _int("CATSDOGS_TORCH_THREADS", 0)  # 0: one per CPU core
    precision: str = os.environ.get("CATSDOGS_PRECISION", "auto")  # auto | fp32 | bf16
    jit: bool = _int("CATSDOGS_JIT", 1) != 0  # CPU: frozen TorchScript graph, oneDNN fusion
    device: str = os.environ.get("CATSDOGS_DEVICE", "auto")  # auto | cpu | cuda
    startup_delay_s: float = _float("CATSDOGS_STARTUP_DELAY_S", 0.0)


SETTINGS = Settings()
