"""Mutated picture files for the fuzz tests (decode_image and the running service).

Seeds are real encodings of one picture in JPEG (with EXIF orientation and resolution tags and an
ICC profile), PNG (with eXIf and iCCP chunks), WebP (with EXIF and ICC), animated GIF and
multi-page TIFF, plus the broken-EXIF JPEG of issue 15, and (issue 28) AVIF (with EXIF and ICC, and
the odd-EXIF one), HEIC (with EXIF, and with the broken EXIF) and a PNG whose XMP packet inflates
past Pillow's default 1 MB text-chunk limit. A hypothesis strategy picks a seed and 1-4
mutations: byte overwrites anywhere, inside the first 512 bytes (headers), inside the EXIF block,
the ICC profile or a PNG text chunk; 16/32-bit length or offset fields set to 0, small, huge or
random values; slices deleted, duplicated or inserted; the file truncated.

Bounded by default; `CATSDOGS_FUZZ_EXAMPLES=N` runs N cases per fuzz test instead.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from functools import cache

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

import catsdogs.data.images  # noqa: F401 - registers pillow-heif (HEIC/HEIF read and write)

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


def _exif(entries: list[tuple[int, int, bytes]]) -> bytes:
    """A big-endian EXIF block of (tag, TIFF type, 4-byte value) entries, count 1 (ASCII: 3)."""
    body = [struct.pack(">HHI", tag, kind, 3 if kind == 2 else 1) + value
            for tag, kind, value in entries]
    ifd = struct.pack(">H", len(body)) + b"".join(body) + struct.pack(">I", 0)
    return b"Exif\x00\x00MM\x00\x2a" + struct.pack(">I", 8) + ifd


def _short(value: int) -> bytes:
    return struct.pack(">HH", value, 0)


def odd_exif_avif(image: Image.Image, orientation_in_exif_only: bool = False) -> tuple[bytes, bytes]:
    """(the odd AVIF, its well-formed twin) of issue 28: an AVIF whose EXIF block carries an
    Orientation tag and an XResolution stored as ASCII text "72" (a RATIONAL in the standard).

    Pillow cannot write such EXIF (it re-serialises the block and raises), so the twin is written
    with two stand-in tags of the same sizes, Compression (SHORT) and Make (ASCII "72"), and the
    odd file is the twin with those two tag numbers changed in place. Default: the container
    rotates by 90 degrees (irot, from an Orientation=6 Pillow moves there) and the EXIF block says
    Orientation=1, as libavif's tools leave it; `orientation_in_exif_only`: no irot, the EXIF
    block says Orientation=6 (AVIF viewers and Pillow follow the container: not turned)."""
    entries = [(0x0103, 3, _short(6 if orientation_in_exif_only else 1)),
               (0x010F, 2, b"72\x00\x00")]
    if not orientation_in_exif_only:
        entries.append((0x0112, 3, _short(6)))
    twin = _save(image, "AVIF", quality=90, exif=_exif(entries))
    stand_ins = (b"\x01\x03\x00\x03", b"\x01\x0f\x00\x02")
    assert all(twin.count(tag) == 1 for tag in stand_ins)
    odd = twin.replace(stand_ins[0], b"\x01\x12\x00\x03").replace(stand_ins[1],
                                                                    b"\x01\x1a\x00\x02")
    return odd, twin


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunks(image: Image.Image, chunks: list[bytes], after_pixels: bool = False) -> bytes:
    """A PNG of `image` with extra chunks (`png_text_chunk`, `png_iccp_chunk`) before its image
    data, or after it."""
    data = _save(image, "PNG")
    at = data.find(b"IEND" if after_pixels else b"IDAT") - 4
    return data[:at] + b"".join(chunks) + data[at:]


def png_text_chunk(text: bytes, key: bytes = b"XML:com.adobe.xmp", compressed: str = "iTXt"
                   ) -> bytes:
    """A compressed text chunk: iTXt (how XMP is stored) or zTXt."""
    if compressed == "zTXt":
        return _png_chunk(b"zTXt", key + b"\x00\x00" + zlib.compress(text, 9))
    return _png_chunk(b"iTXt", key + b"\x00\x01\x00\x00\x00" + zlib.compress(text, 9))


def png_iccp_chunk(profile: bytes) -> bytes:
    return _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile, 9))


def png_bomb_chunk(inflated: int, kind: str = "iCCP") -> bytes:
    """An iCCP or zTXt chunk whose body inflates to `inflated` zero bytes (a decompression bomb
    in metadata: 200 MB deflate to about 200 KB), compressed 1 MiB at a time."""
    packer = zlib.compressobj(9)
    block = bytes(1 << 20)
    stream = b"".join(packer.compress(block[: min(len(block), inflated - at)])
                      for at in range(0, inflated, len(block))) + packer.flush()
    head = b"ICC profile" if kind == "iCCP" else b"Comment"
    return _png_chunk(kind.encode(), head + b"\x00\x00" + stream)


def xmp_packet(size: int) -> bytes:
    """An XMP packet of about `size` bytes (keywords repeated, as big Lightroom exports are)."""
    item = b"<rdf:li>cat, pet, whiskers</rdf:li>"
    head = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            b"<rdf:RDF><rdf:Description><dc:subject><rdf:Bag>")
    tail = b"</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    return head + item * max(1, (size - len(head) - len(tail)) // len(item)) + tail


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
        "exif-icc.avif": _save(picture, "AVIF", quality=80, exif=exif.tobytes(), icc_profile=icc),
        "odd-exif.avif": odd_exif_avif(picture)[0],
        "exif.heic": _save(picture, "HEIF", quality=80, exif=exif.tobytes()),
        "broken-exif.heic": _save(picture, "HEIF", quality=80, exif=broken_exif()),
        "big-xmp.png": png_with_chunks(picture, [png_text_chunk(xmp_packet(1_500_000))]),
    }


def _region(data: bytes, *markers: bytes) -> tuple[int, int]:
    """2 KB from the first of `markers` found (in that order of preference), else all of `data`."""
    for marker in markers:
        start = data.find(marker)
        if start >= 0:
            return start, min(len(data), start + 2048)
    return 0, len(data)


_WHERE = {"exif": (b"Exif", b"MM\x00\x2a", b"II\x2a\x00"),
          "icc": (b"ICC_PROFILE", b"iCCP", b"colr"),  # JPEG/WebP, PNG, AVIF/HEIC
          "text": (b"iTXt", b"zTXt", b"iloc")}  # PNG text chunks; AVIF/HEIC item locations


def _mutate(data: bytes, kind: str, where: str, at: float, value: int, span: int) -> bytes:
    if where == "anywhere":
        low, high = 0, len(data)
    elif where == "header":
        low, high = 0, min(len(data), 512)
    else:
        low, high = _region(data, *_WHERE[where])
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
    st.sampled_from(["anywhere", "header", "exif", "exif", "icc", "text"]),
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
