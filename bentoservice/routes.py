"""The upload routes /predict, /predict_batch, /predict_base64 and /explain: an ASGI app the Bento
service mounts (bentoservice/service.py), so that BentoML parses none of their bodies.

The guard (bentoservice/guard.py) has already read each body once under the size limit and parsed
it once; the route takes what it found from the request's state (`guard.UPLOADS`: the files'
bytes, or /predict_base64's string), hands the bytes to the service (`Classifier`: it decodes each
picture once, catsdogs.data.images.square_decoded, and joins the pixels of concurrent requests into
the model service's batched call) and answers JSON. Every refusal, the guard's or the service's,
leaves as `guard.refusal_response`.

The app is a FastAPI app for one reason: BentoML 1.4 adds the OpenAPI paths of mounted FastAPI
apps (and of no other kind) to its own /docs.json, so /docs keeps describing these routes.
FastAPI's own /docs, /redoc and /openapi.json are off; no route has a body parameter, so FastAPI
reads and validates nothing.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI
from pydantic import BaseModel, Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bentoservice.guard import UPLOADS, Refusal, looks_like_url, refusal_response, url_refusal
from bentoservice.settings import SETTINGS
from catsdogs.inference.variants import REFERENCE

EXPLAINED_WITH = REFERENCE      # the network Grad-CAM runs: eager, float32 (needs gradients)
EXPLAIN_HEADERS = {"label": "x-catsdogs-label", "confidence": "x-catsdogs-confidence",
                   "version": "x-catsdogs-model-version",
                   "explained_with": "x-catsdogs-explained-with",
                   "served_variant": "x-catsdogs-served-variant"}


class ModelRef(BaseModel):
    name: str = Field(description="registered model name")
    version: str = Field(description="registered model version")


class Prediction(BaseModel):
    label: str = Field(description="predicted class: cat or dog")
    confidence: float = Field(description="probability of the predicted label")
    probabilities: dict[str, float] = Field(description="probability of each class")
    model: ModelRef
    in_distribution: bool | None = Field(
        None, description="false: the picture does not look like a cat or a dog photo (its "
        "out-of-distribution score is above the threshold); null: the model has no calibration")
    ood_score: float | None = Field(
        None, description="out-of-distribution score (squared Mahalanobis distance of the "
        "embedding to the nearest class; higher: less like the training pictures)")
    prediction_id: str | None = Field(
        None, description="this answer's row in the prediction log (32 hex digits): POST it to "
        "/feedback with the true label; null when the log is off or dropped the row (queue "
        "full), and in /explain's answer (not logged again)")


class Explanation(BaseModel):
    """/explain's JSON variant (`?format=json` or `Accept: application/json`)."""

    prediction: Prediction = Field(description="the answer, as /predict gives it")
    heatmap_png: str = Field(description="base64 PNG: the picture with the Grad-CAM heatmap of "
                             "the predicted label over it")
    width: int = Field(description="the PNG's width in pixels")
    height: int = Field(description="the PNG's height in pixels")
    explained_with: str = Field(description="the network the heatmap comes from: the eager "
                                "float32 torch network, whatever variant serves /predict")
    served_variant: str | None = Field(description="the variant serving /predict (null: the "
                                       "model service did not say)")


class Refused(BaseModel):
    """Every refusal's answer (its reason also in the `x-catsdogs-reject-reason` header)."""

    error: str = Field(description="what is wrong and how to send it right")
    reason: str = Field(description="machine-readable reason (docs/serving.md)")


@dataclass(frozen=True)
class Explained:
    """What the service found for /explain: the answer and its heatmap PNG (`width` x `height`
    pixels); `served_variant`: the model service's variant (None: it did not say)."""

    prediction: Prediction
    png: bytes
    width: int
    height: int
    served_variant: str | None


class Classifier(Protocol):
    """What the routes ask of the service (bentoservice.service.CatsDogs)."""

    async def classify(self, uploads: list[bytes]) -> list[Prediction]:
        """One answer per upload, in order; raises `Refusal`."""

    async def explanation(self, upload: bytes) -> Explained:
        """The answer and its Grad-CAM picture; raises `Refusal`."""


PREDICTIONS = TypeAdapter(list[Prediction])


def _service(request: Request) -> Classifier:
    return request.app.state.service


def _uploads(request: Request) -> Any:
    """What the guard read for this route (guard.UPLOADS)."""
    return request.scope["state"][UPLOADS]


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def predict(request: Request) -> Response:
    """Classify one photo sent as multipart field `image` (or as the raw body with its image/*
    Content-Type)."""
    try:
        answers = await _service(request).classify(_uploads(request))
    except Refusal as refusal:
        return refusal_response(refusal)
    return _json(answers[0].model_dump_json().encode())


async def predict_batch(request: Request) -> Response:
    """Classify several photos in one request (repeated multipart field `images`); answers come
    back in the same order."""
    try:
        answers = await _service(request).classify(_uploads(request))
    except Refusal as refusal:
        return refusal_response(refusal)
    return _json(PREDICTIONS.dump_json(answers))


async def predict_base64(request: Request) -> Response:
    """Classify one photo sent as JSON `{"image": "<base64>"}` (a data: URL, in any case, is
    fine)."""
    try:
        answers = await _service(request).classify([base64_picture(_uploads(request))])
    except Refusal as refusal:
        return refusal_response(refusal)
    return _json(answers[0].model_dump_json().encode())


def base64_picture(image: str) -> bytes:
    """The bytes of /predict_base64's `image`: bare base64 or a `data:` URL (its scheme in any
    case, RFC 3986). Raises `Refusal`: url_not_accepted, bad_data_url (no comma ends its
    header), too_large (past CATSDOGS_MAX_UPLOAD_BYTES once decoded), bad_base64."""
    limit = SETTINGS.max_upload_bytes
    text = image.lstrip()
    data_url = text[:5].lower() == "data:"
    if looks_like_url(image) and not data_url:
        raise url_refusal("`image`", image, "/predict_base64")
    if data_url:
        prefix, comma, text = text.partition(",")
        if not comma:
            raise Refusal(400, "bad_data_url", f"`image` is a data: URL without the comma that "
                          f"ends its header ({prefix[:40]!r}…); send "
                          "data:image/jpeg;base64,<base64> or the base64 alone")
    if len(text) > limit * 4 // 3 + 4:
        raise Refusal(413, "too_large", f"the encoded image is {len(text)} characters; the "
                      f"limit is {limit} bytes once decoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refusal(400, "bad_base64", f"`image` is not valid base64: {exc}") from None


async def explain(request: Request) -> Response:
    """Why the model answered: the photo (multipart field `image`, the same rules as /predict)
    with a Grad-CAM heatmap of the predicted label over it, as a PNG (at most 768 px on its
    longest side); the answer in the `x-catsdogs-label`, `x-catsdogs-confidence` and
    `x-catsdogs-model-version` headers. `?format=json` (or `Accept: application/json`): the
    answer and the PNG in base64 as JSON. The heatmap comes from the eager float32 torch
    network (`x-catsdogs-explained-with`), also when /predict is served by another variant
    (`x-catsdogs-served-variant`, e.g. OpenVINO)."""
    try:
        found = await _service(request).explanation(_uploads(request)[0])
    except Refusal as refusal:
        return refusal_response(refusal)
    answer = found.prediction
    headers = {EXPLAIN_HEADERS["label"]: answer.label,
               EXPLAIN_HEADERS["confidence"]: f"{answer.confidence:.6f}",
               EXPLAIN_HEADERS["version"]: answer.model.version,
               EXPLAIN_HEADERS["explained_with"]: EXPLAINED_WITH,
               EXPLAIN_HEADERS["served_variant"]: found.served_variant or "unknown"}
    if _wants_json(request):
        body = Explanation(prediction=answer, heatmap_png=base64.b64encode(found.png).decode(),
                           width=found.width, height=found.height,
                           explained_with=EXPLAINED_WITH, served_variant=found.served_variant)
        return JSONResponse(body.model_dump(mode="json"), headers=headers)
    return Response(found.png, media_type="image/png", headers=headers)


def _wants_json(request: Request) -> bool:
    """/explain's JSON variant: `?format=json`, or an Accept header naming JSON but not PNG."""
    if request.query_params.get("format", "").lower() == "json":
        return True
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "image/png" not in accept


def _form(field: str, description: str, many: bool = False, raw: bool = False
          ) -> dict[str, Any]:
    """OpenAPI requestBody of a multipart upload route (`raw`: also the bare file)."""
    binary = {"type": "string", "format": "binary", "description": description}
    value = {"type": "array", "items": binary} if many else binary
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "properties": {field: value}}}}
    if raw:
        content["image/*"] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Refused, "description": "refused: the request or a picture is not right "
          "(reason: not_a_file, not_an_image, corrupt, truncated, metadata_too_large, "
          "bad_multipart, bad_data_url, bad_base64, url_not_accepted, ...)"},
    413: {"model": Refused, "description": "too_large: over CATSDOGS_MAX_UPLOAD_BYTES"},
    429: {"model": Refused, "description": "busy (every request slot taken) or rate_limited"},
    503: {"model": Refused, "description": "the model service cannot answer now"},
}
PHOTO = "the photo (JPEG, PNG, WebP, GIF, AVIF, HEIC, ...)"

upload_app = FastAPI(title="catsdogs uploads", docs_url=None, redoc_url=None, openapi_url=None)
upload_app.add_api_route("/predict", predict, methods=["POST"], response_model=Prediction,
                         responses=REFUSALS, openapi_extra=_form("image", PHOTO, raw=True))
upload_app.add_api_route("/predict_batch", predict_batch, methods=["POST"],
                         response_model=list[Prediction], responses=REFUSALS,
                         openapi_extra=_form("images", "photos, repeated field `images`",
                                             many=True))
upload_app.add_api_route(
    "/predict_base64", predict_base64, methods=["POST"], response_model=Prediction,
    responses=REFUSALS, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "description": "the photo's bytes, base64-encoded (a "
                      "data: URL is fine)"}}}}}}})
upload_app.add_api_route(
    "/explain", explain, methods=["POST"], response_model=Explanation,
    responses={**REFUSALS, 200: {"description": "the heatmap PNG (JSON with ?format=json)",
                                 "content": {"image/png": {"schema": {"type": "string",
                                                                      "format": "binary"}}}}},
    openapi_extra=_form("image", PHOTO))
