"""``/docs`` served offline: the Swagger UI assets come from the ``swagger-ui-bundle`` package,
not a CDN, so the page works on a machine without internet access (FastAPI's default page
loads them from jsdelivr and stays blank offline). ReDoc (CDN only) is not served."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs/assets"


def docs(request: Request) -> HTMLResponse:
    """The Swagger UI page. A module-level endpoint reading the app from the request: FastAPI
    caches endpoints process-wide, so a closure over ``app`` would keep every app alive."""
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def install_docs(app: FastAPI) -> None:
    """Mount the bundled assets and the /docs page (the app must have ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui-assets")
    app.add_api_route("/docs", docs, include_in_schema=False, response_class=HTMLResponse)
