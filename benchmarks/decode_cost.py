"""Decode cost: CPU per picture of ways to turn an upload into the service's 224 px pixels.

    python benchmarks/decode_cost.py [--photos 200] [--repeats 5] [--size 224] [--upscale 1]

Every way is measured on the same real photos (../shared/data/petimages-sample, cats and dogs
alike), one thread (torch too), with `time.thread_time()` around the decode and around the
resize; the repetitions are interleaved (each repetition runs every way over all photos, the
order rotating), and the table gives the median over repetitions of the mean CPU ms a picture.
The ways:
- `square_image`: what the service and training's transform stage use
  (catsdogs.data.images.square_image): Pillow decode with JPEG draft (DCT-domain downscaling by
  1/2, 1/4 or 1/8 while both sides stay >= DRAFT_GAP x size), EXIF orientation, RGB, then the
  antialiased BILINEAR squash resize (`square`);
- `no draft`: the same decode at full size, the same resize;
- `torchvision decode_jpeg`: `torchvision.io.decode_jpeg` (libjpeg-turbo, RGB, EXIF orientation)
  at full size, then the same Pillow resize on its pixels (torchvision cannot scale in the DCT
  domain; a file it cannot decode counts as a failure);
- `draft to 1x size`: draft allowed down to the output size itself (DRAFT_GAP 1), the same resize.
The sample's photos are small (Kaggle's PetImages, mostly ~500x375), too small for any draft
scaling at 224 px; `--upscale 4` re-encodes each photo 4x larger (LANCZOS, JPEG quality 90),
the size of a phone photo, where draft matters. The table counts the pictures each way decoded
at less than full size ("scaled in decode").
Each is checked against `square_image` pixel for pixel (what training stores and the parity
tests in tests/training/test_cache.py hold the service to): max abs difference, share of
differing uint8 values and pictures with any difference. A way that changes pixels changes what
the network was trained on, whatever it saves.

Own timing loop rather than timeit/pyperf: the measure is CPU time per picture across a set of
different files, interleaved between the ways, which neither gives directly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT.parent / "shared" / "data" / "petimages-sample"
sys.path.insert(0, str(REPO_ROOT / "include"))

from catsdogs.inference.compute import cpu_description  # noqa: E402

# a way: bytes, size -> (decoded picture, function that resizes it to size x size RGB uint8)
Way = Callable[[bytes, int], tuple[object, Callable[[object], np.ndarray]]]


def pil_way(draft_gap: int | None) -> Way:
    """Pillow decode (draft to draft_gap x size when given; None: full size), then `square`."""
    from catsdogs.data.images import decode_image, square

    def decode(data: bytes, size: int) -> tuple[object, Callable[[object], np.ndarray]]:
        image = decode_image(data, draft_size=size * draft_gap if draft_gap else None)
        return image, lambda picture: np.asarray(square(picture, size))  # type: ignore[arg-type]

    return decode


def torchvision_way() -> Way:
    """torchvision's decode_jpeg (RGB, EXIF orientation), then `square` on its pixels."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from catsdogs.data.images import square

    def decode(data: bytes, size: int) -> tuple[object, Callable[[object], np.ndarray]]:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.RGB, apply_exif_orientation=True)
        return pixels, lambda p: np.asarray(square(Image.fromarray(
            p.permute(1, 2, 0).numpy()), size))  # type: ignore[union-attr]

    return decode


def parity(reference: list[np.ndarray], other: list[np.ndarray | None]) -> tuple[int, float, int]:
    """(max abs difference, share of differing uint8 values, pictures with any difference)
    of `other` against `reference`, over the pictures `other` has (None: it failed)."""
    worst, differing, values, pictures = 0, 0, 0, 0
    for expected, got in zip(reference, other, strict=True):
        if got is None:
            continue
        if got.shape != expected.shape:
            raise ValueError(f"shape {got.shape} against {expected.shape}")
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        worst = max(worst, int(diff.max()))
        differing += int((diff > 0).sum())
        values += diff.size
        pictures += bool((diff > 0).any())
    return worst, differing / max(values, 1), pictures


def decoded_size(picture: object) -> tuple[int, int]:
    """(width, height) of a decoded picture: a PIL image or a 3,H,W tensor."""
    if hasattr(picture, "size") and isinstance(picture.size, tuple):
        return picture.size
    return int(picture.shape[-1]), int(picture.shape[-2])  # type: ignore[attr-defined]


def measure(way: Way, photos: list[bytes], size: int
            ) -> tuple[float, float, list[np.ndarray | None], list[tuple[int, int] | None]]:
    """Mean CPU ms a picture of the decode and of the resize, the pixels and the decoded
    (width, height) of each picture (None: failed)."""
    decode_s = resize_s = 0.0
    out: list[np.ndarray | None] = []
    sizes: list[tuple[int, int] | None] = []
    for data in photos:
        started = time.thread_time()
        try:
            picture, resize = way(data, size)
        except Exception:  # noqa: BLE001 - a file this decoder cannot read: counted, not timed
            out.append(None)
            sizes.append(None)
            continue
        decoded = time.thread_time()
        sizes.append(decoded_size(picture))
        out.append(resize(picture))
        resize_s += time.thread_time() - decoded
        decode_s += decoded - started
    done = max(sum(p is not None for p in out), 1)
    return 1000 * decode_s / done, 1000 * resize_s / done, out, sizes


def upscaled(data: bytes, factor: int) -> bytes:
    """The photo `factor` x larger (LANCZOS), re-encoded as JPEG quality 90."""
    import io

    from PIL import Image

    from catsdogs.data.images import decode_image

    image = decode_image(data)
    image = image.resize((image.width * factor, image.height * factor),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    import torch

    from catsdogs.data.images import DRAFT_GAP, decode_image, square_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="real photos, half cats half dogs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--upscale", type=int, default=1,
                        help="re-encode each photo this many times larger (phone-photo sizes)")
    args = parser.parse_args()
    if not (SAMPLE / "cat").is_dir():
        print(f"real photos not found at {SAMPLE}; the benchmark needs them", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    half = args.photos // 2
    files = sorted((SAMPLE / "cat").glob("*.jpg"))[:half] + sorted((SAMPLE / "dog").glob("*.jpg"))[:half]
    photos = [f.read_bytes() for f in files]
    if args.upscale > 1:
        photos = [upscaled(data, args.upscale) for data in photos]
    full = [decoded_size(decode_image(data)) for data in photos]
    reference = [np.asarray(square_image(data, args.size)) for data in photos]
    ways: dict[str, Way] = {
        f"square_image (draft to >= {DRAFT_GAP}x)": pil_way(DRAFT_GAP),
        "no draft": pil_way(None),
        "torchvision decode_jpeg": torchvision_way(),
        "draft to >= 1x size": pil_way(1),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    pixels: dict[str, list[np.ndarray | None]] = {}
    scaled: dict[str, int] = {}
    names = list(ways)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            decode_ms, resize_ms, out, sizes = measure(ways[name], photos, args.size)
            times[name].append((decode_ms, resize_ms))
            pixels[name] = out
            scaled[name] = sum(got is not None and got != whole
                               for got, whole in zip(sizes, full, strict=True))
    print(f"CPU: {cpu_description()}")
    width, height = (statistics.median(side) for side in zip(*full, strict=True))
    print(f"{len(photos)} real photos{f' upscaled {args.upscale}x' if args.upscale > 1 else ''} "
          f"(median {width:.0f}x{height:.0f}, {statistics.median(len(d) for d in photos) / 1000:.0f}"
          f" KB), {args.size} px, {args.repeats} interleaved repetitions, one thread; "
          "CPU ms a picture (median over repetitions)\n")
    print("| way | decode ms | resize ms | total ms | vs square_image | scaled in decode | "
          "max abs diff | differing values | pictures differing | failures |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(d + r for d, r in times[names[0]])
    for name in names:
        decode = statistics.median(d for d, _ in times[name])
        resize = statistics.median(r for _, r in times[name])
        total = statistics.median(d + r for d, r in times[name])
        worst, share, differing = parity(reference, pixels[name])
        failures = sum(p is None for p in pixels[name])
        print(f"| {name} | {decode:.2f} | {resize:.2f} | {total:.2f} | {total / base:.2f}x | "
              f"{scaled[name]} | {worst} | {100 * share:.2f}% | {differing}/{len(photos) - failures} | "
              f"{failures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
