"""The one image decoding path used by prepare, transform and the serving endpoint.

`decode_image` turns bytes or a file into an 8-bit RGB `PIL.Image`, or raises `ImageRejected` with
a machine-readable reason. It checks the size limits from the header before decoding any pixels,
applies the EXIF orientation, composites transparency on white, scales 16-bit and float images to
8 bits and, for multi-frame files (animated GIF/WebP, multi-page TIFF), keeps the first frame.
`square_image` adds THE geometric preprocessing (the square resize): the transform stage stores its
output for training and the Bento service applies it to every upload.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from catsdogs.errors import UserError

REASONS = ("empty", "not_an_image", "truncated", "too_large", "too_many_pixels",
           "bad_dimensions", "multi_frame", "unsupported_mode")

DRAFT_GAP = 2  # JPEG draft keeps >= 2x the output size, so the final resample still antialiases
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageRejected(UserError):
    """The input is not an image we can use; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int | None = None
    max_pixels: int = 50_000_000
    min_side: int = 1
    max_aspect_ratio: float | None = None


def _read(source: bytes | Path, limits: ImageLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        size = Path(source).stat().st_size
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise ImageRejected("too_large", f"file is {size} bytes; the limit is {limits.max_bytes}")
        data = Path(source).read_bytes()
    if not data:
        raise ImageRejected("empty", "the file is empty (0 bytes); send a JPEG or PNG image")
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise ImageRejected("too_large",
                            f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    return data


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected("too_many_pixels", f"image is {width}x{height} pixels; the limit is "
                            f"{limits.max_pixels} pixels (possible decompression bomb)")
    if min(width, height) < limits.min_side:
        raise ImageRejected("bad_dimensions", f"image is {width}x{height}; each side must be at "
                            f"least {limits.min_side} pixels")
    if limits.max_aspect_ratio is not None:
        ratio = max(width, height) / min(width, height)
        if ratio > limits.max_aspect_ratio:
            raise ImageRejected("bad_dimensions", f"image is {width}x{height} (aspect ratio "
                                f"{ratio:.1f}); the limit is {limits.max_aspect_ratio}")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float greyscale -> 8-bit L (full-range scaling)."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if values.size and values.max() > 255 else 255.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode",
                            f"cannot convert pixel mode {image.mode!r} to RGB: {exc}") from exc


def decode_image(source: bytes | Path, limits: ImageLimits = ImageLimits(),
                 draft_size: int | None = None) -> Image.Image:
    """RGB image: EXIF orientation applied, L/LA/P/CMYK/RGBA/I;16/I/F converted (alpha composited on
    white), first frame of animated GIF / multi-frame TIFF, JPEG draft mode when draft_size is given
    (the decoder scales by 1/2, 1/4 or 1/8 while keeping both sides >= draft_size).
    Raises ImageRejected with a clear message on anything bad."""
    data = _read(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", "not a recognised image file; send a JPEG or PNG "
                            "image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated" if "runcated" in str(exc) else "not_an_image"
        raise ImageRejected(reason, f"unreadable image header: {exc}") from exc
    _check_header(image, limits)
    if draft_size and image.format == "JPEG":
        image.draft(None, (draft_size, draft_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected("truncated", f"image data is truncated or corrupt: {exc}") from exc
    return _to_rgb(image)


def square(image: Image.Image, size: int) -> Image.Image:
    """Squash-resize to size x size with Pillow's antialiased BILINEAR filter (what torchvision's
    `Resize((size, size))` does to a PIL image; a picture already that size passes unchanged)."""
    return image.resize((size, size), Image.Resampling.BILINEAR)


def square_image(source: bytes | Path, size: int, limits: ImageLimits = ImageLimits()
                 ) -> Image.Image:
    """Decode (JPEG draft scaling only while at least `DRAFT_GAP` x size remains, as Pillow's own
    `thumbnail` does) and `square` to a size x size RGB image."""
    return square(decode_image(source, limits, draft_size=size * DRAFT_GAP), size)
