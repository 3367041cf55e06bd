"""Transform stage speed on the real photo sample vs a naive single-process loop.

Both run in the same process, on the same prepared images, at the same output size:
- stage: `catsdogs.stages.transform.run` (process pool over all cores, JPEG draft decoding,
  antialiased BILINEAR squash resize, seeded stratified split, splits.csv);
- naive: one image at a time: `Image.open`, `.convert("RGB")`, LANCZOS resize, save as JPEG.
It also reports CPU milliseconds per image of the naive loop and of the stage's per-image work
run in one process: on a shared machine these are steadier than wall-clock rates.

Usage: .venv/bin/python benchmarks/transform_speed.py [--sample DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from catsdogs.config import Params, load_params
from catsdogs.data.parallel import worker_count
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"


def naive(sources: list[Path], out: Path, size: int, quality: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for the one-image-at-a-time loop."""
    out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    for index, source in enumerate(sources):
        image = Image.open(source).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        image.save(out / f"{index}.jpg", "JPEG", quality=quality)
    return time.perf_counter() - start, time.process_time() - cpu


def stage_work_cpu(sources: list[Path], out: Path, size: int, quality: int) -> float:
    """CPU seconds of the stage's per-image work (`_transform_one`) in this one process."""
    out.mkdir(parents=True, exist_ok=True)
    cpu = time.process_time()
    for index, source in enumerate(sources):
        assert not transform._transform_one((str(source), str(out / f"{index}.jpg"), size,
                                             quality))
    return time.process_time() - cpu


def stage(params: Params, paths: DataPaths) -> float:
    """Seconds for a full (not skipped) transform stage run."""
    start = time.perf_counter()
    summary = transform.run(params, paths)
    elapsed = time.perf_counter() - start
    assert not summary.skipped
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    args = parser.parse_args()
    if not (args.sample / "cat").is_dir():
        print(f"sample not found at {args.sample}; pass --sample DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    params = load_params(REPO / "params.yaml")
    size, quality = params.transform.image_size, params.transform.jpeg_quality
    with tempfile.TemporaryDirectory(prefix="transform-bench-") as tmp:
        paths = DataPaths(Path(tmp) / "data")
        ingest.run(params, paths, source=f"dir:{args.sample}")
        validate.run(params, paths)
        prepare.run(params, paths)
        sources = sorted(paths.prepared.glob("*/*.*"))
        sources = [p for p in sources if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        naive_runs = [naive(sources, Path(tmp) / f"naive{i}", size, quality)
                      for i in range(args.repeat)]
        naive_s = min(wall for wall, _ in naive_runs)
        naive_cpu = min(cpu for _, cpu in naive_runs)
        work_cpu = min(stage_work_cpu(sources, Path(tmp) / f"work{i}", size, quality)
                       for i in range(args.repeat))
        stage_times = []
        for _ in range(args.repeat):
            (paths.transformed / ".stamp.json").unlink(missing_ok=True)
            stage_times.append(stage(params, paths))
        stage_s = min(stage_times)
    n = len(sources)
    print(f"images: {n} at {size}x{size}, JPEG q{quality}, workers: "
          f"{worker_count(params.transform.workers)}")
    print(f"naive loop (1 process, LANCZOS): {n / naive_s:8.1f} images/s ({naive_s:.2f} s)")
    print(f"transform stage                 : {n / stage_s:8.1f} images/s ({stage_s:.2f} s)")
    print(f"ratio: {naive_s / stage_s:.2f}x")
    print(f"CPU per image: naive {1000 * naive_cpu / n:.2f} ms, stage work "
          f"{1000 * work_cpu / n:.2f} ms (1 process; {naive_cpu / work_cpu:.2f}x less)")
    print(f"load average after the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
