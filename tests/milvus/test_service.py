"""The service on Milvus (milvus-lite), end to end through the HTTP API.

``HUBLESS_BACKEND=milvus`` must be invisible to clients: every method answers what a service on
the exact backend answers (1e-5), gallery changes made over HTTP reach the collection and keep
that true, a read-only replica refuses writes and serves the writer's gallery, a failing Milvus
answers 503 without changing the gallery, and a restart on an up-to-date collection writes
nothing. The data are the real demo slices the API tests use (``tests/engine``); one milvus-lite
file serves the module, each test its own collection prefix.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pymilvus.exceptions import MilvusException

from service.algorithms import METHODS
from service.algorithms.augment import view_coordinates
from service.backends import milvus as milvus_module
from service.backends.milvus import MilvusBackend, id_filter, milvus_client
from service.engine import Engine
from tests.support.api import assert_error, demo_rows, put, running, search
from tests.support.demo import DemoFiles, demo_queries, write_demo_slices, write_gallery

TOL = 1e-5
K = 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return write_demo_slices(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "service.db")


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """Real queries whose true items are in the slice, beyond it, and changed by the tests."""
    return demo_queries(24, start=280)[0]


def _on_milvus(files: DemoFiles, data_dir: Path, uri: str, prefix: str, **overrides: object):
    return running(
        files.settings(
            data_dir, backend="milvus", milvus_uri=uri, milvus_collection=prefix, **overrides
        )
    )


def _engine(client: TestClient) -> Engine:
    engine = client.app.state.runtime.engine
    assert engine is not None
    return engine


def _served(client: TestClient) -> tuple[list[str], np.ndarray, int]:
    """The served ids in order, their stored (normalised) embeddings, and the version."""
    page = client.get("/gallery", params={"limit": 1000}).json()
    ids = [item["id"] for item in page["items"]]
    assert len(ids) == page["total"]
    vectors = [
        client.get(f"/gallery/{quote(i, safe='')}", params={"embedding": True}).json()["embedding"]
        for i in ids
    ]
    return ids, np.asarray(vectors, np.float32), page["version"]


def _assert_same_answers(got: TestClient, want: TestClient, queries: np.ndarray) -> None:
    """For every method, InvGC on and off: scores and similarities within TOL at every rank,
    and the same ids except inside runs of scores tied within TOL (float32 rounding)."""
    for method in METHODS:
        for invgc in (False, True):
            a = search(got, queries, k=K, method=method, invgc=invgc)["results"]
            b = search(want, queries, k=K, method=method, invgc=invgc)["results"]
            for hits, expected in zip(a, b, strict=True):
                assert len(hits) == len(expected) == K, (method, invgc)
                scores = np.array([h["score"] for h in expected])
                for key in ("score", "similarity"):
                    np.testing.assert_allclose(
                        [h[key] for h in hits], [h[key] for h in expected], rtol=0, atol=TOL
                    )
                start = 0
                for end in range(1, K + 1):  # runs of scores closer than TOL
                    if end == K or scores[end - 1] - scores[end] > TOL:
                        ids_got = {h["id"] for h in hits[start:end]}
                        ids_want = {h["id"] for h in expected[start:end]}
                        # the last run may continue past k with different members
                        assert ids_got == ids_want or end == K, (method, invgc, start, end)
                        start = end


def _assert_collections_hold(client: TestClient, fresh: TestClient, uri: str) -> None:
    """Read back with pymilvus: each view's collection holds exactly the served ids, with the
    vectors a fresh exact-backend service computes for them."""
    engine, reference = _engine(client), _engine(fresh)
    assert list(engine.state.ids) == list(reference.state.ids)
    ids = list(engine.state.ids)
    for invgc, backend in engine.state.backends.items():
        assert isinstance(backend, MilvusBackend)
        rows = milvus_client(uri).query(
            backend.collection_name, filter=id_filter(ids), output_fields=["vector"], limit=16384
        )
        count = milvus_client(uri).query(
            backend.collection_name, filter="", output_fields=["count(*)"]
        )
        assert int(count[0]["count(*)"]) == len(ids)
        stored = {row["id"]: np.asarray(row["vector"], np.float32) for row in rows}
        assert set(stored) == set(ids)
        expected = view_coordinates(reference.state.backends[invgc].view)
        np.testing.assert_allclose(np.stack([stored[i] for i in ids]), expected, atol=1e-6)


@dataclass(frozen=True)
class Changed:
    """A Milvus writer changed over HTTP, and an exact service started on its resulting gallery."""

    writer: TestClient
    fresh: TestClient
    data_dir: Path


@pytest.fixture(scope="module")
def changed(
    demo: DemoFiles, uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Changed]:
    data_dir = tmp_path_factory.mktemp("writer")
    with _on_milvus(demo, data_dir, uri, "changes") as writer:
        new_ids, new = demo_rows(300, 330)
        assert put(writer, new_ids[:20], new[:20])["inserted"] == 20
        replaced = [demo.ids[3], demo.ids[120], new_ids[0]]  # old ids and a just-inserted one
        assert put(writer, replaced, new[20:23])["updated"] == 3
        response = writer.post("/gallery/delete", json={"ids": [demo.ids[0], new_ids[5]]})
        assert response.json()["deleted"] == 2
        response = writer.delete("/gallery/" + quote(demo.ids[250], safe=""))
        assert response.status_code == 200, response.text
        ids, embeddings, version = _served(writer)
        assert (len(ids), version) == (300 + 20 - 3, 5)
        files = write_gallery(tmp_path_factory.mktemp("resulting"), ids, embeddings, demo)
        with running(files.settings(tmp_path_factory.mktemp("fresh"))) as fresh:
            yield Changed(writer, fresh, data_dir)


def test_every_method_equals_the_exact_backend(
    demo: DemoFiles, uri: str, queries: np.ndarray, tmp_path: Path
) -> None:
    with (
        _on_milvus(demo, tmp_path / "milvus", uri, "parity") as on_milvus,
        running(demo.settings(tmp_path / "exact")) as exact,
    ):
        backends = _engine(on_milvus).state.backends
        assert {b.collection_name for b in backends.values()} == {
            "parity_original",
            "parity_invgc",
        }
        _assert_same_answers(on_milvus, exact, queries)


def test_http_changes_reach_milvus(changed: Changed, uri: str, queries: np.ndarray) -> None:
    _assert_collections_hold(changed.writer, changed.fresh, uri)
    extra = np.vstack([queries, demo_rows(300, 330)[1][20:23]])  # exact copies of updated items
    _assert_same_answers(changed.writer, changed.fresh, extra)


def test_read_only_replica_refuses_writes_and_serves_searches(
    changed: Changed, demo: DemoFiles, uri: str, queries: np.ndarray, tmp_path: Path
) -> None:
    shutil.copytree(changed.data_dir, tmp_path, dirs_exist_ok=True)  # as deploy/milvus does
    with _on_milvus(demo, tmp_path, uri, "changes", milvus_read_only=True) as reader:
        item = {"id": "x", "embedding": queries[0].tolist()}
        refused = [
            reader.put("/gallery", json={"items": [item]}),
            reader.delete("/gallery/" + quote(demo.ids[1], safe="")),
            reader.post("/gallery/delete", json={"ids": [demo.ids[1]]}),
            reader.post("/admin/snapshot"),
        ]
        for response in refused:
            assert assert_error(response, 403, says="read-only")["code"] == "read_only"
        assert _served(reader)[2] == 5  # the writer's version, from its copied change log
        _assert_same_answers(reader, changed.fresh, queries)
    _assert_collections_hold(changed.writer, changed.fresh, uri)  # the reader wrote nothing


def _raise(*args: object, **kwargs: object) -> None:
    raise MilvusException(message="connection refused (test)")


def test_a_failing_milvus_answers_503_and_changes_nothing(
    demo: DemoFiles, uri: str, queries: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_ids, new = demo_rows(300, 302)
    with _on_milvus(demo, tmp_path / "var", uri, "failing") as client:
        before = client.get("/gallery", params={"limit": 1000}).json()
        attempts = {
            "upsert": lambda: client.put(
                "/gallery", json={"items": [{"id": new_ids[0], "embedding": new[0].tolist()}]}
            ),
            "delete": lambda: client.post("/gallery/delete", json={"ids": demo.ids[:2]}),
            "search": lambda: client.post("/search", json={"queries": queries[:2].tolist()}),
        }
        for operation, attempt in attempts.items():
            with monkeypatch.context() as patch:
                patch.setattr(milvus_client(uri), operation, _raise)
                response = attempt()
            assert assert_error(response, 503)["code"] == "backend_unavailable", operation
            assert response.headers["Retry-After"]
            assert client.get("/gallery", params={"limit": 1000}).json() == before
        # the next change repairs whatever part of the failed ones reached Milvus
        put(client, new_ids[1:], new[1:])
        ids, embeddings, version = _served(client)
        assert version == before["version"] + 1
        files = write_gallery(tmp_path / "resulting", ids, embeddings, demo)
        with running(files.settings(tmp_path / "fresh")) as fresh:
            _assert_collections_hold(client, fresh, uri)
            _assert_same_answers(client, fresh, queries[:8])


def test_a_restart_on_an_up_to_date_collection_writes_nothing(
    demo: DemoFiles, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_ids, new = demo_rows(300, 304)
    with _on_milvus(demo, tmp_path, uri, "restart") as first:
        put(first, new_ids, new)
        assert first.post("/admin/snapshot").status_code == 200  # no change log to replay
        served = _served(first)[0]
    del first
    gc.collect()  # the first engine (and its claim on the collections) is gone
    written: list[int] = []
    for name in ("upsert_rows", "delete_ids"):
        real = getattr(milvus_module, name)
        monkeypatch.setattr(
            milvus_module, name, lambda *a, _real=real: written.append(len(a[2])) or _real(*a)
        )
    with _on_milvus(demo, tmp_path, uri, "restart") as again:
        assert _served(again)[0] == served
        syncs = [b.sync for b in _engine(again).state.backends.values()]
        assert [(s.mode, s.upserted, s.deleted) for s in syncs] == [("reconcile", 0, 0)] * 2
    assert sum(written) == 0
