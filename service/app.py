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
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimitMiddleware, ObservabilityMiddleware
from service.api.routes import diagnostics, gallery, operations, search
from service.api.runtime import Runtime
from service.engine import Engine
from service.engine.startup import load_engine
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Hubness-aware embedding retrieval: InvGC (inverse graph convolution on the
gallery) and DBNorm (DualIS / DualDIS normalisation with a query bank and a gallery bank),
exact on every method. See the README for the maths and the parameters."""


def _start(runtime: Runtime, loader: Callable[[Settings], Engine]) -> None:
    started = time.perf_counter()
    try:
        engine = loader(runtime.settings)
    except Exception as exc:  # reported on /readyz and in the log; the process stays up
        log.exception("startup failed")
        runtime.status, runtime.error = "failed", f"{type(exc).__name__}: {exc}"
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
) -> FastAPI:
    """A new app. ``loader`` builds the engine (tests inject a slow or failing one)."""
    settings = settings or Settings()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_json)
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=_start, args=(runtime, loader), name="precompute")
        thread.daemon = True
        thread.start()
        yield
        runtime.close()

    app = FastAPI(
        title="hubless",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (search, gallery, diagnostics, operations):
        app.include_router(module.router)
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
