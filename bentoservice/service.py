"""The catsdogs Bento service: the champion CNN behind /predict, /predict_batch, /predict_base64,
/explain (a Grad-CAM heatmap of the answer), /feedback (the true label of an answer), a web page
at /, health probes and Prometheus metrics.

Two services, two processes: `catsdogs` (the HTTP API) decodes and resizes pictures in a thread
pool, joins the pixels of concurrent requests (bentoservice/coalesce.py) and calls
`catsdogs_model`, whose batchable `infer` runs the network on adaptive batches. Decoding therefore
never waits behind the model. Configuration: bentoservice/settings.py.

Monitoring: the model service returns, from the same forward pass, the probabilities, the
penultimate-layer embedding and its out-of-distribution score (bentoservice/runtime.py
`pack_outputs`); answers carry `in_distribution` and `ood_score`, and every prediction is handed
to the prediction log (catsdogs.monitoring.prediction_log), whose background thread writes it to
the store: the request only puts a record on a bounded queue. Each logged answer carries the
row's `prediction_id`; `POST /feedback` records the true label (cat, dog or neither) of that row
(`PredictionLog.label`).

The upload routes (/predict, /predict_batch, /predict_base64, /explain) are routes of an ASGI app
the service mounts (bentoservice/routes.py): the guard reads and parses each body once, the routes
hand the uploads to `classify` / `explanation`, and each picture is decoded once, its stored size
and format coming back with its pixels (catsdogs.data.images.square_decoded). /feedback is a
BentoML API (a small JSON body: BentoML's own parsing costs it little).

Explanations: /explain answers like /predict (the same guard, decode path and batched model call,
so the same label and confidence; not counted or logged as a prediction again), then computes the Grad-CAM heatmap of that label
(catsdogs.inference.explain) with the eager float32 torch network, whatever variant the model
service runs (OpenVINO, TorchScript bf16, ...): loaded into the API process on the first
/explain, run on its own one-thread pool (at most `EXPLAIN_WAITING` explanations queued, then
503), so it never holds up /predict's decoding or batching.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import aiohttp
import bentoml
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from bentoservice.access import ApiAccess, access_options
from bentoservice.coalesce import Coalescer
from bentoservice.edge import EdgeLimits
from bentoservice.edge import install as install_edge
from bentoservice.guard import Refusal, RequestGuard, refusal_response
from bentoservice.import_model import OOD_FOLDER_NAME
from bentoservice.routes import Explained, ModelRef, Prediction, upload_app
from bentoservice.runtime import (
    MLFLOW_MODEL_FOLDER,
    ModelInfo,
    freeze_startup_heap,
    load_network,
    load_ood,
    missing_parts,
    ood_threshold,
    pack_outputs,
    set_threads,
    unpack_outputs,
)
from bentoservice.settings import (
    LOG_FORMAT,
    REVIEW,
    SETTINGS,
    prediction_log_pictures,
    prediction_log_target,
)
from bentoservice.web import CARD_FILE, read_card, web_app
from catsdogs.config import CLASSES, FEEDBACK_LABELS
from catsdogs.console import bind_log_fields, log_handler
from catsdogs.data.images import ImageLimits, ImageRejected, decode_image, square_decoded
from catsdogs.inference.compute import serving_device
from catsdogs.inference.explain import GradCam, overlay, png
from catsdogs.inference.variants import REFERENCE, Choice, Predicting, build_predictor, choose
from catsdogs.monitoring.prediction_log import Labelled, PredictionLog, PredictionRecord
from catsdogs.monitoring.review import ReviewDesk

logger = logging.getLogger("bentoservice")
logger.setLevel(logging.INFO)  # BentoML's server logging passes the root logger's WARNING on only
if LOG_FORMAT == "json":
    # the service's own lines (bentoservice.*) as JSON with the model's fields (docs/logs.md);
    # BentoML's own lines keep BentoML's format
    logger.addHandler(log_handler("json"))
    logger.propagate = False

# The prediction metrics carry the model version and the deploy slot (CATSDOGS_SLOT) as labels, so
# a dashboard tells the two versions of a rollout apart; BentoML's own request metrics
# (bentoml_service_request_*) cannot be relabelled here: queries join them with
# catsdogs_model_info on (job, instance) to get the same labels (docs/monitoring.md).
VERSIONED = ["version", "slot"]
PREDICTIONS = bentoml.metrics.Counter(
    name="catsdogs_predictions", documentation="Predictions served, by label, model version "
    "and slot", labelnames=["label", *VERSIONED])
CONFIDENCE = bentoml.metrics.Histogram(
    name="catsdogs_prediction_confidence", documentation="Confidence of the predicted label, "
    "by model version and slot", labelnames=VERSIONED,
    buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
OUT_OF_DISTRIBUTION = bentoml.metrics.Counter(
    name="catsdogs_out_of_distribution",
    documentation="Predictions whose picture does not look like a cat or a dog photo "
                  "(out-of-distribution score above the threshold calibrated at training time), "
                  "by model version and slot", labelnames=VERSIONED)
PREDICTION_LOG_ROWS = bentoml.metrics.Counter(
    name="catsdogs_prediction_log_rows",
    documentation="Prediction log rows by outcome: written, dropped_queue_full, "
                  "dropped_store_error; by model version and slot",
    labelnames=["outcome", *VERSIONED])
DECODE_CPU = bentoml.metrics.Counter(
    name="catsdogs_decode_cpu_seconds",
    documentation="CPU seconds the decode threads spent decoding and resizing uploads "
                  "(time.thread_time of each decode call; benchmarks/serve_load.py splits "
                  "the API process's CPU with it)")
EXPLANATIONS = bentoml.metrics.Histogram(
    name="catsdogs_explain_seconds",
    documentation="Seconds the explain thread spent on one Grad-CAM picture (load excluded), "
                  "by model version and slot", labelnames=VERSIONED, buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
FEEDBACK = bentoml.metrics.Counter(
    name="catsdogs_feedback",
    documentation="Answers labelled through /feedback, counted at their first label (a relabel "
                  "is recorded in the log, not counted again), by the true label, whether the "
                  "answer was right (correct: true/false; n/a for neither: the model only "
                  "answers cat or dog) and the model version that answered",
    labelnames=["label", "correct", "version"])
MODEL_INFO = bentoml.metrics.Gauge(
    name="catsdogs_model_info", documentation="The model being served and the slot serving it "
    "(value 1): join BentoML's request metrics with it on (job, instance) for their version",
    labelnames=["name", *VERSIONED], multiprocess_mode="max")


EXPLAIN_WAITING = 4              # explanations queued behind the running one before 503
FEEDBACK_THREADS = 4             # feedback requests waiting on the prediction log at once
EXPLAIN_SIDE = 768               # longest side of the explanation PNG (smaller pictures: as sent)


class FeedbackAnswer(BaseModel):
    """/feedback's answer: the label as recorded."""

    prediction_id: str = Field(description="the answer labelled")
    label: str = Field(description="the true label recorded: " + ", ".join(FEEDBACK_LABELS))
    labelled_at: dt.datetime = Field(description="when it was recorded (UTC)")


# No thread pool may spin on the cores the API process needs for decoding. OpenMP threads sleep
# between batches instead of spinning (GNU OpenMP's default): ~1.3x more requests/s on 2 cores.
# numpy's OpenBLAS runs single-threaded: the out-of-distribution score (an N x D @ D x D product,
# ~0.1 ms a picture on one thread) woke its worker thread, which then busy-waited ~13 ms a request
# (measured with gdb and /proc at c=1); without it, 1.3x more requests/s at c=1 and c=32.
SERVICE_ENV = [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
               {"name": "OPENBLAS_NUM_THREADS", "value": "1"}]


# runner_connection: BentoML 1.4.40's client to a dependency replaces its connection pool every
# 100 requests / 300 s and closes the old pool with calls still in flight on it ("Server
# disconnected" under load); one pool for the life of the process avoids that. The internal
# hop's access log is off (the public service logs every request).
@bentoml.service(name="catsdogs_model", workers=1, traffic={"timeout": 120}, envs=SERVICE_ENV,
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 86400},
                 logging={"access": {"enabled": False}})
class CatsDogsModel:
    """The network on adaptive batches (internal; the public API is the `catsdogs` service)."""

    bento_model = bentoml.models.BentoModel(SETTINGS.bento_model)

    def __init__(self) -> None:
        stored = self.bento_model
        self.info = ModelInfo.from_metadata(stored.info.metadata, str(stored.tag))
        bind_log_fields(model=self.info.name, model_version=self.info.version,
                        model_run_id=self.info.run_id)
        self.model_dir = Path(stored.path_of(MLFLOW_MODEL_FOLDER))
        self.ood_dir = Path(stored.path_of(OOD_FOLDER_NAME))
        self.folder = Path(stored.path)
        self.predictor: Predicting | None = None
        self.choice: Choice | None = None
        self.ood = None
        self.loaded = threading.Event()
        missing = missing_parts(self.folder, dict(stored.info.metadata))
        # a model an interrupted import left (no calibration: answers would say
        # `in_distribution: null`) is never served: /readyz stays not ready and says why
        self.broken = (f"the Bento model {stored.tag} is incomplete (missing {', '.join(missing)});"
                       " re-import it (`python -m bentoservice.import_model`) and rebuild"
                       if missing else None)
        if self.broken:
            logger.error("%s: refusing to serve it", self.broken)
            return
        threading.Thread(target=self._load, name="model-load", daemon=True).start()

    def _load(self) -> None:
        """Load, prepare and warm up the network; only then does /readyz say ready."""
        time.sleep(SETTINGS.startup_delay_s)
        set_threads(SETTINGS.torch_threads)
        device = serving_device(SETTINGS.device)
        choice = choose(SETTINGS.runtime, self.info.variants, self.folder, device.type)
        started = time.perf_counter()
        try:
            predictor = self._prepare(choice.variant, device)
        except Exception as exc:  # noqa: BLE001 (a variant that fails to compile: serve fp32)
            logger.warning("serving variant %s failed to load (%s: %s): serving %s",
                           choice.variant, type(exc).__name__, exc, REFERENCE)
            choice = Choice(REFERENCE, f"{choice.variant} failed to load: {exc}", True)
            predictor = self._prepare(REFERENCE, device)
        self.ood = load_ood(self.ood_dir) if predictor.embeds else None
        self.predictor, self.choice = predictor, choice
        freeze_startup_heap()
        self.loaded.set()
        logger.info("model %s v%s ready on %s: variant %s (%s), %d threads, in %.1fs",
                    self.info.name, self.info.version, device, choice.variant, choice.reason,
                    torch.get_num_threads(), time.perf_counter() - started)

    def _prepare(self, variant: str, device: torch.device) -> Predicting:
        predictor = build_predictor(variant, lambda: load_network(self.model_dir, self.info),
                                    self.folder, device, self.info.image_size, jit=SETTINGS.jit)
        predictor.warm_up(SETTINGS.max_batch_size, self.info.image_size)
        return predictor

    def __is_ready__(self) -> bool:
        """Ready once the model is loaded, and not while draining (CATSDOGS_DRAIN_FILE exists: the
        pod is about to stop); never for an incomplete model (said once at start)."""
        drain = SETTINGS.drain_file
        return self.loaded.is_set() and not (drain is not None and drain.exists())

    @bentoml.api
    def runtime(self) -> dict:
        """The variant this process serves and what the import measured (for /model); null
        fields while the model loads."""
        measured = [m.as_dict() for m in self.info.variants]
        choice = self.choice
        return {"variant": None if choice is None else choice.variant,
                "reason": None if choice is None else choice.reason,
                "fell_back": None if choice is None else choice.fell_back,
                "measured_on": self.info.variants_measured_on or None, "measured": measured}

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N,H,W,3 uint8 pictures (`square_image` pixels) -> N x (C + 1 + D) float32: class
        probabilities | out-of-distribution score | embedding (runtime.pack_outputs)."""
        if self.broken:
            raise bentoml.exceptions.ServiceUnavailable(self.broken)
        if not self.loaded.wait(timeout=120):
            raise bentoml.exceptions.ServiceUnavailable("the model is still loading")
        assert self.predictor is not None
        probabilities, embedding = self.predictor.outputs(torch.from_numpy(batch))
        return pack_outputs(probabilities.numpy(),
                            None if embedding is None else embedding.numpy(), self.ood)


@dataclass(frozen=True)
class Upload:
    """What the prediction log keeps of one upload besides its pixels: its stored size and
    format (from the decode) and its bytes (kept only when the answer's keeping policy keeps
    the picture: `_answer`)."""

    width: int
    height: int
    format: str | None
    source: bytes


def _count_feedback(label: str, labelled: Labelled) -> None:
    """Count an answer's first feedback label in `catsdogs_feedback_total` (live accuracy:
    correct="true" over correct=~"true|false"; docs/monitoring.md)."""
    if labelled.first:
        correct = "n/a" if label not in CLASSES else str(labelled.predicted == label).lower()
        FEEDBACK.labels(label=label, correct=correct, version=labelled.model_version).inc()


@bentoml.asgi_app(upload_app, path="/")
@bentoml.asgi_app(web_app, path="/")
@bentoml.service(name="catsdogs", workers=1, envs=SERVICE_ENV,
                 traffic={"timeout": 120})  # request slots: the guard (after the body is read)
class CatsDogs:
    """Cats vs dogs: send a photo, get the label, its confidence and the model version."""

    bento_model = bentoml.models.BentoModel(SETTINGS.bento_model)
    model = bentoml.depends(CatsDogsModel)

    def __init__(self) -> None:
        stored = self.bento_model
        self.info = ModelInfo.from_metadata(stored.info.metadata, str(stored.tag))
        bind_log_fields(model=self.info.name, model_version=self.info.version,
                        model_run_id=self.info.run_id)
        self.limits = ImageLimits(max_bytes=SETTINGS.max_upload_bytes,
                                  max_pixels=SETTINGS.max_pixels, min_side=SETTINGS.min_side,
                                  max_aspect_ratio=SETTINGS.max_aspect_ratio,
                                  names={name: f"CATSDOGS_{name.upper()}" for name in (
                                      "max_pixels", "min_side", "max_aspect_ratio")}
                                  | {"max_bytes": "CATSDOGS_MAX_UPLOAD_BYTES"})
        self.pool = ThreadPoolExecutor(SETTINGS.decode_threads or len(os.sched_getaffinity(0)),
                                       thread_name_prefix="decode")
        self.coalescer = Coalescer(self._infer, SETTINGS.max_batch_size,
                                   SETTINGS.model_calls_in_flight)
        self.model_dir = Path(stored.path_of(MLFLOW_MODEL_FOLDER))
        self.explain_pool = ThreadPoolExecutor(1, thread_name_prefix="explain")
        # feedback waits on the store (and up to flush_s + 1 s for another replica's row), off
        # the decode threads
        self.feedback_pool = ThreadPoolExecutor(FEEDBACK_THREADS, thread_name_prefix="feedback")
        self.explaining = 0              # /explain requests queued or running
        self.gradcam: GradCam | None = None
        self.served_variant: str | None = None
        self.model_ref = ModelRef(name=self.info.name, version=self.info.version)
        self.versioned = {"version": self.info.version, "slot": SETTINGS.slot}
        self.ood_threshold = ood_threshold(Path(stored.path_of(OOD_FOLDER_NAME)))
        self.prediction_log = (PredictionLog(
            prediction_log_target(SETTINGS), batch_rows=SETTINGS.prediction_log_batch_rows,
            flush_s=SETTINGS.prediction_log_flush_s, queue_size=SETTINGS.prediction_log_queue,
            retention_days=SETTINGS.prediction_log_retention_days,
            max_rows=SETTINGS.prediction_log_max_rows,
            policy=REVIEW, sample_rate=SETTINGS.prediction_log_sample_rate,
            sample_dir=prediction_log_pictures(SETTINGS),
            on_rows=lambda outcome, n: PREDICTION_LOG_ROWS.labels(
                outcome=outcome, **self.versioned).inc(n),
            on_label=_count_feedback,
        ).start() if SETTINGS.prediction_log else None)
        MODEL_INFO.labels(name=self.info.name, **self.versioned).set(1)
        data = self.info.data
        web_app.state.model = {"name": self.info.name, "version": self.info.version,
                               "run_id": self.info.run_id, "bento_model": self.info.bento_tag,
                               "classes": list(self.info.classes),
                               "data": data.as_dict() if data is not None else None,
                               "card": read_card(Path(stored.path_of(CARD_FILE)))}
        web_app.state.runtime = self._runtime
        upload_app.state.service = self
        web_app.state.review = (ReviewDesk(prediction_log_target(SETTINGS),
                                           prediction_log_pictures(SETTINGS))
                                if self.prediction_log is not None else None)
        if data is not None and data.synthetic:
            logger.warning("serving %s v%s: %s", self.info.name, self.info.version, data.note())
        freeze_startup_heap()

    async def _runtime(self) -> dict | None:
        """What the model service says it runs (catsdogs.inference.variants), None when it does not
        answer within 5 s."""
        try:
            return await asyncio.wait_for(self.model.to_async.runtime(), timeout=5)
        except (TimeoutError, aiohttp.ClientError, bentoml.exceptions.BentoMLException) as exc:
            logger.warning("the model service did not say which variant it runs: %s", exc)
            return None

    @bentoml.on_shutdown
    def _close_prediction_log(self) -> None:
        """Write what the prediction log still holds before the process ends."""
        if self.prediction_log is not None:
            self.prediction_log.close()
        if web_app.state.review is not None:
            web_app.state.review.close()

    def _prepare(self, source: bytes) -> tuple[np.ndarray, Upload]:
        """In a decode thread: the upload's S,S,3 uint8 pixels and its `Upload` (one decode)."""
        started = time.thread_time()
        try:
            found = square_decoded(source, self.info.image_size, self.limits)
            return np.asarray(found.image), Upload(found.width, found.height, found.format,
                                                   source)
        finally:
            DECODE_CPU.inc(time.thread_time() - started)

    async def _pixels(self, sources: list[bytes]) -> tuple[np.ndarray, list[Upload]]:
        """Decode and resize in the thread pool: N,H,W,3 uint8 (the model process normalises
        batches) and what the prediction log keeps of each upload; a bad picture raises
        ImageRejected, naming its position when there are several."""
        loop = asyncio.get_running_loop()
        pictures = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._prepare, s) for s in sources),
            return_exceptions=True)
        for index, result in enumerate(pictures):
            if isinstance(result, ImageRejected) and len(sources) > 1:
                raise ImageRejected(result.reason,
                                    f"image {index + 1} of {len(sources)}: {result}")
            if isinstance(result, BaseException):
                raise result
        return (np.stack([pixels for pixels, _ in pictures]),  # type: ignore[misc]
                [upload for _, upload in pictures])  # type: ignore[misc]

    def _answer(self, outputs: np.ndarray, pixels: np.ndarray,
                uploads: list[Upload], record: bool = True) -> list[Prediction]:
        """The answers; `record`: counted in the prediction metrics and handed to the prediction
        log (False for /explain: the page asks /predict and /explain for the same upload)."""
        probabilities, scores, embeddings = unpack_outputs(outputs, len(self.info.classes))
        threshold = self.ood_threshold
        now = dt.datetime.now(dt.UTC)
        answers = []
        for index, row in enumerate(probabilities.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            label = self.info.classes[best]
            score = float(scores[index])
            score, inside = ((None, None) if math.isnan(score) or threshold is None
                             else (score, score <= threshold))
            if record:
                PREDICTIONS.labels(label=label, **self.versioned).inc()
                CONFIDENCE.labels(**self.versioned).observe(row[best])
                if inside is False:
                    OUT_OF_DISTRIBUTION.labels(**self.versioned).inc()
            upload, prediction_id = uploads[index], None
            if record and self.prediction_log is not None:
                kept_for = self.prediction_log.keep_for(row[best], inside)
                logged = PredictionRecord(
                    time=now, model_name=self.info.name, model_version=self.info.version,
                    label=label, confidence=row[best], width=upload.width,
                    height=upload.height, format=upload.format, pixels=pixels[index],
                    embedding=None if embeddings is None else embeddings[index],
                    ood_score=score, in_distribution=inside, kept_for=kept_for,
                    picture=upload.source if kept_for else None)
                if self.prediction_log.submit(logged):
                    prediction_id = logged.prediction_id
            answers.append(Prediction(
                label=label, confidence=row[best],
                probabilities=dict(zip(self.info.classes, row, strict=True)),
                model=self.model_ref, in_distribution=inside, ood_score=score,
                prediction_id=prediction_id))
        return answers

    async def classify(self, uploads: list[bytes]) -> list[Prediction]:
        """The answers to the upload routes (bentoservice/routes.py), one per upload in order,
        counted and logged; raises `Refusal` (a picture refused, the model unavailable)."""
        answers, _ = await self._classify(uploads)
        return answers

    async def _classify(self, sources: list[bytes], record: bool = True
                        ) -> tuple[list[Prediction], np.ndarray]:
        """The answers and the N,S,S,3 uint8 pixels they were computed from (`record`: see
        `_answer`); raises `Refusal`."""
        try:
            pixels, uploads = await self._pixels(sources)
        except ImageRejected as exc:
            raise Refusal(413 if exc.reason == "too_large" else 400, exc.reason,
                          str(exc)) from None
        outputs = await self.coalescer.infer(pixels)
        if outputs is None:
            raise Refusal(503, "model_unavailable",
                          "the model service is overloaded or not answering; retry in a moment")
        return self._answer(outputs, pixels, uploads, record), pixels

    def _explain_picture(self, source: bytes, pixels: np.ndarray, label: str
                         ) -> tuple[bytes, int, int]:
        """In the explain thread: Grad-CAM of `label` on the answer's S,S,3 pixels, laid over
        the upload (at most EXPLAIN_SIDE on its longest side) -> (PNG bytes, width, height).
        The eager network is loaded on the first call."""
        if self.gradcam is None:
            started = time.perf_counter()
            self.gradcam = GradCam(load_network(self.model_dir, self.info))
            logger.info("explanations: %s v%s's eager network loaded in %.1fs", self.info.name,
                        self.info.version, time.perf_counter() - started)
        started = time.perf_counter()
        found = self.gradcam.explain(pixels, self.info.classes.index(label))
        picture = decode_image(source, self.limits, draft_size=EXPLAIN_SIDE)
        picture.thumbnail((EXPLAIN_SIDE, EXPLAIN_SIDE), Image.Resampling.LANCZOS)
        blended = overlay(picture, found.heatmap)
        EXPLANATIONS.labels(**self.versioned).observe(time.perf_counter() - started)
        return png(blended), blended.width, blended.height

    async def _infer(self, pixels: np.ndarray, attempts: int = 3) -> np.ndarray | None:
        """Probabilities from the batched model service; None when it cannot answer (overloaded,
        still loading past the timeout, gone). Inference is idempotent, so a connection the
        model process dropped (e.g. it restarted) is retried on a fresh one."""
        for attempt in range(1, attempts + 1):
            try:
                return await self.model.to_async.infer(pixels)
            except aiohttp.ClientError as exc:
                logger.warning("model call failed (attempt %d/%d): %s", attempt, attempts, exc)
            except bentoml.exceptions.BentoMLException as exc:
                logger.warning("model call failed: %s: %s", type(exc).__name__, exc)
                return None
        return None

    @bentoml.api(route="/feedback")
    async def feedback(
        self,
        prediction_id: Annotated[str, Field(description="the `prediction_id` of an answer of "
                                            "/predict, /predict_batch or /predict_base64")],
        label: Annotated[str, Field(description="what the picture really shows: "
                                    + ", ".join(FEEDBACK_LABELS))],
    ) -> FeedbackAnswer:
        """Say what the picture of an answer really shows: JSON `{"prediction_id": "...",
        "label": "cat" | "dog" | "neither"}` records the true label, and when, in the answer's
        prediction-log row (the later label of an id wins; nothing else changes). 400
        `bad_label`: another label; 404 `unknown_prediction`: no row has that id (never
        answered, not logged, or deleted by the log's cap or retention)."""
        if label not in FEEDBACK_LABELS:
            return refusal_response(Refusal(400, "bad_label", f"`label` is {label[:40]!r}; it "
                                            "takes " + ", ".join(FEEDBACK_LABELS)))
        if self.prediction_log is None:
            return refusal_response(Refusal(404, "unknown_prediction", "this service keeps no "
                                            "prediction log (CATSDOGS_PREDICTION_LOG=0): no "
                                            "answer can be labelled"))
        at = dt.datetime.now(dt.UTC)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self.feedback_pool, self.prediction_log.label,
                                               prediction_id, label, at)
        except (SQLAlchemyError, OSError) as exc:   # OSError: SQLite's folder cannot be made
            logger.warning("feedback not recorded: %s: %s", type(exc).__name__,
                           str(exc).splitlines()[0][:300])
            return refusal_response(Refusal(503, "feedback_unavailable", "the prediction log's "
                                            "store is not answering; retry in a moment"))
        if not found:
            return refusal_response(Refusal(
                404, "unknown_prediction", f"no prediction {prediction_id[:64]!r} in the "
                "prediction log: never answered, not logged, or deleted by its cap "
                "(CATSDOGS_PREDICTION_LOG_MAX_ROWS) or retention"))
        logger.info("feedback: %s is a %s", prediction_id, label)
        return FeedbackAnswer(prediction_id=prediction_id, label=label, labelled_at=at)

    async def explanation(self, upload: bytes) -> Explained:
        """/explain (bentoservice/routes.py): the answer as /predict gives it (not counted or
        logged again) and its Grad-CAM picture; raises `Refusal` (the picture's, explain_busy
        past EXPLAIN_WAITING queued, explain_unavailable for a network Grad-CAM cannot hook)."""
        if self.explaining > EXPLAIN_WAITING:
            raise Refusal(503, "explain_busy", f"{self.explaining} explanations are waiting; "
                          "retry in a moment")
        self.explaining += 1
        try:
            answers, pixels = await self._classify([upload], record=False)
            answer = answers[0]
            loop = asyncio.get_running_loop()
            try:
                data, width, height = await loop.run_in_executor(
                    self.explain_pool, self._explain_picture, upload, pixels[0], answer.label)
            except ValueError as exc:      # a network Grad-CAM cannot hook (an exported graph)
                logger.warning("no explanation for %s v%s: %s", self.info.name,
                               self.info.version, exc)
                raise Refusal(503, "explain_unavailable", f"this model cannot be explained: "
                              f"{exc}") from None
        finally:
            self.explaining -= 1
        if self.served_variant is None:
            runtime = await self._runtime()
            self.served_variant = runtime.get("variant") if runtime else None
        return Explained(answer, data, width, height, self.served_variant)


# optional API keys and per-client rate limit (bentoservice.access; off unless configured),
# outermost: a refused client costs no body read and keeps its own answer and headers
CatsDogs.add_asgi_middleware(ApiAccess, **access_options(SETTINGS))
CatsDogs.add_asgi_middleware(RequestGuard, max_upload_bytes=SETTINGS.max_upload_bytes,
                             max_batch_images=SETTINGS.max_batch_images,
                             request_slots=SETTINGS.request_slots)
install_edge(EdgeLimits(max_header_bytes=SETTINGS.max_header_bytes,
                        header_timeout_s=SETTINGS.header_timeout_s,
                        body_timeout_s=SETTINGS.body_timeout_s,
                        max_connections=SETTINGS.max_connections))

