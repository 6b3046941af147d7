"""Every bad input is a 4xx error body naming the field, never a 500; a failed gallery change
leaves the gallery exactly as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.api import DemoFiles, assert_error, running, snapshot_of

DIM = 384
JSON = {"content-type": "application/json"}


def _vector(value: float = 0.1, dim: int = DIM) -> list[float]:
    return [value] * dim


def _vector_json(literal: str) -> str:
    """A vector as JSON text whose last value is ``literal`` (NaN, Infinity, ... are not JSON,
    so the text is written by hand)."""
    return json.dumps([*_vector(dim=DIM - 1), "@"]).replace('"@"', literal)


@pytest.fixture(scope="module")
def limited(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service with small limits, so that "too many" and "too large" are cheap to send."""
    settings = demo.settings(
        tmp_path_factory.mktemp("limited"),
        max_queries=3,
        max_upsert=2,
        max_k=50,
        max_body_bytes=64 * 1024,
    )
    with running(settings) as test_client:
        yield test_client


# --- /search ----------------------------------------------------------------------------------

BAD_SEARCHES = {
    "wrong dimension": ({"query": _vector(dim=10)}, "query", "dimension"),
    "ragged batch": ({"queries": [_vector(), _vector(dim=DIM - 1)]}, "queries", "length"),
    "zero vector": ({"query": _vector(0.0)}, "query", "zero"),
    "empty batch": ({"queries": []}, "queries", None),
    "empty vector": ({"queries": [[]]}, "queries", None),
    "k = 0": ({"query": _vector(), "k": 0}, "k", None),
    "negative k": ({"query": _vector(), "k": -3}, "k", None),
    "huge k": ({"query": _vector(), "k": 10**30}, "k", None),
    "k + offset > max_k": ({"query": _vector(), "k": 40, "offset": 11}, "k", "limit"),
    "negative offset": ({"query": _vector(), "offset": -1}, "offset", None),
    "unknown method": ({"query": _vector(), "method": "qbnorm"}, "method", None),
    "unknown field": ({"query": _vector(), "metod": "raw"}, "metod", None),
    "both query and queries": ({"query": _vector(), "queries": [_vector()]}, None, "query"),
    "neither query nor queries": ({"k": 3}, None, "query"),
    "string in vector": ({"query": [*_vector(dim=DIM - 1), "abc"]}, "query", None),
    "numeric string in vector": ({"query": [*_vector(dim=DIM - 1), "0.5"]}, "query", None),
    "boolean in vector": ({"query": [*_vector(dim=DIM - 1), True]}, "query", None),
    "null in vector": ({"query": [*_vector(dim=DIM - 1), None]}, "query", None),
    "nested query": ({"query": [_vector()]}, "query", None),
    "vector as object": ({"query": {"x": 1}}, "query", None),
    "too many queries": ({"queries": [_vector()] * 4}, "queries", "limit"),
    "k not an integer": ({"query": _vector(), "k": 2.5}, "k", None),
}


@pytest.mark.parametrize("case", BAD_SEARCHES.values(), ids=BAD_SEARCHES.keys())
def test_bad_search_requests(limited: TestClient, case: tuple) -> None:
    body, field, says = case
    assert_error(limited.post("/search", json=body), 422, field, says)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e39", "-3.5e38"])
@pytest.mark.parametrize("field", ["query", "queries"])
def test_non_finite_values_are_rejected(limited: TestClient, literal: str, field: str) -> None:
    vector = _vector_json(literal)
    body = f'{{"query": {vector}}}' if field == "query" else f'{{"queries": [{vector}]}}'
    response = limited.post("/search", content=body, headers=JSON)
    assert_error(response, 422, field, "finite")


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_non_finite_threshold_is_rejected(limited: TestClient, literal: str) -> None:
    body = json.dumps({"query": _vector(), "score_threshold": "@"}).replace('"@"', literal)
    response = limited.post("/search", content=body, headers=JSON)
    assert_error(response, 422, "score_threshold")


def test_malformed_json_is_400(limited: TestClient) -> None:
    for body in ('{"query": [0.1, 0.2', "{'query': [1]}", "", "[1, 2"):
        response = limited.post("/search", content=body, headers=JSON)
        if body == "":
            assert_error(response, 422)  # no body at all: the required body is missing
        else:
            assert_error(response, 400, says="JSON")


def test_wrong_content_type(limited: TestClient) -> None:
    body = json.dumps({"query": _vector()})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = limited.post("/search", content=body, headers={"content-type": content_type})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["field"] == "body"


def test_body_too_large_is_413(limited: TestClient) -> None:
    big = json.dumps({"queries": [_vector(0.123456789)] * 40}).encode()
    assert len(big) > 64 * 1024
    assert_error(limited.post("/search", content=big, headers=JSON), 413, says="limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    response = limited.post("/search", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, says="limit")


def test_unknown_routes_and_methods(limited: TestClient) -> None:
    assert_error(limited.get("/nowhere"), 404)
    assert_error(limited.get("/search"), 405)
    assert_error(limited.patch("/gallery"), 405)


# --- /gallery ---------------------------------------------------------------------------------


def _items(*ids: str, dim: int = DIM) -> dict:
    return {"items": [{"id": i, "embedding": _vector(0.1 + n, dim)} for n, i in enumerate(ids)]}


BAD_UPSERTS = {
    "wrong dimension": (_items("x", dim=5), 422, "items", "dimension"),
    "duplicate ids": (_items("x", "x"), 422, "items", "duplicate"),
    "no items": ({"items": []}, 422, "items", None),
    "too many items": (_items("x", "y", "z"), 422, "items", "limit"),
    "missing id": ({"items": [{"embedding": _vector()}]}, 422, "items", None),
    "empty id": (_items(""), 422, "items", None),
    "id with a line break": (_items("a\nb"), 422, "items", "control"),
    "id with a NUL": (_items("x\x00"), 422, "items", "control"),
    "id with a tab": (_items("a\tb"), 422, "items", "control"),
    "zero vector": ({"items": [{"id": "z", "embedding": _vector(0.0)}]}, 422, "items", "zero"),
    "metadata not an object": (
        {"items": [{"id": "m", "embedding": _vector(), "metadata": [1, 2]}]},
        422,
        "items",
        None,
    ),
    "unknown item field": (
        {"items": [{"id": "u", "embedding": _vector(), "vector": []}]},
        422,
        "items",
        None,
    ),
    "unknown field": ({**_items("v"), "upsert": True}, 422, "upsert", None),
}


@pytest.fixture(scope="module")
def before(limited: TestClient, probes: np.ndarray) -> dict:
    return snapshot_of(limited, probes[:3])


def _unchanged(client: TestClient, probes: np.ndarray, before: dict) -> None:
    assert snapshot_of(client, probes[:3]) == before


@pytest.mark.parametrize("case", BAD_UPSERTS.values(), ids=BAD_UPSERTS.keys())
def test_bad_upserts_change_nothing(
    limited: TestClient, probes: np.ndarray, before: dict, case: tuple
) -> None:
    body, status, field, says = case
    assert_error(limited.put("/gallery", json=body), status, field, says)
    _unchanged(limited, probes, before)


@pytest.mark.parametrize("literal", ["NaN", "1e39"])
def test_non_finite_upsert_changes_nothing(
    limited: TestClient, probes: np.ndarray, before: dict, literal: str
) -> None:
    vector = _vector_json(literal)
    body = f'{{"items": [{{"id": "good", "embedding": {json.dumps(_vector())}}}, '
    body += f'{{"id": "bad", "embedding": {vector}}}]}}'
    response = limited.put("/gallery", content=body, headers=JSON)
    assert_error(response, 422, "items", "finite")
    _unchanged(limited, probes, before)


def test_non_finite_metadata_is_rejected(
    limited: TestClient, probes: np.ndarray, before: dict
) -> None:
    """JSON has no NaN: a metadata NaN could not be returned as sent."""
    item = json.dumps({"id": "m", "embedding": _vector(), "metadata": {"x": "@"}})
    body = '{"items": [' + item.replace('"@"', "NaN") + "]}"
    assert_error(limited.put("/gallery", content=body, headers=JSON), 422, "items")
    _unchanged(limited, probes, before)


def test_unknown_ids_are_404_and_delete_nothing(
    limited: TestClient, demo: DemoFiles, probes: np.ndarray, before: dict
) -> None:
    assert_error(limited.get("/gallery/no-such-id"), 404, "id", "no-such-id")
    assert_error(limited.delete("/gallery/no-such-id"), 404, says="no-such-id")
    batch = {"ids": [demo.ids[0], "no-such-id"]}
    assert_error(limited.post("/gallery/delete", json=batch), 404, "ids", "no-such-id")
    _unchanged(limited, probes, before)


BAD_DELETES = {
    "no ids": ({"ids": []}, "ids"),
    "too many ids": ({"ids": ["a", "b", "c"]}, "ids"),
    "ids not a list": ({"ids": "a"}, "ids"),
    "unknown field": ({"ids": ["a"], "all": True}, "all"),
}


@pytest.mark.parametrize("case", BAD_DELETES.values(), ids=BAD_DELETES.keys())
def test_bad_batch_deletes(
    limited: TestClient, probes: np.ndarray, before: dict, case: tuple
) -> None:
    body, field = case
    assert_error(limited.post("/gallery/delete", json=body), 422, field)
    _unchanged(limited, probes, before)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset")],
)
def test_bad_gallery_pages(limited: TestClient, params: dict, field: str) -> None:
    assert_error(limited.get("/gallery", params=params), 422, field)


# --- /diagnostics -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"queries": []}, 422, "queries"),
        ({"queries": [_vector(dim=3)]}, 422, "queries"),
        ({"queries": [_vector()], "truth_ids": ["a", "b"]}, 422, "truth_ids"),
        ({"queries": [_vector()], "truth_ids": ["no-such-id"]}, 404, "truth_ids"),
        ({"queries": [_vector()], "methods": ["nope"]}, 422, "methods"),
        ({"queries": [_vector()], "k": 0}, 422, "k"),
        ({"queries": [_vector()], "k": 51}, 422, "k"),
        ({"queries": [_vector()] * 4}, 422, "queries"),
    ],
)
def test_bad_diagnostics_requests(limited: TestClient, body: dict, status: int, field: str) -> None:
    assert_error(limited.post("/diagnostics", json=body), status, field)


@pytest.mark.parametrize(("k", "field"), [(0, "k"), (51, "k"), ("x", "k")])
def test_bad_diagnostics_k(limited: TestClient, k: object, field: str) -> None:
    assert_error(limited.get("/diagnostics", params={"k": k}), 422, field)


def test_large_finite_values_keep_their_direction(limited: TestClient, demo: DemoFiles) -> None:
    """Finite float32 values whose squares overflow are a valid direction, not a zero vector."""
    direction = np.sign(demo.embeddings[0]).astype(np.float64)
    plain = limited.post("/search", json={"query": direction.tolist(), "k": 5}).json()
    large = limited.post("/search", json={"query": (direction * 3e37).tolist(), "k": 5})
    assert large.status_code == 200, large.text
    assert [h["id"] for h in large.json()["results"][0]] == [h["id"] for h in plain["results"][0]]
    tiny = {"query": [1e-30] * DIM}  # below float32's usable norm: no direction
    assert_error(limited.post("/search", json=tiny), 422, "query", "zero")


# --- strict types, unknown query parameters, content type (issue 15) ------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("k", True), ("k", "3"), ("k", 2.0), ("invgc", "yes"), ("invgc", 1), ("offset", "1")],
)
def test_json_values_of_another_type_are_refused_not_coerced(
    limited: TestClient, field: str, value: object
) -> None:
    response = limited.post("/search", json={"query": _vector(), field: value})
    assert_error(response, 422, field)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/gallery", {"limt": "5"}),
        ("/gallery/ID", {"embeding": "true"}),
        ("/healthz", {"verbose": "1"}),
        ("/diagnostics", {"k": "5", "method": "raw"}),
    ],
)
def test_unknown_query_parameters_are_refused(
    limited: TestClient, demo: DemoFiles, path: str, params: dict[str, str]
) -> None:
    response = limited.get(path.replace("ID", demo.ids[0]), params=params)
    error = assert_error(response, 422)
    assert "unknown query parameter" in error["message"]
    assert "['k']" not in error["message"].split(";")[0]  # only the unknown ones are named


def test_unknown_query_parameters_of_a_post_are_refused(limited: TestClient) -> None:
    response = limited.post("/search", json={"query": _vector()}, params={"k": "3"})
    assert "unknown query parameter(s) ['k']" in assert_error(response, 422)["message"]


def test_a_body_without_content_type_says_json_is_expected(limited: TestClient) -> None:
    body = json.dumps({"query": _vector()}).encode()
    for path in ("/search", "/gallery/delete"):
        response = limited.post(path, content=body)  # no content-type header
        error = assert_error(response, 415, "body")
        assert "expected application/json" in error["message"]
    response = limited.post(
        "/search", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200, response.text
