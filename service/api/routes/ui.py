"""GET /ui: the diagnostics page, static files shipped in the package (``service/api/static``).

No build step and no third-party script: the page is vanilla JS drawing inline SVG, and it
talks only to this service (the Content-Security-Policy below enforces that in the browser).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.api.errors import ApiError

router = APIRouter(include_in_schema=False)

#: the page's files and their media types; nothing else under static/ is served
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


@cache
def _asset(name: str) -> bytes:
    return files("service.api").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    # relative, like every URL of the page: behind a proxy's path prefix it still resolves
    return RedirectResponse("ui", status_code=307)


@router.get("/ui")
def page() -> Response:
    """The page itself is public: it holds no data, and asks for the key when a read is 401."""
    return _serve("index.html")


@router.get("/ui/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", f"no such file: /ui/{name}")
    return _serve(name)
