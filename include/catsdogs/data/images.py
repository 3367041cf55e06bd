"""The one image decoding path used by prepare, transform and the serving endpoint.

`decode_image` turns bytes or a file into an 8-bit RGB `PIL.Image`, or raises `ImageRejected` with
a machine-readable reason: no other exception escapes it, whatever the bytes (a fuzz test holds it
to that). It checks the size limits from the header before decoding any pixels, applies the EXIF
orientation (read from the Orientation tag alone: a broken EXIF block is ignored, never rewritten),
composites transparency on white, scales 16-bit and float images to 8 bits and, for multi-frame
files (animated GIF/WebP, multi-page TIFF), keeps the first frame (HEIF: the primary image).

Formats: everything Pillow reads (JPEG, PNG, WebP, GIF, TIFF, BMP, AVIF, ...) plus HEIC/HEIF (iPhone
photos) through `pillow-heif`. Pillow's settings are process-wide, so importing this module sets
three things once, for every user of Pillow in the process, each only widening what opens:
- HEIC/HEIF: pillow-heif's opener is registered (libheif turns the picture as its container says
  and resets the EXIF Orientation to 1, so `_upright` does not turn it twice).
- PNG metadata: Pillow refuses any iCCP/zTXt/iTXt chunk that inflates past 1 MB, so real photos
  with a large ICC profile or XMP packet were `not_an_image`. The limits become
  `PNG_TEXT_CHUNK_LIMIT` (16 MiB inflated per chunk) and `PNG_TEXT_MEMORY_LIMIT` (64 MiB of text
  in one file, Pillow's own total), never lowered below what the process had already set; past
  them a file is refused as `metadata_too_large` (a decompression bomb in a metadata chunk).
- AVIF: Pillow re-writes the EXIF block when the container's rotation (irot/imir) and the EXIF
  Orientation differ, and a tag it cannot re-serialise (XResolution stored as text) made the whole
  file unidentifiable. `_TolerantAvifFile`, registered in place of Pillow's reader, keeps the
  container's orientation and drops only that EXIF block (the tolerance the JPEG path has in
  `_upright`).
A file that starts with a format's signature (each Pillow reader's own check) and still cannot be
opened is refused as `corrupt` naming that format (a cut HEIC or AVIF is a damaged photo, not "not
an image"); `not_an_image` is kept for files no reader claims.
`square_image` adds THE geometric preprocessing (the square resize): the transform stage stores its
output for training and the Bento service applies it to every upload.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pillow_heif
from PIL import AvifImagePlugin, Image, PngImagePlugin, UnidentifiedImageError

from catsdogs.errors import UserError

logger = logging.getLogger(__name__)

REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_large", "too_many_pixels",
           "metadata_too_large", "bad_dimensions", "unsupported_mode")

PNG_TEXT_CHUNK_LIMIT = 16 * 1024 * 1024  # one iCCP/zTXt/iTXt chunk, inflated (Pillow: 1 MB)
PNG_TEXT_MEMORY_LIMIT = 64 * 1024 * 1024  # all text chunks of one PNG, inflated (Pillow: 64 MB)

DRAFT_GAP = 2  # JPEG draft keeps >= 2x the output size, so the final resample still antialiases
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ORIENTATION_TAG = 0x0112
# EXIF Orientation value -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")
_PREFIX_BYTES = 16  # what Image.open hands each reader's signature check
_PNG_TEXT_LIMIT = "MAX_TEXT_"  # in Pillow's ValueError for a chunk past MAX_TEXT_CHUNK/_MEMORY


def _raise_png_text_limits() -> None:
    """Pillow keeps these limits as module attributes (there is no per-file setting), so they are
    set once, at import, for the process. Only raised: an application that already allows more
    keeps its values, one that allows less gets ours (still bounded, so a zlib bomb in a text or
    ICC chunk is still refused; what it costs stays proportional to the bytes sent)."""
    PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, PNG_TEXT_CHUNK_LIMIT)
    PngImagePlugin.MAX_TEXT_MEMORY = max(PngImagePlugin.MAX_TEXT_MEMORY, PNG_TEXT_MEMORY_LIMIT)


class _TolerantAvifFile(AvifImagePlugin.AvifImageFile):
    """Pillow's AVIF reader (libavif), except for one failure: when the container's rotation
    (irot/imir, which Pillow reports as the EXIF Orientation) differs from the EXIF block's own
    Orientation, Pillow re-serialises the EXIF block, which raises on a tag of an unexpected type
    (XResolution stored as text, as some cameras and editors write it) or on a damaged block;
    `Image.open` then called the file unidentifiable. Here that block is replaced by one holding only the
    container's orientation: the picture opens, turned as the file says."""

    def _open(self) -> None:
        try:
            super()._open()
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, struct.error,
                SyntaxError, UnicodeError):
            decoder = getattr(self, "_decoder", None)
            if decoder is None or not AvifImagePlugin.SUPPORTED:
                raise  # not past libavif's parse: not an EXIF problem
            orientation = decoder.get_info()[5]
            logger.debug("AVIF: EXIF block unreadable or not re-writable; keeping orientation %s",
                         orientation)
            self.info.pop("exif", None)
            if orientation != 1:
                exif = Image.Exif()
                exif[_ORIENTATION_TAG] = orientation
                self.info["exif"] = exif.tobytes()
            self.seek(0)


def _register_formats() -> None:
    """See the module docstring. Other users of Pillow in the process only see more files open:
    the tolerant AVIF reader is Pillow's class underneath, and Pillow imports each plugin module
    once (here, before registering ours), so its own registration does not come back later."""
    _raise_png_text_limits()
    pillow_heif.register_heif_opener()
    Image.register_open(AvifImagePlugin.AvifImageFile.format, _TolerantAvifFile,
                        AvifImagePlugin._accept)


_register_formats()


class ImageRejected(UserError):
    """The input is not an image we can use; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    """What `decode_image` accepts: file size in bytes, width x height in pixels, shortest side in
    pixels, longest/shortest side. `names` maps a field name to the setting that sets it (e.g.
    `{"max_pixels": "CATSDOGS_MAX_PIXELS"}`); refusal messages then name that setting."""

    max_bytes: int | None = None
    max_pixels: int = 50_000_000
    min_side: int = 1
    max_aspect_ratio: float | None = None
    names: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def limit(self, name: str) -> str:
        """The limit's value, followed by the setting's name when known: `40000000 pixels
        (CATSDOGS_MAX_PIXELS)`."""
        units = {"max_bytes": " bytes", "max_pixels": " pixels", "min_side": " pixels"}
        setting = self.names.get(name)
        return f"{getattr(self, name)}{units.get(name, '')}" + (f" ({setting})" if setting else "")


def _read(source: bytes | Path, limits: ImageLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        size = Path(source).stat().st_size
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise ImageRejected("too_large", f"file is {size} bytes; the limit is "
                                f"{limits.limit('max_bytes')}")
        data = Path(source).read_bytes()
    if not data:
        raise ImageRejected("empty", "the file is empty (0 bytes); send a JPEG or PNG image")
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise ImageRejected("too_large",
                            f"image is {len(data)} bytes; the limit is {limits.limit('max_bytes')}")
    return data


def _too_many_pixels(pixels: str | None, limits: ImageLimits) -> ImageRejected:
    return ImageRejected("too_many_pixels", f"image has {pixels or 'too many'} pixels; the limit "
                         f"is {limits.limit('max_pixels')} (a possible decompression bomb)")


def _metadata_too_large(exc: ValueError) -> ImageRejected:
    if "MAX_TEXT_MEMORY" in str(exc):
        what = f"the PNG's text chunks inflate past {PngImagePlugin.MAX_TEXT_MEMORY} bytes in all"
    else:
        what = (f"a PNG metadata chunk (ICC profile, text or XMP) inflates past "
                f"{PngImagePlugin.MAX_TEXT_CHUNK} bytes")
    return ImageRejected("metadata_too_large", f"{what} (a possible decompression bomb)")


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels(f"{width}x{height} = {width * height}", limits)
    if min(width, height) < max(1, limits.min_side):
        raise ImageRejected("bad_dimensions", f"image is {width}x{height}; each side must be at "
                            f"least {limits.limit('min_side')}")
    if limits.max_aspect_ratio is not None:
        ratio = max(width, height) / min(width, height)
        if ratio > limits.max_aspect_ratio:
            raise ImageRejected("bad_dimensions", f"image is {width}x{height} (aspect ratio "
                                f"{ratio:.1f}); the limit is {limits.limit('max_aspect_ratio')}")


def _upright(image: Image.Image) -> Image.Image:
    """The picture turned as its EXIF Orientation tag says. Only that one value is read: the rest
    of the EXIF block is neither checked nor rewritten (`ImageOps.exif_transpose` re-serialises
    it, and raises on a malformed tag). Unreadable EXIF counts as no orientation."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # noqa: BLE001 - any damage inside the EXIF block
        logger.debug("ignoring unreadable EXIF (%s: %s)", type(exc).__name__, exc)
        return image
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


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


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit/32-bit/float greyscale scaled, alpha composited on white, palette and
    CMYK converted; ImageRejected for a mode Pillow cannot convert."""
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


@dataclass(frozen=True)
class Decoded:
    """A decoded picture with what its header said: `image` (RGB), the `width` x `height` pixels
    the file stores (before draft scaling and EXIF rotation) and its `format` (Pillow's name:
    JPEG, PNG, HEIF, ...; None when the reader gives none)."""

    image: Image.Image
    width: int
    height: int
    format: str | None


def decode_image(source: bytes | Path, limits: ImageLimits = ImageLimits(),
                 draft_size: int | None = None) -> Image.Image:
    """RGB image: EXIF orientation applied, L/LA/P/CMYK/RGBA/I;16/I/F converted (alpha composited on
    white), first frame of animated GIF / multi-frame TIFF, JPEG draft mode when draft_size is given
    (the decoder scales by 1/2, 1/4 or 1/8 while keeping both sides >= draft_size).

    Raises `ImageRejected` (reason in `REASONS`, a message saying what is wrong) on anything bad,
    and no other exception: a failure inside Pillow that has no better name is `corrupt`."""
    return decode(source, limits, draft_size).image


def decode(source: bytes | Path, limits: ImageLimits = ImageLimits(),
           draft_size: int | None = None) -> Decoded:
    """`decode_image`'s picture with its stored size and format (`Decoded`); the same errors."""
    data = _read(source, limits)
    try:
        return _decode(data, limits, draft_size)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        found = _PILLOW_PIXELS.search(str(exc))
        raise _too_many_pixels(found.group(1) if found else None, limits) from exc
    except Exception as exc:  # noqa: BLE001 - every other failure is this picture's fault
        raise ImageRejected("corrupt", f"the image cannot be decoded ({type(exc).__name__}: "
                            f"{exc}); send a JPEG or PNG image") from exc


def _claimed_formats(data: bytes) -> list[str]:
    """The formats whose signature the file starts with (each reader's own check of the first
    16 bytes, as `Image.open` does it; readers with no signature check are left out): a file
    that claims a format and still cannot be opened is that format damaged, not a non-image."""
    Image.init()
    prefix = data[:_PREFIX_BYTES]
    claimed = []
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            result = accept(prefix) if accept else False
        except Exception:  # noqa: BLE001 - a reader's check failing is not a claim
            result = False
        if result and not isinstance(result, str):
            claimed.append(name)
    return claimed


def _decode(data: bytes, limits: ImageLimits, draft_size: int | None) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        claimed = _claimed_formats(data)
        if claimed:
            raise ImageRejected("corrupt", f"the file starts as {' or '.join(claimed)} but its "
                                "header cannot be read (truncated or damaged)") from exc
        raise ImageRejected("not_an_image", "not a recognised image file; send a JPEG or PNG "
                            "image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ValueError) and _PNG_TEXT_LIMIT in str(exc):
            raise _metadata_too_large(exc) from exc
        claimed = _claimed_formats(data)
        reason = ("truncated" if "runcated" in str(exc) else "corrupt" if claimed
                  else "not_an_image")
        what = " or ".join(claimed) if claimed else "image"
        raise ImageRejected(reason, f"unreadable {what} header: {exc}") from exc
    _check_header(image, limits)
    width, height, kind = image.width, image.height, image.format
    if draft_size and image.format == "JPEG":
        image.draft(None, (draft_size, draft_size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if image.format != "HEIF":  # HEIF opens at its primary image, not always item 0
                image.seek(0)
            image.load()
            image = _upright(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ValueError) and _PNG_TEXT_LIMIT in str(exc):  # a chunk after IDAT
            raise _metadata_too_large(exc) from exc
        raise ImageRejected("truncated", f"image data is truncated or corrupt: {exc}") from exc
    return Decoded(to_rgb(image), width, height, kind)


def square(image: Image.Image, size: int) -> Image.Image:
    """Squash-resize to size x size with Pillow's antialiased BILINEAR filter (what torchvision's
    `Resize((size, size))` does to a PIL image; a picture already that size passes unchanged)."""
    return image.resize((size, size), Image.Resampling.BILINEAR)


def square_image(source: bytes | Path, size: int, limits: ImageLimits = ImageLimits()
                 ) -> Image.Image:
    """Decode (JPEG draft scaling only while at least `DRAFT_GAP` x size remains, as Pillow's own
    `thumbnail` does) and `square` to a size x size RGB image."""
    return square_decoded(source, size, limits).image


def square_decoded(source: bytes | Path, size: int, limits: ImageLimits = ImageLimits()
                   ) -> Decoded:
    """`square_image`'s size x size picture with the upload's stored size and format (one
    decode: the serving path keeps both)."""
    found = decode(source, limits, draft_size=size * DRAFT_GAP)
    return Decoded(square(found.image, size), found.width, found.height, found.format)
