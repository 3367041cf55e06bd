"""Helpers for the data-stage tests: generated images, file trees, the `catsdogs` command."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.fake_kaggle import FakeKaggle

REPO = Path(__file__).resolve().parents[2]
CATSDOGS = Path(sys.executable).with_name("catsdogs")


def noise_image(seed: int, size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    """A random-noise picture (unique per seed, so no accidental duplicates)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def sixteen_bit_png(seed: int) -> bytes:
    values = np.random.default_rng(seed).integers(0, 65535, size=(80, 100), dtype=np.uint16)
    return encode(Image.fromarray(values), "PNG")


def rotated_jpeg(seed: int) -> bytes:
    """A 120x90 JPEG whose EXIF says "rotate 90°" (orientation 6): it displays as 90x120."""
    image = noise_image(seed)
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif)


def good_files(label: str, count: int, start: int) -> dict[str, bytes]:
    return {f"{label}/{label}.{i}.jpg": encode(noise_image(start + i), "JPEG", quality=90)
            for i in range(count)}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def messy_files() -> dict[str, bytes]:
    """Class folders with good images in every colour mode plus one bad file of each kind.

    Raw: 21 cat and 15 dog files (4 undecodable). Expected after prepare: 13 cats and
    14 dogs kept; dropped: empty, not_an_image (x2),
    truncated, bad_extension, too_small, duplicate, label_conflict (x2).
    """
    cat_jpeg = encode(noise_image(900), "JPEG")
    shared = encode(noise_image(901), "JPEG")
    truncated = encode(noise_image(902, (400, 300)), "JPEG", quality=95)
    files = {
        **good_files("cat", 5, 0),
        **good_files("dog", 5, 100),
        "cat/mode_l.png": encode(noise_image(1, mode="L"), "PNG"),
        "cat/mode_la.png": encode(noise_image(2, mode="LA"), "PNG"),
        "cat/mode_p.png": encode(noise_image(3, mode="P"), "PNG"),
        "cat/mode_cmyk.jpg": encode(noise_image(4, mode="CMYK"), "JPEG"),
        "cat/mode_rgba.png": encode(noise_image(5, mode="RGBA"), "PNG"),
        "cat/sixteen_bit.png": sixteen_bit_png(6),
        "cat/rotated.jpg": rotated_jpeg(7),
        "dog/mode_l.jpg": encode(noise_image(11, mode="L"), "JPEG"),
        "dog/mode_p_transparent.png": encode(noise_image(12, mode="P"), "PNG", transparency=0),
        "dog/extra1.jpeg": encode(noise_image(13), "JPEG"),
        "dog/extra2.jpg": encode(noise_image(14), "JPEG"),
        "dog/extra3.png": encode(noise_image(15), "PNG"),
        "dog/extra4.jpg": encode(noise_image(16), "JPEG"),
        "dog/extra5.jpg": encode(noise_image(17), "JPEG"),
        "dog/extra6.jpg": encode(noise_image(18), "JPEG"),
        "dog/extra7.jpg": encode(noise_image(19), "JPEG"),
        # bad files, one of each kind
        "cat/zero_bytes.jpg": b"",
        "cat/text_named.jpg": b"this is not a picture\n",
        "cat/notes.txt": b"a stray non-image file\n",
        "cat/truncated.jpg": truncated[: len(truncated) // 2],
        "cat/animated.gif": encode(noise_image(20, mode="P"), "GIF", save_all=True,
                                   append_images=[noise_image(22, mode="P")]),
        "cat/tiny.jpg": encode(noise_image(21, (20, 20)), "JPEG"),
        "cat/original.jpg": cat_jpeg,
        "cat/original_copy.jpg": cat_jpeg,
        "cat/both_labels.jpg": shared,
        "dog/both_labels.jpg": shared,
        # clutter that ingest leaves out
        "cat/Thumbs.db": b"\x00" * 10,
        ".DS_Store": b"\x00",
    }
    return files


MESSY_KEPT = {"cat": 13, "dog": 14}
MESSY_OVERRIDES = ["validation.min_decodable_fraction=0.8"]  # 4 of 36 files do not decode
EXPECTED_DROPS = {"empty": 1, "not_an_image": 2, "truncated": 1, "bad_extension": 1,
                  "too_small": 1, "duplicate": 1, "label_conflict": 2}


def kaggle_env(state: FakeKaggle, home: Path, data_dir: Path, credentials: bool = True
               ) -> dict[str, str]:
    """Environment for a `catsdogs` process whose real Kaggle client reaches the fake API."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("no_proxy", "http_proxy") and not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), KAGGLE_API_ENVIRONMENT="LOCALHOST", CATSDOGS_DATA_DIR=str(data_dir),
               HTTP_PROXY=f"http://127.0.0.1:{state.port}")
    if credentials:
        env.update(KAGGLE_USERNAME=state.username, KAGGLE_KEY=state.key)
    return env


def catsdogs(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `catsdogs` command."""
    return subprocess.run([str(CATSDOGS), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def zip_of(root: Path) -> bytes:
    """A zip (in memory) of `root`, paths starting with root's own name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(root.parent).as_posix())
    return buffer.getvalue()


def smooth_jpeg(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    """A JPEG of large smooth blobs (a 4x4 random image scaled up; unique per seed): unlike
    noise, a resized or re-encoded copy keeps its average hash, as a photo does."""
    cells = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return encode(Image.fromarray(cells, "RGB").resize(size, Image.Resampling.BICUBIC), "JPEG",
                  quality=90)


def label_pictures(url: str, kept: Path, pictures: list[tuple[bytes, str]], seed: int,
                   first: dt.datetime, answered: dt.datetime | None = None) -> None:
    """Labelled production pictures, as the service makes them: predictions (answered at
    `answered`, default now) written by `PredictionLog` with their upload kept (picture sampling
    on) into `kept`, each then labelled (`pictures`: bytes and label), an hour apart from
    `first`."""
    import dataclasses

    from catsdogs.monitoring.keeping import RANDOM
    from catsdogs.monitoring.prediction_log import PredictionLog
    from tests.monitoring.test_prediction_log import record

    writer = PredictionLog(url, batch_rows=1, flush_s=0.05, sample_dir=kept).start()
    # kept as the service keeps an upload its policy chose (`kept_for` beside the bytes)
    records = [dataclasses.replace(record(seed + i, when=answered, picture=data), kept_for=RANDOM)
               for i, (data, _label) in enumerate(pictures)]
    assert all(writer.submit(r) for r in records)
    for i, (answer, (_data, label)) in enumerate(zip(records, pictures, strict=True)):
        assert writer.label(answer.prediction_id, label, first + dt.timedelta(hours=i))
    writer.close()
