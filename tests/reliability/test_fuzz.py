"""Schema fuzzing: every operation of the OpenAPI schema with generated (valid and invalid)
requests against a real server; no 5xx, and every response conforms to the schema (status
code, content type, body).

The server runs on a 3-dimensional slice of the demo data: with so few coordinates the
generator often produces vectors of the right length, so the success paths (searches, upserts,
deletes, diagnostics, snapshots) are fuzzed too, not only the rejections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.harness import Server, write_gallery
from service.settings import Settings

DIM = 3
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# The operations, from the app's own schema (building an app has no side effects; serving it
# does). schemathesis' lazy `from_fixture` loader fails under pytest 9, hence a static schema and
# the server's address given to each call.
schema = schemathesis.openapi.from_dict(
    create_app(Settings.model_construct(), configure_logs=False).openapi()
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    env = write_gallery(workdir / "input", rows=120, bank_rows=200, dim=DIM) | {
        "HUBLESS_NNN_TOPK": "16",
        "HUBLESS_CSLS_TOPK": "5",
        "HUBLESS_MAX_K": "50",
        "HUBLESS_MAX_QUERIES": "32",
        "HUBLESS_MAX_UPSERT": "32",
        "HUBLESS_DIAGNOSTICS_PROBES": "50",
        "HUBLESS_DEGENERATION_SAMPLE": "50",
    }
    with Server(workdir / "data", env) as running:
        yield running


def _pad(vector: Any) -> Any:
    """A list of numbers shorter than the served dimension, padded with ones."""
    if isinstance(vector, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in vector
    ):
        return vector + [1.0] * max(0, DIM - len(vector))
    return vector


def _fit(body: Any) -> Any:
    """Steer generated bodies towards valid ones, so the success paths are fuzzed too.

    Short vectors are padded to the served dimension (longer ones stay wrong and must get a
    422). The schema cannot say "exactly one of `query` and `queries`" (a model validator
    does), so a search body that has both keeps one of them.
    """
    if isinstance(body, list):
        return [_fit(item) for item in body]
    if not isinstance(body, dict):
        return body
    body = {key: _pad(v) if key in ("query", "embedding") else _fit(v) for key, v in body.items()}
    if isinstance(body.get("queries"), list):
        body["queries"] = [_pad(vector) for vector in body["queries"]]
    if body.get("query") is not None and body.get("queries") is not None:
        del body["queries" if len(body) % 2 else "query"]
    return body


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_schema_conformance(case: schemathesis.Case, server: Server) -> None:
    if isinstance(case.body, dict):
        case.body = _fit(case.body)
    case.call_and_validate(base_url=server.url, checks=CHECKS)


def test_fuzzing_reached_the_success_paths(server: Server) -> None:
    """The server's access log shows that generated requests also succeeded (runs after the
    fuzzing above, on the same server): not only rejections were fuzzed."""
    succeeded = set()
    for line in server.logs().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("message") == "request" and record.get("status") == 200:
            succeeded.add((record["method"], record["path"]))
    for operation in [("POST", "/search"), ("PUT", "/gallery"), ("POST", "/diagnostics")]:
        assert operation in succeeded, f"no generated {operation} succeeded"
