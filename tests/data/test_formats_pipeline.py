"""Issue 28 in the pipeline: HEIC/HEIF photos (iPhone) in a class folder, PNGs whose XMP, zTXt
comment or ICC profile inflates past Pillow's default 1 MB and AVIFs whose EXIF carries an
Orientation beside an XResolution stored as text are pictures like any other: validate counts them
decodable, prepare keeps them, transform squares them (the same decode path as the service)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, features

from catsdogs.config import load_params
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate
from tests.data.helpers import REPO, encode, good_files, noise_image, write_tree
from tests.fuzzing import (
    odd_exif_avif,
    png_iccp_chunk,
    png_text_chunk,
    png_with_chunks,
    xmp_packet,
)

AVIF_KINDS = ("cat/odd_exif.avif", "dog/odd_exif_only.avif") if features.check("avif") else ()
NEW_KINDS = ("cat/iphone.heic", "dog/photo.heif", "cat/big_xmp.png", "dog/big_icc.png",
             "dog/rotated.heic", "cat/big_comment.png", *AVIF_KINDS)


def _new_kinds() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6
    profile = np.random.default_rng(60).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes()
    avif = {}
    if AVIF_KINDS:  # the irot-rotated one, and the one with its orientation in EXIF alone
        avif = {AVIF_KINDS[0]: odd_exif_avif(noise_image(66, (160, 120)))[0],
                AVIF_KINDS[1]: odd_exif_avif(noise_image(67, (160, 120)), True)[0]}
    return {
        **avif,
        "cat/big_comment.png": png_with_chunks(noise_image(68), [png_text_chunk(
            xmp_packet(3_000_000), key=b"Comment", compressed="zTXt")]),
        "cat/iphone.heic": encode(noise_image(61, (160, 120)), "HEIF", quality=90),
        "dog/photo.heif": encode(noise_image(62, (160, 120)), "HEIF", quality=90),
        "cat/big_xmp.png": png_with_chunks(noise_image(63), [png_text_chunk(xmp_packet(3_000_000))]),
        "dog/big_icc.png": png_with_chunks(noise_image(64), [png_iccp_chunk(profile)]),
        "dog/rotated.heic": encode(noise_image(65, (160, 120)), "HEIF", quality=90,
                                   exif=exif.tobytes()),
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_heic_and_big_metadata_pngs_are_validated_kept_and_transformed(tmp_path: Path) -> None:
    files = {**good_files("cat", 5, 0), **good_files("dog", 5, 100), **_new_kinds()}
    raw = write_tree(tmp_path / "photos", files)
    paths = DataPaths(tmp_path / "data")
    params = load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                                "validation.min_decodable_fraction=1.0",
                                                "transform.image_size=64"])
    ingest.run(params, paths, source=f"dir:{raw}")

    validate.run(params, paths)
    facts = json.loads((paths.validation_reports / "summary.json").read_text())
    assert facts["success"] is True and facts["files"] == facts["decodable"] == len(files)
    inspected = {row["path"]: row for row in _rows(paths.validation_reports / "files.csv")}
    for name in NEW_KINDS:
        assert inspected[name]["decodable"] == "True", inspected[name]
    assert inspected["cat/iphone.heic"]["format"] == "HEIF"
    assert inspected["dog/rotated.heic"]["width"] == "120"  # libheif applied the rotation
    if AVIF_KINDS:
        assert inspected["cat/odd_exif.avif"]["format"] == "AVIF"
        assert inspected["dog/odd_exif_only.avif"]["format"] == "AVIF"

    prepare.run(params, paths)
    assert _rows(paths.prepared / "dropped.csv") == []
    kept = {row["path"]: row for row in _rows(paths.prepared_manifest)}
    assert set(NEW_KINDS) <= set(kept)
    eda = json.loads((paths.eda / "eda.json").read_text())
    assert eda["formats"].get("HEIF") == 3
    assert eda["formats"].get("AVIF") == (2 if AVIF_KINDS else None)

    transform.run(params, paths)
    sources = {row["source"]: row["path"] for row in _rows(paths.transformed / "splits.csv")}
    for name in NEW_KINDS:
        with Image.open(paths.transformed / sources[name]) as out:
            assert out.size == (64, 64) and out.mode == "RGB"
