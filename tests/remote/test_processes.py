"""A writer and two readers as separate ``hubless serve`` processes sharing one Milvus server.

Readers are configured with the Milvus settings, ``HUBLESS_MILVUS_READ_ONLY=true`` and the same
bank files only: they must serve every change the writer acknowledged within 2 s, exactly as
the writer does (ids, scores and similarities equal, every method, both views), and never serve
a deleted item again. A second writer is refused; a writer killed mid-write and restarted loses
no acknowledged change.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from engine import DemoFiles, demo_queries
from support.milvus import Serve

from service.algorithms import METHODS

POLL = 0.5
FOLLOW_WITHIN = 2.0
_prefixes = itertools.count()


def _settings(demo: DemoFiles, data_dir: Path, uri: str, prefix: str, **extra: object):
    return demo.settings(
        data_dir,
        backend="milvus",
        milvus_uri=uri,
        milvus_collection=prefix,
        milvus_poll_seconds=POLL,
        **extra,
    )


class Cluster:
    def __init__(self, demo: DemoFiles, root: Path, uri: str, lease: float = 15.0) -> None:
        self.demo, self.root, self.uri = demo, root, uri
        self.prefix = f"p{next(_prefixes)}_{root.name[-8:].replace('-', '_')}"
        self.lease = lease
        self.processes: list[Serve] = []

    def start(self, name: str, read_only: bool = False, wait: bool = True) -> Serve:
        settings = _settings(
            self.demo,
            self.root / name,
            self.uri,
            self.prefix,
            milvus_read_only=read_only,
            milvus_lease_seconds=self.lease,
        )
        process = Serve(settings, self.root / f"{name}.log")
        self.processes.append(process)
        if wait:
            process.wait_ready()
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def cluster(demo: DemoFiles, milvus_uri: str, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(demo, tmp_path, milvus_uri, lease=3.0)
    try:
        yield made
    finally:
        made.stop()


def _rows(ids: list[str], embeddings: np.ndarray, meta: dict | None = None) -> dict:
    return {
        "items": [
            {"id": i, "embedding": e.tolist(), "metadata": meta}
            for i, e in zip(ids, embeddings, strict=True)
        ]
    }


def _answers(process: Serve, queries: np.ndarray) -> dict:
    """Every method on both views, one request each (the body as served)."""
    out = {}
    for method, invgc in itertools.product(METHODS, (False, True)):
        body = {"queries": queries.tolist(), "k": 10, "method": method, "invgc": invgc}
        answer = process.http.post("/search", json=body)
        assert answer.status_code == 200, answer.text
        out[(method, invgc)] = answer.json()
    return out


def _version(process: Serve) -> int:
    return process.http.get("/readyz").json()["version"]


def _await_version(readers: list[Serve], version: int, since: float) -> float:
    """Seconds (from ``since``) until every reader serves ``version``."""
    while True:
        if all(_version(r) >= version for r in readers):
            return time.monotonic() - since
        assert time.monotonic() - since < 10, "readers did not follow"
        time.sleep(0.05)


def test_readers_follow_the_writer_exactly(cluster: Cluster) -> None:
    early = cluster.start("reader0", read_only=True, wait=False)  # before the writer: waits
    assert early.readyz_status() == 503
    writer = cluster.start("writer")
    readers = [cluster.start("reader1", read_only=True), early]
    early.wait_ready()
    queries = demo_queries(6, start=280)[0]
    extra = demo_queries(12, start=0)[0]
    deleted = cluster.demo.ids[:15]
    steps = [
        ("put", _rows([f"new-{i}" for i in range(8)], extra[:8], {"lang": "en"})),
        ("put", _rows(cluster.demo.ids[20:24], extra[8:12])),  # replacements
        ("post", {"ids": deleted}),
    ]
    assert all(_answers(r, queries) == _answers(writer, queries) for r in readers)
    for verb, body in steps:
        path = "/gallery" if verb == "put" else "/gallery/delete"
        answer = writer.http.request(verb.upper(), path, json=body)
        assert answer.status_code == 200, answer.text
        acknowledged = time.monotonic()
        version = answer.json()["version"]
        assert _await_version(readers, version, acknowledged) < FOLLOW_WITHIN
        expected = _answers(writer, queries)
        for reader in readers:
            assert _answers(reader, queries) == expected
    # deleted items never come back: not listed, not found, not returned for their own vector
    own = cluster.demo.embeddings[:15]
    for process in [writer, *readers]:
        assert process.http.get(f"/gallery/{deleted[0]}").status_code == 404
        for method in ("raw", "dualdis"):
            body = {"queries": own.tolist(), "k": 20, "method": method, "invgc": True}
            hits = process.http.post("/search", json=body).json()["results"]
            assert not {h["id"] for row in hits for h in row} & set(deleted)
        assert process.http.get("/gallery", params={"limit": 1}).json()["total"] == 300 - 15 + 8


def test_a_second_writer_is_refused(cluster: Cluster) -> None:
    cluster.start("writer")
    second = cluster.start("second", wait=False)
    assert second.process.wait(timeout=120) == 1
    log = second.log()
    assert "another writer holds the lease" in log
    assert "until" in log


def test_a_killed_writer_restarts_with_every_acknowledged_change(cluster: Cluster) -> None:
    writer = cluster.start("writer")
    rng = np.random.default_rng(7)
    acknowledged: list[str] = []
    stop = threading.Event()

    def write() -> None:
        for batch in itertools.count():
            if stop.is_set():
                return
            ids = [f"crash-{batch}-{i}" for i in range(200)]
            vectors = rng.standard_normal((200, cluster.demo.embeddings.shape[1]))
            try:
                answer = writer.http.put("/gallery", json=_rows(ids, vectors))
            except Exception:  # the kill cut the connection: not acknowledged
                return
            if answer.status_code == 200:
                acknowledged.extend(ids)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(4.0)
    writer.kill()
    stop.set()
    thread.join()
    assert acknowledged, "no change was acknowledged before the kill"
    time.sleep(cluster.lease + 0.5)  # the dead writer's lease expires
    restarted = cluster.start("restarted")
    reader = cluster.start("reader", read_only=True)
    listed = set()
    total = restarted.http.get("/gallery", params={"limit": 1}).json()["total"]
    for offset in range(0, total, 1000):
        page = restarted.http.get("/gallery", params={"offset": offset, "limit": 1000}).json()
        listed |= {item["id"] for item in page["items"]}
    assert set(acknowledged) <= listed
    assert len(listed) == total
    queries = demo_queries(4, start=280)[0]
    assert _answers(reader, queries) == _answers(restarted, queries)
    # and it serves changes again
    answer = restarted.http.request("POST", "/gallery/delete", json={"ids": acknowledged[:3]})
    assert answer.status_code == 200, answer.text
