"""Edge cases found while hardening the service, in-process on a small 3-d gallery.

Each test guards a bug found (and since fixed) or a corner that must keep working. A bug still
open is shown by a test marked ``xfail(strict=True, reason="BUG: ...")``, which fails as XPASS
once the bug is fixed (then drop the marker); none is open now.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.algorithms import METHODS
from service.app import create_app
from service.harness import write_gallery
from service.settings import Settings

DIM = 3
Serve = Callable[..., contextlib.AbstractContextManager[TestClient]]


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """``with serve(**settings) as client``: an app on the same small gallery and data dir
    each time (so a second ``serve`` is a restart), ready before it is handed out."""
    files = write_gallery(tmp_path / "input", rows=40, bank_rows=200, dim=DIM)
    fields = {name.removeprefix("HUBLESS_").lower(): value for name, value in files.items()}

    @contextlib.contextmanager
    def run(**overrides: Any) -> Iterator[TestClient]:
        settings = Settings(
            **fields | {"invgc": True},  # both views (InvGC is off by default)
            data_dir=tmp_path / "data",
            nnn_topk=16,
            csls_topk=5,
            **overrides,
        )
        with TestClient(create_app(settings, configure_logs=False)) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            yield client

    return run


def _ids(client: TestClient) -> list[str]:
    return [item["id"] for item in client.get("/gallery", params={"limit": 1000}).json()["items"]]


def test_an_emptied_gallery_answers_every_method_without_a_5xx(serve: Serve) -> None:
    with serve() as client:
        assert client.post("/gallery/delete", json={"ids": _ids(client)}).status_code == 200
        for method in METHODS:
            for invgc in (False, True):
                body = {"query": [1, 0, 0], "method": method, "invgc": invgc}
                response = client.post("/search", json=body)
                assert response.status_code == 200, (method, invgc, response.text)
                assert response.json()["results"] == [[]]
        assert client.get("/diagnostics").status_code == 422
        assert client.post("/diagnostics", json={"queries": [[1, 0, 0]]}).status_code == 422


def test_k_beyond_the_gallery_size_returns_the_whole_gallery(serve: Serve) -> None:
    with serve() as client:
        for method in METHODS:
            body = {"query": [1, 0, 0], "method": method, "k": 45}
            response = client.post("/search", json=body)
            assert response.status_code == 200, (method, response.text)
            assert len(response.json()["results"][0]) == 40


def test_huge_finite_vectors_keep_their_direction(serve: Serve) -> None:
    with serve() as client:
        body = {"k": 5, "method": "raw", "invgc": False}
        small = client.post("/search", json=body | {"query": [1, 1, 0]})
        huge = client.post("/search", json=body | {"query": [1e20, 1e20, 0]})
        assert huge.status_code == 200, huge.text  # the float32 norm of this overflows
        assert huge.json()["results"] == small.json()["results"]
        item = {"id": "huge", "embedding": [1e20, 1e20, 0]}
        assert client.put("/gallery", json={"items": [item]}).status_code == 200
        stored = client.get("/gallery/huge", params={"embedding": "true"}).json()["embedding"]
        assert stored == pytest.approx([2**-0.5, 2**-0.5, 0], abs=1e-6)


def test_ids_survive_a_snapshot_and_a_restart_unchanged(serve: Serve) -> None:
    """Snapshots once turned id 'x\\x00' into 'x' (numpy drops trailing NULs); ids with control
    characters are refused now, and every other id comes back exactly."""
    odd = ["a/b", "ünï cödé", " padded ", "x", "tab-free\u00a0nbsp", "emoji-\U0001f600"]
    items = [{"id": i, "embedding": [1, n, 0]} for n, i in enumerate(odd)]
    with serve() as client:
        refused = client.put("/gallery", json={"items": [{"id": "x\x00", "embedding": [1, 0, 0]}]})
        assert refused.status_code == 422, refused.text
        assert client.put("/gallery", json={"items": items}).status_code == 200
        before = _ids(client)
        assert client.post("/admin/snapshot").status_code == 200
    with serve() as client:
        assert _ids(client) == before
        assert set(odd) <= set(before)


def test_metadata_that_is_not_json_is_refused(serve: Serve) -> None:
    body = b'{"items": [{"id": "n", "embedding": [1, 0, 0], "metadata": {"x": NaN}}]}'
    with serve() as client:
        response = client.put(
            "/gallery", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code in (400, 422), response.text


def test_an_empty_api_key_authorises_nothing(serve: Serve) -> None:
    try:
        Settings(api_key="")
    except ValidationError:
        return  # refusing the configuration is a fix too
    with serve(api_key="") as client:
        item = {"items": [{"id": "e", "embedding": [1, 0, 0]}]}
        for headers in ({"X-API-Key": ""}, {"Authorization": "Bearer "}):
            assert client.put("/gallery", json=item, headers=headers).status_code == 401
