"""The FastAPI app: ``uvicorn service.app:app`` (settings from ``HUBLESS_*``).

The startup precompute runs in a background thread so the process answers ``/healthz`` at
once and ``/readyz`` (and every data endpoint) with 503 until the engine is complete.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api.docs import install_docs
from service.api.errors import install_error_handlers
from service.api.middleware import (
    BodyLimitMiddleware,
    ObservabilityMiddleware,
    ReadAuthMiddleware,
)
from service.api.routes import diagnostics, gallery, info, operations, search, ui
from service.api.runtime import Runtime
from service.engine import Engine
from service.engine.persistence import StoreDamaged
from service.io import DataError
from service.logs import configure_logging
from service.serving import load_engine
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Hubness-aware embedding retrieval: InvGC (inverse graph convolution on the
gallery) and DBNorm (DualIS / DualDIS normalisation with a query bank and a gallery bank),
exact on every method. See the README for the maths and the parameters."""


def _start(
    runtime: Runtime,
    loader: Callable[[Settings], Engine],
    on_failure: Callable[[str], None] | None = None,
) -> None:
    started = time.perf_counter()
    try:
        engine = loader(runtime.settings)
    except Exception as exc:  # reported on /readyz, in the log, and to ``on_failure``
        if isinstance(exc, DataError | StoreDamaged):  # names the file: no traceback needed
            log.error("startup failed: %s", exc)
            message = str(exc)
        else:
            log.exception("startup failed")
            message = f"{type(exc).__name__}: {exc}"
        runtime.status, runtime.error = "failed", message
        if on_failure is not None:
            on_failure(message)
        return
    runtime.metrics.precompute_seconds.set(time.perf_counter() - started)
    runtime.engine, runtime.status = engine, "ready"
    if engine.live_bank is not None and not runtime.closed:
        engine.live_bank.start(engine, runtime.settings.live_query_bank_refresh_seconds)
    runtime.metrics.ready.set(1)
    runtime.record_state()


def create_app(
    settings: Settings | None = None,
    *,
    loader: Callable[[Settings], Engine] = load_engine,
    configure_logs: bool = True,
    on_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """A new app. ``loader`` builds the engine (tests inject a slow or failing one);
    ``on_failure(message)`` is called if it fails (``hubless serve`` then exits with status 1;
    without it the process stays up and /readyz reports the failure)."""
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_json)
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(
            target=_start, args=(runtime, loader, on_failure), name="precompute"
        )
        thread.daemon = True
        thread.start()
        yield
        runtime.close()

    app = FastAPI(
        title="hubless",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs
        redoc_url=None,
    )
    install_docs(app)
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (search, gallery, diagnostics, operations, info, ui):
        app.include_router(module.router)
    if settings.auth_reads:
        app.add_middleware(ReadAuthMiddleware, settings=settings)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(ObservabilityMiddleware, metrics=runtime.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    """``service.app:app`` is built on first access, so importing this module has no effects."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
