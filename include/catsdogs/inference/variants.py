"""Serving variants: the same network prepared by different runtimes, measured at import, and the
rule that picks the one a CPU serves.

| variant         | runtime                                         | can run where                    |
|-----------------|-------------------------------------------------|----------------------------------|
| `torch-fp32`    | frozen TorchScript graph (`scorer.Scorer`)      | everywhere: the reference        |
| `torch-bf16`    | the same graph in bfloat16                      | CPUs with avx512_bf16 or AMX     |
| `openvino-fp32` | OpenVINO's CPU plugin, fp32 inference precision | `openvino` installed             |
| `openvino-int8` | OpenVINO, INT8 by NNCF post-training static     | `openvino` installed             |
|                 | quantisation calibrated on the import's photos  |                                  |

Each OpenVINO variant is one graph (exported with `torch.export`, converted by
`openvino.convert_model`) from uint8 N,H,W,3 pixels to (N,C probabilities, N,D
penultimate-layer embedding): normalisation, network, embedding and softmax together, so drift
and out-of-distribution scores come from the runtime that gave the label. The graphs are written
into the Bento model (`variants/<name>/model.xml` + `.bin`) at import, so the service compiles
them and never calibrates.

**The rule** (the bf16 gate, for every candidate). At import (`measure`) each variant that can
run on the import's CPU gives labels for the calibration photos and is timed at the batch sizes
the service runs (`MEASURED_BATCHES`, interleaved rounds, median). A variant is *adopted* when
its labels agree with the eager fp32 network on at least `MIN_AGREEMENT` of the photos AND it is
faster than `torch-fp32` (by `MIN_SPEEDUP`) at every measured batch size. The measurements go
into the Bento model's metadata (`serving_variants`, with the CPU they were taken on) and
`/model` shows them. At start-up (`choose`) the service takes the fastest adopted variant (time
a picture at the largest batch) that can run on *its* CPU; when the measured winner cannot (no
`openvino`, no native bf16: the image was built elsewhere), it says so in the log and takes the
next, down to `torch-fp32`. `CATSDOGS_RUNTIME=<variant>` forces one (still falling back, with a
log line, when it cannot run here).

Why our own code: OpenVINO and NNCF do the conversion, quantisation and inference; what is ours
is the product's edge, the gate (agreement and speed on the model's own photos) and the fallback.
"""

from __future__ import annotations

import importlib
import logging
import statistics
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from catsdogs.inference.compute import Compute, cpu_supports_bf16
from catsdogs.inference.scorer import Scorer, normalize, with_embedding

logger = logging.getLogger(__name__)

VariantName = Literal["torch-fp32", "torch-bf16", "openvino-fp32", "openvino-int8"]
VARIANT_NAMES: tuple[str, ...] = typing.get_args(VariantName)
REFERENCE = "torch-fp32"
MIN_AGREEMENT = 0.995        # share of photos with the fp32 label (the bf16 gate's bar)
MIN_SPEEDUP = 1.05           # "faster": at least 5% less time a picture (not timing noise)
MEASURED_BATCHES = (1, 8)    # batch sizes timed at import: one request alone; the service's
                             # default largest adaptive batch (CATSDOGS_MAX_BATCH_SIZE)
VARIANTS_FOLDER = "variants"  # in the Bento model: variants/<name>/model.xml + model.bin
OPENVINO_FILE = "model.xml"
TIMING_ROUNDS = 5
TIMING_MIN_S = 0.15          # per variant, batch size and round


@dataclass(frozen=True)
class Measurement:
    """One variant as the import measured it: label agreement with eager fp32 on `images`
    photos (0..1; None: not measured), wall milliseconds per picture by batch size, and whether
    the rule adopts it (`reason` says why or why not)."""

    variant: str
    agreement: float | None
    images: int
    ms_per_image: dict[int, float] = field(default_factory=dict)
    adopted: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "agreement": self.agreement, "images": self.images,
                "ms_per_image": {str(b): round(ms, 3) for b, ms in self.ms_per_image.items()},
                "adopted": self.adopted, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        agreement = data.get("agreement")
        return cls(variant=str(data["variant"]),
                   agreement=None if agreement is None else float(agreement),
                   images=int(data.get("images", 0)),
                   ms_per_image={int(b): float(ms)
                                 for b, ms in (data.get("ms_per_image") or {}).items()},
                   adopted=bool(data.get("adopted")), reason=str(data.get("reason", "")))


@dataclass(frozen=True)
class Choice:
    """The variant a service runs and why (`fell_back`: the measured or forced one could not)."""

    variant: str
    reason: str
    fell_back: bool = False


def judge(measurements: Sequence[Measurement]) -> list[Measurement]:
    """`measurements` with `adopted`/`reason` set by the rule (module docstring)."""
    reference = next((m for m in measurements if m.variant == REFERENCE), None)
    judged = []
    for m in measurements:
        if m.variant == REFERENCE:
            adopted, reason = True, "the reference (eager fp32 labels, frozen graph)"
        elif m.agreement is None:
            adopted, reason = False, m.reason or "label agreement not measured"
        elif m.agreement < MIN_AGREEMENT:
            adopted, reason = False, (f"labels agree with fp32 on {100 * m.agreement:.2f}% of "
                                      f"{m.images} photos, below {100 * MIN_AGREEMENT:.1f}%")
        elif reference is None or not reference.ms_per_image:
            adopted, reason = False, "no fp32 timing to compare with"
        else:
            slower = [b for b, ms in reference.ms_per_image.items()
                      if m.ms_per_image.get(b, float("inf")) * MIN_SPEEDUP > ms]
            adopted = not slower
            reason = (f"agrees on {100 * m.agreement:.2f}% and is faster at batch "
                      + ", ".join(map(str, sorted(m.ms_per_image))) if adopted else
                      f"not {MIN_SPEEDUP:.2f}x as fast as {REFERENCE} at batch "
                      + ", ".join(map(str, slower)))
        judged.append(Measurement(m.variant, m.agreement, m.images, m.ms_per_image, adopted,
                                  reason))
    return judged


def ranked(measurements: Sequence[Measurement]) -> list[str]:
    """Adopted variants, fastest first (ms a picture at the largest measured batch), then
    `torch-fp32` (always last: it runs everywhere)."""
    def cost(m: Measurement) -> float:
        return m.ms_per_image[max(m.ms_per_image)] if m.ms_per_image else float("inf")

    adopted = sorted((m for m in measurements if m.adopted and m.variant != REFERENCE), key=cost)
    return [m.variant for m in adopted] + [REFERENCE]


def cannot_run(variant: str, model_folder: Path | None = None) -> str | None:
    """Why `variant` cannot run on this machine (None: it can). `model_folder`: the Bento
    model's folder, whose `variants/` must hold an OpenVINO variant's graph."""
    if variant not in VARIANT_NAMES:
        return f"unknown variant {variant!r} (one of {', '.join(VARIANT_NAMES)})"
    if variant == "torch-bf16":
        return None if cpu_supports_bf16() else "this CPU has no native bfloat16 (avx512_bf16/AMX)"
    if variant.startswith("openvino-"):
        try:
            importlib.import_module("openvino")
        except ImportError:
            return "the openvino package is not installed (bentoservice/requirements.txt has it)"
        if model_folder is not None and not (model_folder / VARIANTS_FOLDER / variant
                                             / OPENVINO_FILE).is_file():
            return (f"the Bento model has no {VARIANTS_FOLDER}/{variant}/{OPENVINO_FILE} (imported "
                    "without calibration photos or before variants existed: re-import it)")
    return None


def choose(setting: str, measurements: Sequence[Measurement], model_folder: Path,
           device_type: str = "cpu") -> Choice:
    """The variant to serve: `setting` ("auto" or a variant name, CATSDOGS_RUNTIME) applied to
    the import's `measurements` on this machine (module docstring). Logs every fallback."""
    if device_type != "cpu":
        return Choice(REFERENCE, f"on {device_type} the torch network serves (the variants are "
                      "CPU ones)")
    fell_back = False
    if setting != "auto":
        why = cannot_run(setting, model_folder)
        if why is None:
            return Choice(setting, f"CATSDOGS_RUNTIME={setting}")
        logger.warning("CATSDOGS_RUNTIME=%s cannot run here (%s): choosing as with auto",
                       setting, why)
        fell_back = True
    if not measurements:
        return Choice(REFERENCE, "the import measured no variants (no calibration photos): "
                      "torch fp32", fell_back)
    for variant in ranked(measurements):
        why = cannot_run(variant, model_folder)
        if why is None:
            return Choice(variant, "the fastest adopted variant that runs here"
                          if variant != REFERENCE else "no faster variant passed the gate",
                          fell_back)
        logger.warning("serving variant %s was measured fastest but cannot run here (%s): "
                       "falling back to the next", variant, why)
        fell_back = True
    raise AssertionError("unreachable: torch-fp32 always runs")


class ServingGraph(torch.nn.Module):
    """What every OpenVINO variant is converted from: uint8 N,H,W,3 pixels -> (N,C softmax
    probabilities, N,D embedding), the service's whole arithmetic in one graph."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.inner = with_embedding(net.eval())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.inner(normalize(pixels.permute(0, 3, 1, 2)))
        return torch.softmax(logits, dim=1), embedding


def export_openvino(net: torch.nn.Module, image_size: int, folder: Path,
                    calibration: np.ndarray | None) -> list[str]:
    """Write `openvino-fp32` (and, with `calibration` N,H,W,3 uint8 photos, `openvino-int8`)
    into `folder/variants/`. Returns the variants written; [] when openvino (or nncf, for INT8)
    is missing or the network cannot be converted (said in the log)."""
    try:
        import openvino as ov
    except ImportError as exc:
        logger.warning("OpenVINO variants not built: %s", exc)
        return []
    try:
        example = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
        program = torch.export.export(ServingGraph(net).eval(), (example,), dynamic_shapes={
            "pixels": {0: torch.export.Dim("batch", min=1, max=4096)}})
        model = ov.convert_model(program)
        model.reshape({0: [-1, image_size, image_size, 3]})   # only the batch size varies
    except Exception as exc:  # noqa: BLE001 (any export failure: no OpenVINO variant)
        logger.warning("OpenVINO variants not built (export: %s: %s)", type(exc).__name__, exc)
        return []
    written = []
    for name, graph in (("openvino-fp32", model), ("openvino-int8", _quantize(model, calibration))):
        if graph is None:
            continue
        target = folder / VARIANTS_FOLDER / name
        target.mkdir(parents=True, exist_ok=True)
        ov.save_model(graph, str(target / OPENVINO_FILE), compress_to_fp16=False)
        written.append(name)
    return written


def _quantize(model: Any, calibration: np.ndarray | None) -> Any:
    """NNCF post-training static quantisation (INT8 weights and activations, ranges from the
    calibration photos, fast bias correction); None without photos or without nncf."""
    if calibration is None or not len(calibration):
        return None
    try:
        import nncf
    except ImportError as exc:
        logger.warning("openvino-int8 not built: %s", exc)
        return None
    logging.getLogger("nncf").setLevel(logging.WARNING)
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    return nncf.quantize(model, dataset, subset_size=len(calibration),
                         target_device=nncf.TargetDevice.CPU)


class OpenVinoPredictor:
    """An OpenVINO variant compiled for this CPU, fp32 inference precision (INT8 where the graph
    is quantised), twice: in throughput mode (streams of one or a few threads each, running parts
    of a batch at once: more pictures a core-second than every thread on one picture, which
    MobileNetV2's depthwise convolutions parallelise poorly) for batches of at least as many
    pictures as streams, and in latency mode (one stream, every thread) for smaller ones, so a
    lone request is not left to one core. Same interface as a serving `Scorer`."""

    embeds = True

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino as ov

        core, threads = ov.Core(), max(1, threads)
        model = core.read_model(str(xml))
        common = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.queue = ov.AsyncInferQueue(core.compile_model(
            model, "CPU", {**common, "PERFORMANCE_HINT": "THROUGHPUT"}))
        self.latency = core.compile_model(
            model, "CPU", {**common, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        self.lock = threading.Lock()  # one batch at a time

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.outputs(pixels)[0]

    def outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """N,H,W,3 uint8 pixels -> (N,C probabilities, N,D embedding), float32 on the CPU."""
        batch = np.ascontiguousarray(pixels.numpy())
        with self.lock:
            if len(batch) < len(self.queue):
                self.latency.infer({0: batch})
                results = [(self.latency.get_output_tensor(0).data.copy(),
                            self.latency.get_output_tensor(1).data.copy())]
            else:
                results = self._in_streams(batch)
        return (torch.from_numpy(np.concatenate([r[0] for r in results])),
                torch.from_numpy(np.concatenate([r[1] for r in results])))

    def _in_streams(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """`batch` split over the throughput model's streams, run at once, outputs in order."""
        parts = np.array_split(batch, len(self.queue))
        results: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(parts)

        def done(request: Any, index: int) -> None:
            results[index] = (request.get_output_tensor(0).data.copy(),
                              request.get_output_tensor(1).data.copy())

        self.queue.set_callback(done)
        for index, part in enumerate(parts):
            self.queue.start_async({0: part}, index)
        self.queue.wait_all()
        return results

    def warm_up(self, max_batch_size: int, image_size: int) -> None:
        for batch in range(1, max_batch_size + 1):
            self(torch.zeros(batch, image_size, image_size, 3, dtype=torch.uint8))


Predicting = Scorer | OpenVinoPredictor  # .outputs, .warm_up, .embeds


def build_predictor(variant: str, load_net: Callable[[], torch.nn.Module], model_folder: Path,
                    device: torch.device, image_size: int, jit: bool = True) -> Predicting:
    """The prepared network for `variant` (`load_net` gives the eager fp32 network): a serving
    `Scorer` for the torch variants, an `OpenVinoPredictor` for the OpenVINO ones."""
    if variant.startswith("openvino-"):
        return OpenVinoPredictor(model_folder / VARIANTS_FOLDER / variant / OPENVINO_FILE,
                                 torch.get_num_threads())
    compute = Compute.serving(device, "bf16" if variant == "torch-bf16" else "fp32")
    return Scorer(load_net(), compute, serving=True, image_size=image_size, jit=jit)


def measure(net: torch.nn.Module, model_folder: Path, pixels: np.ndarray,
            batches: Sequence[int] = MEASURED_BATCHES,
            variants: Sequence[str] = VARIANT_NAMES) -> list[Measurement]:
    """Every variant of `variants` that can run here, on `pixels` (N,H,W,3 uint8 calibration
    photos, as the service decodes them): OpenVINO graphs exported into `model_folder` (INT8
    calibrated on `pixels`), label agreement with the eager fp32 network, ms a picture at each
    of `batches` (interleaved rounds, median), judged by the rule."""
    import copy

    device, size = torch.device("cpu"), int(pixels.shape[1])
    if any(v.startswith("openvino-") for v in variants):
        export_openvino(copy.deepcopy(net), size, model_folder, pixels)
    runnable = [v for v in variants if v == REFERENCE or cannot_run(v, model_folder) is None]
    predictors, failed = {}, []
    for variant in dict.fromkeys([REFERENCE, *runnable]):
        try:
            predictors[variant] = build_predictor(variant, lambda: copy.deepcopy(net),
                                                  model_folder, device, size)
        except Exception as exc:  # noqa: BLE001 (a variant that does not build is not adopted)
            if variant == REFERENCE:
                raise
            logger.warning("serving variant %s did not build: %s: %s", variant,
                           type(exc).__name__, exc)
            failed.append(Measurement(variant, None, len(pixels),
                                      reason=f"did not build: {type(exc).__name__}: {exc}"))
    chunks = [torch.from_numpy(pixels[i:i + 32]) for i in range(0, len(pixels), 32)]
    eager = Scorer(copy.deepcopy(net), Compute.serving(device), serving=True, image_size=size,
                   jit=False)
    with torch.inference_mode():
        reference = torch.cat([eager(c).argmax(1) for c in chunks])
        agreement = {v: float((torch.cat([p(c).argmax(1) for c in chunks]) == reference)
                              .float().mean()) for v, p in predictors.items()}
    timing = _time(predictors, pixels, batches)
    return judge([Measurement(v, agreement[v], len(pixels), timing[v]) for v in predictors]
                 + failed)


def _time(predictors: dict[str, Predicting], pixels: np.ndarray, batches: Sequence[int]
          ) -> dict[str, dict[int, float]]:
    """Wall ms a picture per predictor and batch size: `TIMING_ROUNDS` interleaved rounds of at
    least `TIMING_MIN_S` each (a shared machine's speed moves within minutes), the median."""
    import torch

    inputs = {b: torch.from_numpy(np.resize(pixels, (b, *pixels.shape[1:]))) for b in batches}
    for predictor in predictors.values():
        predictor.warm_up(max(batches), int(pixels.shape[1]))
    samples: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for _ in range(TIMING_ROUNDS):
            for name, predictor in predictors.items():
                for b in batches:
                    runs, started = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - started) < TIMING_MIN_S or runs < 2:
                        predictor.outputs(inputs[b])
                        runs += 1
                    samples.setdefault((name, b), []).append(1000 * elapsed / runs / b)
    return {name: {b: statistics.median(samples[(name, b)]) for b in batches}
            for name in predictors}
