"""Mutated picture files for the fuzz tests (decode_image and the running service).

Seeds are real encodings of one picture in JPEG (with EXIF orientation and resolution tags and an
ICC profile), PNG (with eXIf and iCCP chunks), WebP (with EXIF and ICC), animated GIF and
multi-page TIFF, plus the broken-EXIF JPEG of issue 15. A hypothesis strategy picks a seed and 1-4
mutations: byte overwrites anywhere, inside the first 512 bytes (headers), inside the EXIF block or
the ICC profile; 16/32-bit length or offset fields set to 0, small, huge or random values; slices
deleted, duplicated or inserted; the file truncated.

Bounded by default; `CATSDOGS_FUZZ_EXAMPLES=N` runs N cases per fuzz test instead.
"""

from __future__ import annotations

import io
import os
import struct
from functools import cache

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

FUZZ_EXAMPLES = int(os.environ.get("CATSDOGS_FUZZ_EXAMPLES", "0") or 0)
FUZZ_SETTINGS = settings(deadline=None, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])


def examples(default: int) -> settings:
    """Hypothesis settings running `default` cases, or $CATSDOGS_FUZZ_EXAMPLES when set."""
    return settings(FUZZ_SETTINGS, max_examples=FUZZ_EXAMPLES or default)


def broken_exif() -> bytes:
    """An EXIF block saying Orientation=6 whose XResolution is the ASCII text "72" (a RATIONAL in
    the standard): the kind of tag that made `ImageOps.exif_transpose` raise TypeError."""
    entries = [struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">HH", 6, 0),
               struct.pack(">HHI", 0x011A, 2, 3) + b"72\x00\x00"]
    ifd = struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", 0)
    return b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd


def _picture(size: tuple[int, int] = (72, 48)) -> Image.Image:
    rng = np.random.default_rng(15)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 3] = (200, 30, 30)
    return Image.fromarray(pixels, "RGB")


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@cache
def seeds() -> dict[str, bytes]:
    """name -> a valid file (each decodes to RGB)."""
    picture = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = 72.0
    exif[0x0110] = "fuzz camera"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    frames = [_picture((40, 30)).convert("P"), _picture((40, 30)).rotate(90).convert("P")]
    return {
        "exif-icc.jpg": _save(picture, "JPEG", quality=85, exif=exif.tobytes(), icc_profile=icc),
        "broken-exif.jpg": _save(picture, "JPEG", quality=85, exif=broken_exif()),
        "progressive.jpg": _save(picture, "JPEG", quality=70, progressive=True),
        "exif-icc.png": _save(picture.convert("RGBA"), "PNG", exif=exif.tobytes(),
                              icc_profile=icc),
        "palette.png": _save(picture.convert("P"), "PNG", transparency=0),
        "exif-icc.webp": _save(picture, "WEBP", quality=80, exif=exif.tobytes(),
                               icc_profile=icc),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "pages.tiff": _save(picture, "TIFF", save_all=True, exif=exif,
                            append_images=[picture.rotate(180)]),
        "sixteen-bit.tiff": _save(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "TIFF"),
    }


def _region(data: bytes, marker: bytes) -> tuple[int, int]:
    start = data.find(marker)
    return (0, len(data)) if start < 0 else (start, min(len(data), start + 2048))


def _mutate(data: bytes, kind: str, where: str, at: float, value: int, span: int) -> bytes:
    low, high = {"anywhere": (0, len(data)), "header": (0, min(len(data), 512)),
                 "exif": _region(data, b"Exif"), "icc": _region(data, b"ICC_PROFILE")
                 if b"ICC_PROFILE" in data else _region(data, b"iCCP")}[where]
    pos = low + int(at * max(0, high - low - 1))
    if kind == "byte":
        return data[:pos] + bytes([value & 0xFF]) + data[pos + 1:]
    if kind in ("u16", "u32"):
        width = 2 if kind == "u16" else 4
        number = [0, 1, 0xFF, (1 << (8 * width)) - 1, value % (1 << (8 * width))][value % 5]
        packed = number.to_bytes(width, "big" if value & 8 else "little")
        return data[:pos] + packed + data[pos + width:]
    if kind == "delete":
        return data[:pos] + data[pos + span:]
    if kind == "duplicate":
        return data[:pos] + data[pos:pos + span] * 2 + data[pos + span:]
    if kind == "insert":
        return data[:pos] + bytes([value & 0xFF]) * span + data[pos:]
    return data[:pos]  # truncate


mutation = st.tuples(
    st.sampled_from(["byte", "byte", "u16", "u32", "delete", "duplicate", "insert",
                     "truncate"]),
    st.sampled_from(["anywhere", "header", "exif", "exif", "icc"]),
    st.floats(0, 1, allow_nan=False),
    st.integers(0, 2**32),
    st.integers(1, 64))


mutations = st.lists(mutation, min_size=1, max_size=4)


def mutate(data: bytes, changes: list[tuple[str, str, float, int, int]]) -> bytes:
    """`data` with each drawn mutation applied in turn."""
    for kind, where, at, value, span in changes:
        data = _mutate(data, kind, where, at, value, span)
    return data


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(seed name, mutated bytes) for one fuzz case."""
    name = draw(st.sampled_from(sorted(seeds())))
    return name, mutate(seeds()[name], draw(mutations))
