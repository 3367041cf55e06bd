"""The web page at / (mounted into the Bento service): pick or drop a photo, see the label, and
say when it is wrong (buttons that post the true label to /feedback).

Everything it needs is served from bentoservice/static (no CDN: it works offline). It also serves
BentoML's OpenAPI page at /docs (the page at / replaces BentoML's own index), the served model's
facts at /model (JSON; `card` holds its model card as markdown) and the model card alone at
/model/card (`text/markdown`), which the page links to.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
CARD_FILE = "model_card.md"   # in the Bento model's folder, written by bentoservice.import_model


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


web_app = Starlette(routes=[
    Route("/", index, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/model", model, methods=["GET"]),
    Route("/model/card", model_card, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Mount("/ui", StaticFiles(directory=STATIC), name="ui"),
])
