"""The web page at / (mounted into the Bento service): pick or drop a photo, see the label, and
say when it is wrong (buttons that post the true label to /feedback). The review page at
/review labels the review queue (catsdogs.monitoring.review) with the keyboard; its data comes
from /review/queue (JSON) and /review/picture?prediction_id=ID (a kept picture, found by its
row's id only, never by a path a caller gives), both behind the API keys when they are on.

Everything it needs is served from bentoservice/static (no CDN: it works offline). It also serves
BentoML's OpenAPI page at /docs (the page at / replaces BentoML's own index), the served model's
facts at /model (JSON; `card` holds its model card as markdown) and the model card alone at
/model/card (`text/markdown`), which the page links to.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
CARD_FILE = "model_card.md"   # in the Bento model's folder, written by bentoservice.import_model
PREDICTION_ID = re.compile(r"[0-9a-f]{32}")
QUEUE_LIMIT = 200             # pictures /review/queue answers at most


def read_card(path: Path) -> str | None:
    """The model card stored with the Bento model, or None when the import stored none."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


async def index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def favicon(_: Request) -> Response:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")


async def model(request: Request) -> Response:
    """The served model: name, version, run id, classes, training data, `card` (its model card
    as markdown, null when the import stored none) and `runtime`: the serving variant the model
    process runs, why, and the import's measurements (label agreement with fp32, ms a picture
    by batch size; catsdogs.inference.variants); null when the model process does not answer."""
    info = getattr(request.app.state, "model", None)
    if info is None:
        return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
    runtime = getattr(request.app.state, "runtime", None)
    return JSONResponse({**info, "runtime": await runtime() if runtime is not None else None})


async def model_card(request: Request) -> Response:
    """The served model's card as `text/markdown`; 404 when the import stored none."""
    info = getattr(request.app.state, "model", None)
    if info is None:
        return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
    if not info.get("card"):
        return JSONResponse({"error": f"{info.get('name')} v{info.get('version')} was imported "
                             "without a model card; re-run `python -m bentoservice.import_model`",
                             "reason": "no_card"}, status_code=404)
    return Response(info["card"], media_type="text/markdown; charset=utf-8")


async def docs(_: Request) -> Response:
    import _bentoml_impl.server as bento_server

    return FileResponse(Path(bento_server.__file__).parent / "main-openapi.html",
                        media_type="text/html")


async def review(_: Request) -> Response:
    return FileResponse(STATIC / "review.html", media_type="text/html")


def _no_review() -> Response:
    return JSONResponse({"error": "this service keeps no prediction log "
                         "(CATSDOGS_PREDICTION_LOG=0): there is no review queue",
                         "reason": "review_unavailable"}, status_code=404)


def _store_down(exc: SQLAlchemyError) -> Response:
    return JSONResponse({"error": f"the prediction log's store is not answering "
                         f"({type(exc).__name__}); retry in a moment",
                         "reason": "review_unavailable"}, status_code=503)


async def review_queue(request: Request) -> Response:
    """`{"items": [...], "waiting": {reason: n}}`: the first `limit` (query, 1-200, default 20)
    unlabelled kept pictures, most useful first, and how many wait by reason."""
    desk = getattr(request.app.state, "review", None)
    if desk is None:
        return _no_review()
    try:
        limit = min(max(int(request.query_params.get("limit", "20")), 1), QUEUE_LIMIT)
    except ValueError:
        return JSONResponse({"error": "`limit` takes a whole number", "reason": "bad_limit"},
                            status_code=400)
    try:
        items, waiting = await run_in_threadpool(desk.waiting, limit)
    except SQLAlchemyError as exc:
        return _store_down(exc)
    return JSONResponse({"items": [item.as_dict() for item in items], "waiting": waiting},
                        headers={"cache-control": "no-store"})


async def review_picture(request: Request) -> Response:
    """The kept picture of `?prediction_id=` (32 hex digits); 404 when there is none."""
    desk = getattr(request.app.state, "review", None)
    if desk is None:
        return _no_review()
    prediction_id = request.query_params.get("prediction_id", "")
    path = None
    if PREDICTION_ID.fullmatch(prediction_id):
        try:
            path = await run_in_threadpool(desk.picture, prediction_id)
        except SQLAlchemyError as exc:
            return _store_down(exc)
    if path is None:
        return JSONResponse({"error": f"no kept picture for prediction {prediction_id[:64]!r}",
                             "reason": "unknown_picture"}, status_code=404)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={
        "cache-control": "private, no-store", "x-content-type-options": "nosniff"})


web_app = Starlette(routes=[
    Route("/", index, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/model", model, methods=["GET"]),
    Route("/model/card", model_card, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/review", review, methods=["GET"]),
    Route("/review/queue", review_queue, methods=["GET"]),
    Route("/review/picture", review_picture, methods=["GET"]),
    Mount("/ui", StaticFiles(directory=STATIC), name="ui"),
])
