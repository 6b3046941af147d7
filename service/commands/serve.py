"""``hubless serve``: run the HTTP service with uvicorn.

Exit status: 0 after a normal shutdown, 2 for invalid settings, 1 when the data cannot be loaded
(an unreadable file, a wrong dimension): the process ends, so an orchestrator restarts it or
shows the error, rather than keeping a server up whose /readyz says "failed" forever.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the HTTP service (settings from HUBLESS_* and --env-file)"
    )
    parser.add_argument("--env-file", type=Path, help="a file of HUBLESS_* settings (e.g. tune's)")
    parser.add_argument("--host", help="bind address (default HUBLESS_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default HUBLESS_PORT, 8000)")
    parser.set_defaults(func=serve)


def tune_for_serving() -> None:
    """The probes answer from the event loop, which needs the GIL: CPU-bound threads (searches,
    diagnostics, parsing) must hand it over within 1 ms (not the default 5 ms), and the cyclic
    garbage collector must not run full collections every few large responses (a 1024 × 97
    search answer is ~100k dicts; the default gen-0 threshold of 700 objects keeps collecting,
    each collection holding the GIL)."""
    import gc

    sys.setswitchinterval(0.001)
    gc.set_threshold(100_000, 50, 1000)


def serve(args: argparse.Namespace) -> int:
    import functools

    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.engine.persistence import StoreDamaged
    from service.engine.startup import open_store
    from service.serving import load_engine
    from service.settings import Settings, describe_errors, unknown_variables

    in_file, in_environment = unknown_variables(args.env_file)
    if in_file:
        print(f"hubless serve: {args.env_file} names unknown settings: {in_file}", file=sys.stderr)
        return 2
    if in_environment:  # other tools may set HUBLESS_-prefixed variables: warn, don't refuse
        print(f"hubless serve: ignoring unknown variables {in_environment}", file=sys.stderr)
    if args.env_file is not None and not args.env_file.is_file():
        print(f"hubless serve: --env-file {args.env_file}: no such file", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = Settings(_env_file=args.env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        print(f"hubless serve: {describe_errors(exc)}", file=sys.stderr)
        return 2
    loader = load_engine
    try:  # before listening: a damaged store stops the process (the precompute comes later)
        if not settings.remote:  # with milvus, Milvus is the store
            loader = functools.partial(load_engine, opened=open_store(settings))
    except StoreDamaged as exc:
        print(f"hubless serve: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError):
        pass  # unreadable input files: the loader reports them (below), and the process ends
    failures: list[str] = []

    def startup_failed(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(settings, loader=loader, on_failure=startup_failed)
    tune_for_serving()
    # one process, threads for concurrency: searches share the in-memory gallery (README)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    )
    server.run()
    if failures:
        print(f"hubless serve: startup failed: {failures[0]}", file=sys.stderr)
        return 1
    return 0
