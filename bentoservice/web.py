"""The web page at / (mounted into the Bento service): pick or drop a photo, see the label.

Everything it needs is served from bentoservice/static (no CDN: it works offline). It also serves
BentoML's OpenAPI page at /docs (the page at / replaces BentoML's own index).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def favicon(_: Request) -> Response:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")


async def model(request: Request) -> Response:
    """The served model's name and version (for the page)."""
    info = getattr(request.app.state, "model", None)
    if info is None:
        return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
    return JSONResponse(info)


async def docs(_: Request) -> Response:
    import _bentoml_impl.server as bento_server

    return FileResponse(Path(bento_server.__file__).parent / "main-openapi.html",
                        media_type="text/html")


web_app = Starlette(routes=[
    Route("/", index, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/model", model, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Mount("/ui", StaticFiles(directory=STATIC), name="ui"),
])
