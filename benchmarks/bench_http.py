"""HTTP serving overhead: ``POST /search`` on a uvicorn process vs ``Engine.search`` in-process.

A ``hubless serve`` subprocess (:class:`benchmarks.load_test.Server`, 127.0.0.1, free port)
serves a gallery; one keep-alive httpx client sends requests back to back (no concurrency, so
latency is the request's own), for 1 and 64 queries a request. The same gallery is loaded
in-process (from the precompute cache the server wrote) and ``Engine.search`` timed on the same
queries: the ratio HTTP p50 / in-process p50 is the serving overhead. The rest of the table
splits that overhead into its parts (JSON parsing, request validation, vector conversion,
response building and serialisation), each timed alone.

    python -m benchmarks.run --only http           # 100k × 384 synthetic gallery
    python -m benchmarks.run --only http --quick   # the bundled 2000-item demo gallery
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.common import Row, best_time
from service.harness import Server, demo_queries, write_gallery

SECTION = "http"
METHOD = "dualis"


def _gallery(directory: Path, quick: bool) -> dict[str, str]:
    """Settings of the served data: the demo slice (quick) or 100k synthetic rows, demo banks."""
    env = write_gallery(directory, rows=2000, bank_rows=2000)
    if not quick:
        rng = np.random.default_rng(0)
        rows = rng.standard_normal((100_000, 384), dtype=np.float32)
        np.save(env["HUBLESS_GALLERY"], rows / np.linalg.norm(rows, axis=1, keepdims=True))
        del env["HUBLESS_GALLERY_IDS"]  # ids are the row numbers
    return env | {"HUBLESS_LOG_LEVEL": "WARNING", "HUBLESS_INVGC": "true"}


def _latencies(client: httpx.Client, body: bytes, seconds: float) -> list[float]:
    """Seconds per request, requests sent back to back for about ``seconds``."""
    headers = {"Content-Type": "application/json"}
    for _ in range(3):  # warm-up
        client.post("/search", content=body, headers=headers).raise_for_status()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        started = time.perf_counter()
        response = client.post("/search", content=body, headers=headers)
        response.raise_for_status()
        response.content  # noqa: B018 - the body is part of the request's cost
        times.append(time.perf_counter() - started)
    return times


def _percentile(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


def _in_process(env: dict[str, str], data_dir: Path) -> object:
    """The served engine, loaded in this process (the server's precompute cache makes it fast)."""
    from service.engine.startup import load_engine
    from service.settings import Settings

    names = {"GALLERY": "gallery", "GALLERY_IDS": "gallery_ids"}
    names |= {"QUERY_BANK": "query_bank", "GALLERY_BANK": "gallery_bank"}
    values = {
        field: env[f"HUBLESS_{key}"] for key, field in names.items() if f"HUBLESS_{key}" in env
    }
    return load_engine(Settings(**values, data_dir=data_dir, invgc=True))


def _overhead_parts(body: bytes, engine: object, queries: np.ndarray) -> list[Row]:
    """Each step the HTTP layer adds, timed alone on one 64-query request."""
    from service.api.convert import to_embeddings
    from service.api.models import SearchRequest
    from service.api.routes.search import response_body

    parsed = json.loads(body)
    request = SearchRequest.model_validate(parsed)
    vectors = to_embeddings(request.batch(), field="queries", dim=queries.shape[1], limit=1024)
    result = engine.search(vectors, k=10, method=METHOD, invgc=True)  # type: ignore[attr-defined]
    content = response_body(result, METHOD, True, 10, 0)
    steps = {
        "json.loads of the body": lambda: json.loads(body),
        "orjson.loads of the body": lambda: orjson.loads(body),
        "pydantic validation": lambda: SearchRequest.model_validate(parsed),
        "vectors to float32 (to_embeddings)": lambda: to_embeddings(
            request.batch(), field="queries", dim=queries.shape[1], limit=1024
        ),
        "response dicts (640 hits)": lambda: response_body(result, METHOD, True, 10, 0),
        "orjson.dumps of the response": lambda: orjson.dumps(content),
        "json.dumps of the response": lambda: json.dumps(content),
    }
    detail = f"64 queries × {queries.shape[1]} floats, {len(body) / 1e3:.0f} kB body"
    return [
        Row(
            SECTION,
            f"64q: {name}",
            best_time(fn, repeat=3, min_seconds=0.1) * 1e3,
            "ms",
            None,
            False,
            detail,
        )
        for name, fn in steps.items()
    ]


def measure(quick: bool) -> list[Row]:
    seconds = 1.0 if quick else 8.0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        env = _gallery(workdir / "input", quick)
        with (
            Server(workdir / "data", env) as server,
            httpx.Client(base_url=server.url, timeout=60.0) as client,
        ):
            engine = _in_process(env, workdir / "data")
            size = engine.state.size  # type: ignore[attr-defined]
            for m in (1, 64):
                queries = demo_queries(m)
                body = orjson.dumps(
                    {"queries": queries.tolist(), "k": 10, "method": METHOD, "invgc": True}
                )
                times = _latencies(client, body, seconds)
                vectors = queries / np.linalg.norm(queries, axis=1, keepdims=True)
                local = []
                for _ in range(max(20, len(times) // 4)):
                    started = time.perf_counter()
                    engine.search(vectors, k=10, method=METHOD, invgc=True)  # type: ignore[attr-defined]
                    local.append(time.perf_counter() - started)
                p50, p99 = _percentile(times, 50), _percentile(times, 99)
                local_p50 = statistics.median(local)
                where = f"{m} quer{'y' if m == 1 else 'ies'}/request, n = {size:,}"
                rows += [
                    Row(
                        SECTION,
                        f"{m}q: requests/s (sequential)",
                        len(times) / sum(times),
                        "req/s",
                        detail=f"{where}, {len(times)} requests, {len(body) / 1e3:.0f} kB body",
                    ),
                    Row(SECTION, f"{m}q: HTTP latency p50", p50 * 1e3, "ms", detail=where),
                    Row(SECTION, f"{m}q: HTTP latency p99", p99 * 1e3, "ms", detail=where),
                    Row(
                        SECTION,
                        f"{m}q: Engine.search in-process p50",
                        local_p50 * 1e3,
                        "ms",
                        detail=where,
                    ),
                    Row(
                        SECTION,
                        f"{m}q: serving overhead (HTTP p50 / in-process p50)",
                        p50 / local_p50,
                        "x",
                        detail=f"+{(p50 - local_p50) * 1e3:.2f} ms per request",
                    ),
                ]
                if m == 64:
                    rows += _overhead_parts(body, engine, queries)
    return rows
