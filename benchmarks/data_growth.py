"""Cost as the data grows: ingest, validate, prepare and transform at 1x, 5x and 10x the sample.

What it measures: for each scale (`--scales`, default 1,5,10) a data set of scale x the 2,000-photo
sample (../shared/data/petimages-sample) goes through the real stages, each stage in a fresh
subprocess (`python -m catsdogs.cli <stage> --data-dir D --json`, the CLI users run), and the
benchmark records per stage: wall seconds of the subprocess (Python start-up and imports
included, as a user pays them) plus an `os.sync()` after it (the `flush` column: each stage pays
for writing its own output to disk, and the next stage starts without that writeback), images
handled, and the peak memory of the stage's whole process tree (the stage, its forkserver, pool
workers and resource tracker). Then the growth ratios against the targets of issue 19: time
10x/1x <= 11 (at most linear) and peak memory 10x/1x <= 1.5 (flat), per stage and for the
pipeline (its time: the sum of the stages; its memory: the largest stage's peak), and
least-squares lines (seconds, MiB = fixed + per file x files) that predict the ~25,000-picture
Kaggle set.

How memory is measured: psutil samples the stage process and all its descendants
(`Process.children(recursive=True)`) every `--interval` seconds (default 0.05) and sums their
RSS, and their PSS (`memory_full_info().pss`, from /proc/PID/smaps_rollup: shared pages split
between the processes that share them, so forked workers are not counted twice). The peak of each
sum is reported; the memory target is judged on the RSS sum (the more pessimistic figure). A peak
shorter than the interval can be missed; the stages' peaks last seconds.
`getrusage(RUSAGE_CHILDREN).ru_maxrss` is not used: it is the largest single process, not the tree.

How the data is built: scale 1 is the sample itself. Scale N adds, for every photo, variants
1..N-1, each derived at run time from the photo with a seeded random crop (keeping 85-97 % of
each side), a horizontal flip (odd variants) and a JPEG re-encode at a seeded quality (75-95).
Every file's sha256 is checked: no variant duplicates another file (prepare drops exact
duplicates, so a duplicate would shrink the data set); a collision is re-made with another salt.
The variants live in `--work` (default /tmp/catsdogs-data-growth/variants/) and are REUSED by
later runs when the sample listing, seed and generator version match (they are deterministic);
each scale's `dir:` source is a folder of hard links into them. The data dir of each scale is
made fresh before the scale runs (so no stage skips) and removed after it unless `--keep`.
Nothing is written inside the repository. Delete the work folder to free the disk (the variants
for 10x take about 0.55 GB; a scale's data dir, while it runs, more than its source).

Usage: .venv/bin/python benchmarks/data_growth.py [--scales 1,5,10] [--work DIR] [--sample DIR]
       [--seed 19] [--set SECTION.KEY=VALUE ...] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "petimages-sample"
WORK = Path("/tmp/catsdogs-data-growth")
STAGES = ("ingest", "validate", "prepare", "transform")
CLASSES = ("cat", "dog")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
GENERATOR = "crop85-97+flip-odd+q75-95/v1"   # part of the reuse check: bump when variants change
TIME_TARGET = 11.0      # 10x data: at most 11x the time
MEMORY_TARGET = 1.5     # 10x data: at most 1.5x the peak memory
KAGGLE_PICTURES = 25_000
MIB = 1024 * 1024
log = logging.getLogger("data_growth")


# ---------------------------------------------------------------------------------------------
# The data sets
# ---------------------------------------------------------------------------------------------

def _variant(job: tuple[str, str, str, int]) -> str:
    """Worker: write variant `k` of `source` to `target` (seeded by `salt`); its sha256."""
    source, target, salt, k = job
    rng = random.Random(salt)
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    keep_w, keep_h = round(width * rng.uniform(0.85, 0.97)), round(height * rng.uniform(0.85, 0.97))
    left, top = rng.randint(0, width - keep_w), rng.randint(0, height - keep_h)
    image = image.crop((left, top, left + keep_w, top + keep_h))
    if k % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image.save(target, "JPEG", quality=rng.randint(75, 95))
    return hashlib.sha256(Path(target).read_bytes()).hexdigest()


def _sample_files(sample: Path) -> list[tuple[str, Path]]:
    files = [(label, path) for label in CLASSES
             for path in sorted((sample / label).iterdir()) if path.is_file()
             and not path.name.startswith(".")]
    if not files:
        raise SystemExit(f"no photos under {sample}/{{cat,dog}}; pass --sample DIR")
    return files


def build_variants(sample: Path, work: Path, count: int, seed: int) -> None:
    """Variants 1..count of every sample photo under work/variants/<label>/ (reused when the
    existing ones were made from the same sample, seed and generator)."""
    files = _sample_files(sample)
    key = hashlib.sha256(json.dumps([GENERATOR, seed, [(label, p.name, p.stat().st_size)
                                                       for label, p in files]]).encode()).hexdigest()
    folder = work / "variants"
    marker = folder / ".made.json"
    made = json.loads(marker.read_text()) if marker.is_file() else {}
    if made.get("key") == key and made.get("count", 0) >= count:
        log.info("reusing %d variants per photo in %s", made["count"], folder)
        return
    if made.get("key") != key:
        shutil.rmtree(folder, ignore_errors=True)
    first = made.get("count", 0) + 1 if made.get("key") == key else 1
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for label, path in files:
        seen[hashlib.sha256(path.read_bytes()).hexdigest()] = f"{label}/{path.name}"
    for existing in sorted(folder.glob("*/*.jpg")):
        seen[hashlib.sha256(existing.read_bytes()).hexdigest()] = str(existing)
    jobs = [(str(path), str(folder / label / f"{path.stem}.v{k:02d}.jpg"),
             f"{seed}:{label}/{path.name}:{k}", k)
            for k in range(first, count + 1) for label, path in files]
    log.info("making %d variants (%d per photo) in %s", len(jobs), count - first + 1, folder)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool() as pool:
        digests = pool.map(_variant, jobs, chunksize=64)
    redo = 0
    for job, digest in zip(jobs, digests, strict=True):
        attempt = 0
        while digest in seen:  # a duplicate would be dropped by prepare: make it again
            attempt += 1
            redo += 1
            digest = _variant((job[0], job[1], f"{job[2]}:{attempt}", job[3]))
        seen[digest] = job[1]
    marker.write_text(json.dumps({"key": key, "count": count}))
    log.info("made %d variants in %.1f s (%d re-made to avoid a duplicate)", len(jobs),
             time.perf_counter() - started, redo)


def scale_source(sample: Path, work: Path, scale: int) -> tuple[Path, int]:
    """work/scale-N/{cat,dog}/: hard links to the photos and their variants 1..N-1; (folder,
    number of files)."""
    folder = work / f"scale-{scale}"
    shutil.rmtree(folder, ignore_errors=True)
    count = 0
    for label, path in _sample_files(sample):
        (folder / label).mkdir(parents=True, exist_ok=True)
        links = [(path, folder / label / path.name)]
        links += [(work / "variants" / label / f"{path.stem}.v{k:02d}.jpg",
                   folder / label / f"{path.stem}.v{k:02d}.jpg") for k in range(1, scale)]
        for source, target in links:
            try:
                os.link(source, target)
            except OSError:  # the sample is on another file system
                shutil.copyfile(source, target)
            count += 1
    return folder, count


# ---------------------------------------------------------------------------------------------
# One stage in a fresh process, with its tree's memory sampled
# ---------------------------------------------------------------------------------------------

@dataclass
class StageRun:
    scale: int
    stage: str
    images: int
    seconds: float          # the stage process, plus flushing its writes (os.sync)
    flush_seconds: float    # of which the flush
    peak_rss_mib: float
    peak_pss_mib: float
    max_processes: int
    summary: dict[str, Any] = field(default_factory=dict)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sample_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, processes) of `root` and its descendants now."""
    rss = pss = alive = 0
    for process in _tree(root):
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss, pss, alive = rss + info.rss, pss + info.pss, alive + 1
    return rss, pss, alive


def run_stage(stage: str, data_dir: Path, scale: int, extra: list[str], source: Path,
              interval: float) -> StageRun:
    command = [sys.executable, "-m", "catsdogs.cli", stage, "--data-dir", str(data_dir),
               "--params", str(REPO / "params.yaml"), "--json"]
    for override in extra:
        command += ["--set", override]
    if stage == "ingest":
        command += ["--source", f"dir:{source}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "include"), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    peaks = [0, 0, 0]
    done = threading.Event()
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=REPO, start_new_session=True)
    root = psutil.Process(child.pid)

    def sampler() -> None:
        while not done.is_set():
            for index, value in enumerate(_sample_memory(root)):
                peaks[index] = max(peaks[index], value)
            done.wait(interval)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    out, err = child.communicate()
    done.set()
    flushed = time.perf_counter()
    os.sync()  # the stage's own writes reach the disk on its clock, not the next stage's
    seconds, flush = time.perf_counter() - started, time.perf_counter() - flushed
    thread.join()
    if child.returncode != 0:
        raise SystemExit(f"catsdogs {stage} failed (exit {child.returncode}) at scale {scale}:\n"
                         f"{err[-3000:]}")
    summary = json.loads(out)
    if summary.get("skipped"):
        raise SystemExit(f"catsdogs {stage} skipped at scale {scale}: the data dir was not fresh")
    images = int(summary.get("files") or summary.get("kept") or summary.get("images") or 0)
    return StageRun(scale, stage, images, seconds, flush, peaks[0] / MIB, peaks[1] / MIB,
                    peaks[2],
                    {k: v for k, v in summary.items() if k not in ("message",)})


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    model = next((line.partition(":")[2].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = set(next((line.partition(":")[2].split() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), []))
    present = ", ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)
    memory = psutil.virtual_memory().total / 1024 ** 3
    return (f"CPU {model}; flags {present}; {os.cpu_count()} cores; {memory:.0f} GiB RAM; "
            f"Python {platform.python_version()}; load average {LOAD_AT_START:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end")


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points) / spread) if spread else 0.0
    return mean_y - slope * mean_x, slope


def report(runs: list[StageRun], scales: list[int], inputs: dict[int, int]) -> dict[str, Any]:
    lines = [f"{'scale':>5} {'files':>6} {'stage':<9} {'images':>6} {'seconds':>8} {'flush':>5} "
             f"{'peak RSS MiB':>12} {'peak PSS MiB':>12} {'procs':>5}"]
    totals: dict[int, float] = {}
    peak: dict[int, float] = {}
    for scale in scales:
        rows = [r for r in runs if r.scale == scale]
        for r in rows:
            lines.append(f"{scale:>4}x {inputs[scale]:>6} {r.stage:<9} {r.images:>6} "
                         f"{r.seconds:>8.1f} {r.flush_seconds:>5.1f} {r.peak_rss_mib:>12.0f} {r.peak_pss_mib:>12.0f} "
                         f"{r.max_processes:>5}")
        totals[scale] = sum(r.seconds for r in rows)
        peak[scale] = max(r.peak_rss_mib for r in rows)
        lines.append(f"{scale:>4}x {inputs[scale]:>6} {'all four':<9} {'':>6} "
                     f"{totals[scale]:>8.1f} {'':>5} {peak[scale]:>12.0f} "
                     f"{max(r.peak_pss_mib for r in rows):>12.0f}")
    result: dict[str, Any] = {"totals_s": totals, "peak_rss_mib": peak, "ratios": {}}
    base = min(scales)
    if len(scales) > 1:
        lines.append("")
        lines.append(f"growth against {base}x ({inputs[base]} files):")
        for stage in (*STAGES, "all four"):
            def secs(scale: int, stage: str = stage) -> float:
                return totals[scale] if stage == "all four" else next(
                    r.seconds for r in runs if r.scale == scale and r.stage == stage)

            def mem(scale: int, stage: str = stage) -> float:
                return peak[scale] if stage == "all four" else next(
                    r.peak_rss_mib for r in runs if r.scale == scale and r.stage == stage)
            parts = [f"time {s}x/{base}x {secs(s) / secs(base):5.2f}" for s in scales if s != base]
            parts += [f"memory {s}x/{base}x {mem(s) / mem(base):4.2f}" for s in scales
                      if s != base]
            top = max(scales)
            stage_time_ok = secs(top) / secs(base) <= TIME_TARGET * top / base / 10
            stage_memory_ok = mem(top) / mem(base) <= MEMORY_TARGET
            parts.append(f"time {'met' if stage_time_ok else 'MISSED'}, "
                         f"memory {'met' if stage_memory_ok else 'MISSED'}")
            lines.append(f"  {stage:<9} " + ", ".join(parts))
            result["ratios"][stage] = {
                **{f"time_{s}x": secs(s) / secs(base) for s in scales if s != base},
                **{f"memory_{s}x": mem(s) / mem(base) for s in scales if s != base}}
        time_ratio, memory_ratio = totals[top] / totals[base], peak[top] / peak[base]
        data_ratio = inputs[top] / inputs[base]
        time_limit = TIME_TARGET * data_ratio / 10
        time_ok, memory_ok = time_ratio <= time_limit, memory_ratio <= MEMORY_TARGET
        lines.append(f"target: time {top}x/{base}x <= {time_limit:.1f}: {time_ratio:.2f} "
                     f"{'met' if time_ok else 'MISSED'}; peak memory (largest stage tree RSS) "
                     f"{top}x/{base}x <= {MEMORY_TARGET}: {memory_ratio:.2f} "
                     f"{'met' if memory_ok else 'MISSED'}")
        fixed, per_image = _fit([(inputs[s], totals[s]) for s in scales])
        predicted = fixed + per_image * KAGGLE_PICTURES
        lines.append(f"fit: seconds = {fixed:.1f} + {1000 * per_image:.2f} ms x files; "
                     f"~{KAGGLE_PICTURES} pictures: ~{predicted:.0f} s "
                     f"({predicted / 60:.1f} min) for the four stages")
        for stage in STAGES:
            a, b = _fit([(inputs[s], next(r.seconds for r in runs
                                          if r.scale == s and r.stage == stage)) for s in scales])
            result.setdefault("fit", {})[stage] = {"fixed_s": a, "per_image_ms": 1000 * b,
                                                   "kaggle_s": a + b * KAGGLE_PICTURES}
        result["fit"]["all four"] = {"fixed_s": fixed, "per_image_ms": 1000 * per_image,
                                     "kaggle_s": predicted}
        memory_fit = {stage: _fit([(inputs[s], next(r.peak_rss_mib for r in runs
                                                    if r.scale == s and r.stage == stage))
                                   for s in scales]) for stage in STAGES}
        for stage, (a, b) in memory_fit.items():
            result["fit"][stage].update(fixed_mib=a, per_image_kib=1024 * b,
                                        kaggle_mib=a + b * KAGGLE_PICTURES)
        lines.append(f"  per stage at ~{KAGGLE_PICTURES}: " + ", ".join(
            f"{stage} {result['fit'][stage]['kaggle_s']:.0f} s / "
            f"{result['fit'][stage]['kaggle_mib']:.0f} MiB" for stage in STAGES))
        lines.append("  memory per file (fit): " + ", ".join(
            f"{stage} {result['fit'][stage]['per_image_kib']:.1f} KiB" for stage in STAGES))
        result.update(time_ratio=time_ratio, memory_ratio=memory_ratio, time_met=time_ok,
                      memory_met=memory_ok)
    lines.append(machine())
    print("\n".join(lines))
    result["table"] = lines
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,5,10", help="comma-separated multiples of the sample")
    parser.add_argument("--work", type=Path, default=WORK, help=f"work folder (default {WORK})")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--seed", type=int, default=19, help="seed of the variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="passed to every stage (repeatable)")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling period (s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep each scale's data dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scales = sorted({int(s) for s in args.scales.split(",") if s.strip()})
    if not scales or scales[0] < 1:
        parser.error("--scales takes positive whole multiples, e.g. 1,5,10")
    if not (args.sample / "cat").is_dir():
        log.error("sample not found at %s; pass --sample DIR", args.sample)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    build_variants(args.sample, args.work, max(scales) - 1, args.seed)
    runs: list[StageRun] = []
    inputs: dict[int, int] = {}
    for scale in scales:
        source, inputs[scale] = scale_source(args.sample, args.work, scale)
        data_dir = args.work / f"data-{scale}"
        shutil.rmtree(data_dir, ignore_errors=True)
        os.sync()  # start each scale with no writeback pending from the last one
        time.sleep(2)
        log.info("scale %dx: %d files", scale, inputs[scale])
        for stage in STAGES:
            run = run_stage(stage, data_dir, scale, args.overrides, source, args.interval)
            log.info("scale %dx %s: %.1f s, peak RSS %.0f MiB (PSS %.0f) over %d processes; %s",
                     scale, stage, run.seconds, run.peak_rss_mib, run.peak_pss_mib,
                     run.max_processes, run.summary)
            runs.append(run)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
    result = report(runs, scales, inputs)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "scales": scales,
                                         "files": inputs, "runs": [asdict(r) for r in runs],
                                         **result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
