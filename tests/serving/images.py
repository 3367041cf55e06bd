"""Pictures for the serving tests: valid odd formats, and every kind of bad input (bytes)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, features

import catsdogs.data.images  # noqa: F401 - registers pillow-heif: HEIC/HEIF read and write


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct RGB picture per seed: colour blocks plus noise, asymmetric (left != right)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    pixels[: height // 4, :] = (255, 255, 255)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """The picture stored rotated by 90 degrees with EXIF Orientation=6 (display: rotate back)."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def as_decoded(data: bytes, exif: bool = True) -> Image.Image:
    """The RGB pixels of an encoded file (EXIF orientation applied unless exif=False)."""
    image = Image.open(io.BytesIO(data))
    return (ImageOps.exif_transpose(image) if exif else image).convert("RGB")


def odd_formats(base: Image.Image) -> dict[str, tuple[bytes, Image.Image]]:
    """name -> (encoded file, the RGB picture the service should see)."""
    gray = base.convert("L")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgba = base.convert("RGBA")
    alpha = Image.new("L", base.size, 255)
    alpha.paste(0, (0, 0, base.width // 2, base.height))
    rgba.putalpha(alpha)
    white = Image.new("RGBA", base.size, (255, 255, 255, 255))
    rgba_seen = Image.alpha_composite(white, rgba).convert("RGB")
    la = gray.convert("LA")
    la.putalpha(alpha)
    la_seen = Image.alpha_composite(white, la.convert("RGBA")).convert("RGB")
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    cmyk = base.convert("CMYK")
    return {
        "grayscale.png": (encode(gray, "PNG"), gray.convert("RGB")),
        "palette.png": (encode(palette, "PNG"), palette.convert("RGB")),
        "rgba.png": (encode(rgba, "PNG"), rgba_seen),
        "la.png": (encode(la, "PNG"), la_seen),
        "cmyk.jpg": (encode(cmyk, "JPEG", quality=95),
                     as_decoded(encode(cmyk, "JPEG", quality=95))),
        "16bit.png": (encode(sixteen, "PNG"), gray.convert("RGB")),
        "image.webp": (encode(base, "WEBP", lossless=True), base),
        "exif-rotated.jpg": (exif_rotated_jpeg(base), as_decoded(exif_rotated_jpeg(base))),
        **issue_28_formats(base),
    }


def issue_28_formats(base: Image.Image) -> dict[str, tuple[bytes, Image.Image]]:
    """HEIC (an iPhone's default, here with EXIF Orientation=6), PNGs whose XMP packet (iTXt),
    comment (zTXt) or ICC profile (iCCP) inflates to 2-3 MB (past Pillow's default 1 MB) and an
    AVIF whose EXIF holds an XResolution stored as text: name -> (encoded file, the RGB picture
    the service should see)."""
    from tests.fuzzing import (
        odd_exif_avif,
        png_iccp_chunk,
        png_text_chunk,
        png_with_chunks,
        xmp_packet,
    )

    exif = Image.Exif()
    exif[0x0112] = 6
    heic = encode(base.transpose(Image.Transpose.ROTATE_90), "HEIF", quality=90,
                  exif=exif.tobytes())
    formats = {"iphone.heic": (heic, as_decoded(heic)),
               "big-xmp.png": (png_with_chunks(base, [png_text_chunk(xmp_packet(3_000_000))]),
                               base),
               "big-ztxt.png": (png_with_chunks(base, [png_text_chunk(
                   xmp_packet(3_000_000), key=b"Comment", compressed="zTXt")]), base),
               "big-icc.png": (png_with_chunks(base, [png_iccp_chunk(
                   np.random.default_rng(28).integers(0, 256, 2_000_000, np.uint8).tobytes())]),
                               base)}
    if features.check("avif"):
        odd, twin = odd_exif_avif(base)
        formats["odd-exif.avif"] = (odd, as_decoded(twin))
    return formats


def animated_gif() -> bytes:
    frames = [picture(i).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def multipage_tiff() -> bytes:
    frames = [picture(i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb) with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width // 8 + 1) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n"
            b"%%EOF\n")
