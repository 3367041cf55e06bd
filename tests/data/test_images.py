"""catsdogs.data.images.decode_image: every colour mode to RGB, every kind of bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsdogs.data.images import ImageLimits, ImageRejected, decode_image
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
