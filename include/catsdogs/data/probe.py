"""Inspect image files: decodable or why not, original size, pixel mode and format."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from catsdogs.data.images import ImageRejected, decode_image
from catsdogs.data.parallel import parallel_map

PROBE_DRAFT = 64  # decode JPEGs at 1/2..1/8 scale: every byte is still read, so damage shows


def probe(path: Path) -> dict[str, Any]:
    """{"decodable", "reason", "detail", "width", "height", "mode", "format"} of one file."""
    info: dict[str, Any] = {"decodable": False, "reason": "", "detail": "", "width": None,
                            "height": None, "mode": "", "format": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as header:
                info.update(width=header.width, height=header.height, mode=header.mode,
                            format=header.format or "")
    except Exception:  # noqa: BLE001 - decode_image below names the reason
        pass
    try:
        decode_image(path, draft_size=PROBE_DRAFT)
    except ImageRejected as exc:
        info.update(reason=exc.reason, detail=str(exc), width=None, height=None)
        return info
    info["decodable"] = True
    return info


def probe_all(paths: list[Path], workers: int = 0) -> list[dict[str, Any]]:
    """`probe` of every path, in order, over all cores."""
    return parallel_map(probe, paths, desc="inspect", workers=workers)
