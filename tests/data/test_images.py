"""catsdogs.data.images.decode_image: every colour mode to RGB, every kind of bad input refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from catsdogs.data.images import (
    PNG_TEXT_CHUNK_LIMIT,
    PNG_TEXT_MEMORY_LIMIT,
    ImageLimits,
    ImageRejected,
    decode_image,
    square_decoded,
    square_image,
)
from tests.data.helpers import encode, noise_image, rotated_jpeg, sixteen_bit_png


@pytest.mark.parametrize(("mode", "fmt"), [
    ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("1", "PNG"),
    ("I", "TIFF"), ("F", "TIFF"), ("RGB", "WEBP"),
])
def test_every_mode_decodes_to_rgb(mode: str, fmt: str) -> None:
    image = decode_image(encode(noise_image(1, mode=mode), fmt))
    assert image.mode == "RGB"
    assert image.size == (120, 90)


def test_alpha_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert decode_image(encode(transparent, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    pixels = np.full((20, 30), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    image = decode_image(encode(Image.fromarray(pixels), "PNG"))
    assert image.getpixel((0, 0)) == (128, 128, 128)
    assert decode_image(sixteen_bit_png(3)).mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    assert decode_image(rotated_jpeg(1)).size == (90, 120)


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_draft_mode_keeps_at_least_the_requested_size() -> None:
    data = encode(noise_image(2, (1600, 1000)), "JPEG")
    image = decode_image(data, draft_size=224)
    assert image.size == (400, 250)  # decoded at 1/4 scale: both sides still >= 224
    assert decode_image(data).size == (1600, 1000)


def test_square_decoded_gives_the_stored_size_and_format_with_the_pixels() -> None:
    """The serving path's one decode: the file's stored size (before draft scaling and the EXIF
    turn) and format come back with the same pixels `square_image` gives."""
    rotated = rotated_jpeg(3)
    found = square_decoded(rotated, 32)
    assert (found.width, found.height, found.format) == (120, 90, "JPEG")
    assert found.image.size == (32, 32)
    assert np.array_equal(np.asarray(found.image), np.asarray(square_image(rotated, 32)))
    big = square_decoded(encode(noise_image(2, (1600, 1000)), "JPEG"), 224)  # drafted at 1/4
    assert (big.width, big.height) == (1600, 1000)
    png = square_decoded(encode(noise_image(4, mode="LA"), "PNG"), 16)
    assert (png.width, png.height, png.format, png.image.mode) == (120, 90, "PNG", "RGB")


def test_path_and_bytes_agree(tmp_path: Path) -> None:
    data = encode(noise_image(3), "PNG")
    (tmp_path / "x.png").write_bytes(data)
    assert decode_image(tmp_path / "x.png").tobytes() == decode_image(data).tobytes()


def _truncated() -> bytes:
    data = encode(noise_image(4, (400, 300)), "JPEG", quality=95)
    return data[: len(data) // 2]


@pytest.mark.parametrize(("data", "limits", "reason"), [
    (b"", ImageLimits(), "empty"),
    (b"plain text, not a picture", ImageLimits(), "not_an_image"),
    (_truncated(), ImageLimits(), "truncated"),
    (encode(noise_image(5), "PNG"), ImageLimits(max_bytes=100), "too_large"),
    (encode(noise_image(5), "PNG"), ImageLimits(max_pixels=1000), "too_many_pixels"),
    (encode(noise_image(5), "PNG"), ImageLimits(min_side=100), "bad_dimensions"),
    (encode(noise_image(5, (200, 10)), "PNG"), ImageLimits(max_aspect_ratio=10), "bad_dimensions"),
])
def test_bad_inputs_are_rejected_with_a_reason(data: bytes, limits: ImageLimits,
                                               reason: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, limits)
    assert caught.value.reason == reason
    assert str(caught.value)


def _cut(fmt: str, keep: float | int) -> bytes:
    data = encode(noise_image(8, (160, 120)), fmt, quality=90)
    return data[: keep if isinstance(keep, int) else int(len(data) * keep)]


@pytest.mark.parametrize(("data", "fmt"), [
    (_cut("HEIF", 200), "HEIF"),
    (_cut("PNG", 30), "PNG"),
    (_cut("WEBP", 30), "WEBP"),
    pytest.param(_cut("AVIF", 0.5) if features.check("avif") else b"", "AVIF",
                 marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF codec")),
], ids=["heic-header", "png-header", "webp-header", "avif-half"])
def test_a_damaged_picture_is_named_by_its_format(data: bytes, fmt: str) -> None:
    """Issue 28: a cut AVIF or HEIC was `not_an_image` ("send a JPEG or PNG image"), telling an
    iPhone user their photo is not a picture. A file that starts with a format's signature and
    cannot be opened is `corrupt`, and the message names the format."""
    with pytest.raises(ImageRejected) as caught:
        decode_image(data)
    assert caught.value.reason == "corrupt", caught.value
    assert fmt in str(caught.value)


def test_a_cut_heic_is_truncated() -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(_cut("HEIF", 0.5))
    assert caught.value.reason == "truncated"


def test_pixel_limit_is_checked_before_decoding() -> None:
    """A 20000x20000 PNG of zeros is tiny on disk; the header check refuses it unexpanded."""
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageRejected) as caught:
        decode_image(bomb)
    assert caught.value.reason == "too_many_pixels"


def test_broken_exif_still_rotates() -> None:
    """Issue 15: Orientation=6 beside an XResolution stored as ASCII text (ImageOps.exif_transpose
    raised TypeError re-writing it); the Orientation value alone is applied."""
    from tests.fuzzing import broken_exif

    data = encode(noise_image(6), "JPEG", exif=broken_exif())
    assert decode_image(data).size == (90, 120)


@pytest.mark.parametrize("corrupt_at", [4, 10, 24, 30])
def test_unreadable_exif_is_ignored_or_rejected(corrupt_at: int) -> None:
    from tests.fuzzing import broken_exif

    exif = bytearray(broken_exif())
    exif[corrupt_at] ^= 0xFF
    data = encode(noise_image(7), "JPEG", exif=bytes(exif))
    try:
        assert decode_image(data).mode == "RGB"
    except ImageRejected as exc:
        assert exc.reason in ("corrupt", "truncated", "not_an_image")


def test_bomb_message_names_our_limit() -> None:
    """Over Pillow's own bomb limit (2 x 89M pixels) the message still quotes the caller's."""
    limits = ImageLimits(max_pixels=1_000_000, names={"max_pixels": "CATSDOGS_MAX_PIXELS"})
    for size in ((30000, 30000), (2000, 2000)):
        bomb = encode(Image.new("1", size), "PNG")
        with pytest.raises(ImageRejected) as caught:
            decode_image(bomb, limits)
        assert caught.value.reason == "too_many_pixels"
        assert "1000000 pixels (CATSDOGS_MAX_PIXELS)" in str(caught.value)
        assert "178956970" not in str(caught.value)


# Issue 28: every valid picture in every format a client sends decodes through the one path.

def _xmp_png(size: int, **options: object) -> bytes:
    from tests.fuzzing import png_text_chunk, png_with_chunks, xmp_packet

    return png_with_chunks(noise_image(40), [png_text_chunk(xmp_packet(size), **options)])


def _big_metadata_pngs() -> dict[str, bytes]:
    from tests.fuzzing import png_iccp_chunk, png_text_chunk, png_with_chunks, xmp_packet

    rng = np.random.default_rng(41)
    profile = rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()  # does not compress
    return {"3 MB XMP (iTXt)": _xmp_png(3_000_000),
            "3 MB text (zTXt)": _xmp_png(3_000_000, key=b"Comment", compressed="zTXt"),
            "3 MB ICC profile": png_with_chunks(noise_image(40), [png_iccp_chunk(profile)]),
            "3 MB XMP after the pixels": png_with_chunks(
                noise_image(40), [png_text_chunk(xmp_packet(3_000_000))], after_pixels=True)}


@pytest.mark.parametrize("case", sorted(_big_metadata_pngs()))
def test_png_with_big_metadata_decodes(case: str) -> None:
    """Pillow's default refuses any text/ICC chunk inflating past 1 MB (`not_an_image`)."""
    data = _big_metadata_pngs()[case]
    image = decode_image(data)
    assert image.mode == "RGB" and image.size == (120, 90)
    assert image.tobytes() == noise_image(40).tobytes()  # PNG is lossless


def _metadata_bombs() -> dict[str, bytes]:
    from tests.fuzzing import png_iccp_chunk, png_text_chunk, png_with_chunks

    over = PNG_TEXT_CHUNK_LIMIT + 1024 * 1024
    image = noise_image(42)
    return {"XMP (iTXt) over the chunk limit": png_with_chunks(image, [png_text_chunk(b"\0" * over)]),
            "ICC profile over the chunk limit": png_with_chunks(image, [png_iccp_chunk(b"\0" * over)]),
            "text after the pixels over the chunk limit": png_with_chunks(
                image, [png_text_chunk(b"\0" * over)], after_pixels=True),
            "5 text chunks over the total limit": png_with_chunks(image, [
                png_text_chunk(b"a" * (PNG_TEXT_CHUNK_LIMIT - 1), key=b"k%d" % k,
                               compressed="zTXt") for k in range(5)])}


@pytest.mark.parametrize("case", sorted(_metadata_bombs()))
def test_png_metadata_bomb_is_refused(case: str) -> None:
    """A zlib bomb in a metadata chunk (a few KB inflating past the documented bound) is still
    refused, with its own reason, before or after the pixel data."""
    data = _metadata_bombs()[case]
    assert len(data) < 200_000
    with pytest.raises(ImageRejected) as caught:
        decode_image(data)
    assert caught.value.reason == "metadata_too_large"
    assert "decompression bomb" in str(caught.value)
    assert str(PNG_TEXT_MEMORY_LIMIT if "total" in case else PNG_TEXT_CHUNK_LIMIT) in str(caught.value)


def test_png_limits_are_only_ever_raised() -> None:
    """Set at import for the whole process: an application that allows more keeps its value."""
    from PIL import PngImagePlugin

    from catsdogs.data import images

    assert PngImagePlugin.MAX_TEXT_CHUNK >= PNG_TEXT_CHUNK_LIMIT
    assert PngImagePlugin.MAX_TEXT_MEMORY >= PNG_TEXT_MEMORY_LIMIT
    saved = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    try:
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = 1 << 30, 1 << 31
        images._raise_png_text_limits()
        assert (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY) == (1 << 30, 1 << 31)
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = 1024, 2048
        images._raise_png_text_limits()
        assert (PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY) == (
            PNG_TEXT_CHUNK_LIMIT, PNG_TEXT_MEMORY_LIMIT)
    finally:
        PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = saved


needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")


@needs_avif
def test_avif_decodes_upright() -> None:
    image = noise_image(43)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "AVIF", quality=90, exif=exif.tobytes()))
    assert decoded.size == (90, 120)


@needs_avif
def test_avif_with_odd_exif_decodes_upright() -> None:
    """Issue 28: EXIF Orientation beside an XResolution stored as text. The container rotates the
    picture (irot) and its EXIF block says Orientation=1: Pillow re-wrote the block to match,
    raised on the text XResolution, and the file was `not_an_image`. Now it opens, turned as the
    file says, pixel for pixel what the same file with a well-formed XResolution gives."""
    from PIL import AvifImagePlugin

    from tests.fuzzing import odd_exif_avif

    odd, twin = odd_exif_avif(_smooth(44))
    with pytest.raises(SyntaxError):  # Pillow's own reader (the reproduction)
        AvifImagePlugin.AvifImageFile(io.BytesIO(odd))
    # the odd tag is really in the file: XResolution (0x011A), ASCII (2), 3 bytes, "72"
    assert b"\x01\x1a\x00\x02\x00\x00\x00\x0372\x00" in odd
    assert b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01" in odd  # Orientation (SHORT) = 1
    decoded = decode_image(odd)
    assert decoded.size == (90, 120)
    assert decoded.tobytes() == decode_image(twin).tobytes()
    upright = _smooth(44).transpose(Image.Transpose.ROTATE_270)
    assert _mean_difference(decoded, upright) < 8  # lossy, but the same picture, same way up


@needs_avif
def test_avif_with_odd_exif_and_orientation_only_in_exif() -> None:
    """No irot, EXIF Orientation=6: AVIF readers (libavif, browsers, Pillow) follow the container,
    so the picture is not turned; the odd XResolution no longer makes it undecodable."""
    from tests.fuzzing import odd_exif_avif

    odd, twin = odd_exif_avif(noise_image(45), orientation_in_exif_only=True)
    decoded = decode_image(odd)
    assert decoded.size == (120, 90)
    assert decoded.tobytes() == decode_image(twin).tobytes()


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def _smooth(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    """Colour blocks (lossy codecs keep them; noise they do not)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for left in range(0, size[0], 30):
        pixels[:, left:left + 30] = rng.integers(0, 256, 3, dtype=np.uint8)
    pixels[: size[1] // 3] = (250, 250, 250)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("suffix", ["heic", "heif"])
def test_heic_decodes(tmp_path: Path, suffix: str) -> None:
    """What iPhones upload by default (pillow-heif, registered by the decode module)."""
    picture = _smooth(46)
    data = encode(picture, "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"
    (tmp_path / f"photo.{suffix}").write_bytes(data)
    for source in (data, tmp_path / f"photo.{suffix}"):
        decoded = decode_image(source)
        assert decoded.mode == "RGB" and decoded.size == (120, 90)
        assert _mean_difference(decoded, picture) < 6


@pytest.mark.parametrize("exif", ["orientation", "broken"])
def test_heic_orientation_is_applied_once(exif: str) -> None:
    """libheif turns the picture as the file says (irot) and pillow-heif resets the EXIF
    Orientation to 1, so `_upright` does not turn it a second time; a broken EXIF block (issue 15's
    XResolution stored as text) changes nothing."""
    from tests.fuzzing import broken_exif

    picture = _smooth(47)
    if exif == "orientation":
        block = Image.Exif()
        block[0x0112] = 6
        data = encode(picture, "HEIF", quality=90, exif=block.tobytes())
    else:
        data = encode(picture, "HEIF", quality=90, exif=broken_exif())
    decoded = decode_image(data)
    assert decoded.size == (90, 120)
    assert _mean_difference(decoded, picture.transpose(Image.Transpose.ROTATE_270)) < 6


def test_heic_with_transparency_and_several_images() -> None:
    """Alpha is composited on white like PNG's; of several images the primary one is decoded (not
    necessarily the first item)."""
    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    assert decode_image(encode(rgba, "HEIF", quality=90)).getpixel((5, 5)) == (255, 255, 255)
    first, primary = _smooth(48, (64, 48)), _smooth(49, (48, 96))
    data = encode(first, "HEIF", quality=90, save_all=True, append_images=[primary],
                  primary_index=1)
    decoded = decode_image(data)
    assert decoded.size == (48, 96) and _mean_difference(decoded, primary) < 6


def test_square_image_of_heic_and_avif() -> None:
    from catsdogs.data.images import square_image

    for fmt in ("HEIF", "AVIF") if features.check("avif") else ("HEIF",):
        squared = square_image(encode(_smooth(50, (400, 300)), fmt, quality=90), 64)
        assert squared.mode == "RGB" and squared.size == (64, 64)


def test_heic_too_many_pixels_is_checked_from_the_header() -> None:
    data = encode(_smooth(51, (400, 300)), "HEIF", quality=50)
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, ImageLimits(max_pixels=100_000))
    assert caught.value.reason == "too_many_pixels"
