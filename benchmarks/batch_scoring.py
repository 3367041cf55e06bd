"""Batch scoring against the serving endpoint, on the same folder of real photos, in the same run;
and the latency of /explain.

    python benchmarks/batch_scoring.py [--photos 1600] [--concurrency 32] [--explain 20]
        [--model-uri models:/CatsDogsCNN@champion]

1. `catsdogs score --images FOLDER` (a real subprocess, as a user or the catsdogs_batch_scoring
   DAG runs it) on `--photos` sample photos (half cats, half dogs, from
   ../shared/data/petimages-sample): images/s as the stage reports it (pictures scored / seconds
   from loading the model, preparing its graph and the out-of-distribution detector to the last
   row: fixed costs of ~5 s on 2 cores, so a small folder reads slower) and the command's wall
   time (Python start-up and imports on top). A second run
   with the same photos and version must be skipped (idempotence, timed too).
2. The same photos through the service: `bentoml serve` of the same model, its variant forced to
   torch-fp32 (what `score` runs), `/predict` with `--concurrency` requests in flight
   (benchmarks/serve_load.py's load generator): requests/s = images/s.
3. `/explain`: the first call (which loads the eager network into the API process) and the p50 /
   p95 of `--explain` more, one at a time.

The model is serve_load.py's (mobilenet_v2 with ImageNet weights when cached, a head fitted on
300 other sample photos, registered in a temporary MLflow store) unless `--model-uri` names one.
Prints the CPU first: the figures only compare within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import serve_load  # noqa: E402  (its path setup makes `catsdogs` and `tests` importable)

from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE  # noqa: E402
from tests.servers import free_port, start_process, stop_process, wait_http  # noqa: E402

SAMPLE = serve_load.SAMPLE
HEAD_PHOTOS = 150   # per class, the last ones: the head is fitted on them, never scored


def photo_folder(work: Path, count: int) -> Path:
    """`count` sample photos (the first count/2 of each class) linked into one folder."""
    folder = work / "photos"
    for kind in ("cat", "dog"):
        target = folder / kind
        target.mkdir(parents=True)
        for photo in sorted((SAMPLE / kind).glob("*.jpg"))[:count // 2]:
            (target / photo.name).symlink_to(photo)
    return folder


def run_score(folder: Path, model_uri: str, data_dir: Path, env: dict[str, str]
              ) -> tuple[dict, float]:
    """`catsdogs score` as a subprocess: (its JSON summary, wall seconds)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "catsdogs.cli", "score", "--images", str(folder),
                           "--model", model_uri, "--data-dir", str(data_dir), "--json"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"catsdogs score failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), wall


def explain_latencies(url: str, photos: list[Path], count: int) -> tuple[float, list[float]]:
    """Seconds of the first /explain (the eager network's load included), then of `count` more,
    one at a time."""
    def once(photo: Path) -> float:
        body = serve_load.multipart(photo.read_bytes())
        request = urllib.request.Request(
            f"{url}/explain", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={serve_load.BOUNDARY}"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            if response.status != 200:
                raise SystemExit(f"/explain answered {response.status}")
        return time.perf_counter() - started

    first = once(photos[0])
    return first, [once(photos[(i + 1) % len(photos)]) for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1600,
                        help="photos scored (half each class; the stage's model load and graph "
                        "preparation are in its images/s, so fewer photos read slower)")
    parser.add_argument("--concurrency", type=int, default=32, help="/predict requests in flight")
    parser.add_argument("--explain", type=int, default=20, help="/explain calls timed")
    parser.add_argument("--model-uri", default=None,
                        help="registered model (default: serve_load's fitted mobilenet_v2)")
    args = parser.parse_args()
    if not (SAMPLE / "cat").is_dir():
        print(f"real photos not found at {SAMPLE}; the benchmark needs them", file=sys.stderr)
        return 2
    if args.photos // 2 > 1000 - HEAD_PHOTOS:
        parser.error(f"--photos: at most {2 * (1000 - HEAD_PHOTOS)} (the rest fit the head)")
    from catsdogs.inference.compute import cpu_description

    print(f"CPU: {cpu_description()}; {len(os.sched_getaffinity(0))} usable cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="batch-scoring-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> int:
    """The three measurements (module docstring), everything written under `work`."""
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    model_uri = args.model_uri
    if model_uri is None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        head_files = sorted((SAMPLE / "cat").glob("*.jpg"))[-HEAD_PHOTOS:] \
            + sorted((SAMPLE / "dog").glob("*.jpg"))[-HEAD_PHOTOS:]
        net, description = serve_load.train_head("mobilenet_v2", 224, head_files)
        print(f"benchmark model: {description}", flush=True)
        model_uri = serve_load.register(env["MLFLOW_TRACKING_URI"], net, 224, "mobilenet_v2",
                                        head_files)
    folder = photo_folder(work, args.photos)
    photos = sorted(folder.rglob("*.jpg"))

    summary, wall = run_score(folder, model_uri, work / "data", env)
    # the stage's images/s: pictures over the seconds from the model's load to the last row
    labels = ", ".join(f"{n} {c}" for c, n in summary["labels"].items())
    print(f"catsdogs score: {summary['count']} photos ({labels}, {summary['rejected']} rejected) "
          f"with {summary['model_name']} v{summary['version']} ({summary['variant']}): "
          f"{summary['images_per_s']} images/s scoring, {wall:.1f} s wall for the command "
          f"({summary['count'] / wall:.1f} images/s with start-up and model load)", flush=True)
    again, again_wall = run_score(folder, model_uri, work / "data", env)
    print(f"re-run with the same photos and version: skipped={again['skipped']} in "
          f"{again_wall:.1f} s", flush=True)

    subprocess.run([sys.executable, "-m", IMPORT_MODEL, "--model-uri", model_uri,
                    "--calibration-images", "0", "--data-dir", str(work / "import")],
                   env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    port = free_port()
    log_file = work / "serve.log"
    process = start_process([str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE,
                             "--host", "127.0.0.1", "--port", str(port)], log_file,
                            env={**env, "CATSDOGS_RUNTIME": "torch-fp32"}, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", 180, process, log_file)
        print(f"service runtime: {serve_load.served_runtime(url + '/predict')}", flush=True)
        bodies = [serve_load.multipart(p.read_bytes()) for p in photos]
        serve_load.run_level(f"{url}/predict", bodies, 4, 40)                   # warm-up
        rate, p50, p99, errors = serve_load.run_level(f"{url}/predict", bodies,
                                                      args.concurrency, len(bodies))
        print(f"service /predict, c={args.concurrency}: {rate:.1f} images/s (p50 {p50:.0f} ms, "
              f"p99 {p99:.0f} ms, {errors} errors) on the same {len(bodies)} photos", flush=True)
        print(f"score / service throughput: {summary['images_per_s'] / rate:.2f}x", flush=True)
        if args.explain > 0:
            first, times = explain_latencies(url, photos, args.explain)
            print(f"/explain: first call {first * 1000:.0f} ms (loads the eager network), then "
                  f"p50 {1000 * serve_load.percentile(times, 50):.0f} ms, p95 "
                  f"{1000 * serve_load.percentile(times, 95):.0f} ms over {len(times)} calls, "
                  "one at a time", flush=True)
    finally:
        stop_process(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
