"""Fuzzing `decode_image`: whatever the bytes, an RGB picture or `ImageRejected`, never another
exception (the mutations: tests/fuzzing.py). `CATSDOGS_FUZZ_EXAMPLES=20000` for a long run."""

from __future__ import annotations

from hypothesis import given

from catsdogs.data.images import ImageLimits, ImageRejected, decode_image, square_image
from tests.fuzzing import examples, mutated_files, seeds

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000, min_side=1,
                     max_aspect_ratio=100)


def test_every_seed_decodes() -> None:
    for name, data in seeds().items():
        assert decode_image(data, LIMITS).mode == "RGB", name


@examples(400)
@given(mutated_files())
def test_mutated_files_decode_or_are_rejected(case: tuple[str, bytes]) -> None:
    _name, data = case
    try:
        image = decode_image(data, LIMITS)
    except ImageRejected as exc:
        assert exc.reason and str(exc)
        return
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1


@examples(100)
@given(mutated_files())
def test_mutated_files_through_square_image_with_draft(case: tuple[str, bytes]) -> None:
    _name, data = case
    try:
        image = square_image(data, 32, LIMITS)
    except ImageRejected:
        return
    assert image.mode == "RGB" and image.size == (32, 32)
