"""Crash recovery: SIGKILL a real server while a client streams gallery changes, restart it from
the same directory, and check that nothing acknowledged was lost.

"Acknowledged" means the client received the 200. The one change in flight at the kill may or
may not survive; everything before it must, with the exact embeddings sent, and the restarted
server must answer searches exactly as a fresh server started on the resulting gallery does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import METHODS
from service.app import create_app
from service.engine.persistence import DB_NAME
from service.harness import Server, demo_queries, normalised, write_gallery
from service.settings import Settings

DIM = 384


@dataclass(frozen=True)
class Change:
    """One request of the stream: an upsert (ids, raw vectors) or a delete (ids)."""

    ids: tuple[str, ...]
    vectors: np.ndarray | None = None  # None: a delete

    def send(self, client: httpx.Client) -> httpx.Response:
        if self.vectors is None:
            return client.post("/gallery/delete", json={"ids": list(self.ids)})
        items = [
            {"id": i, "embedding": v, "metadata": {"n": n}}
            for n, (i, v) in enumerate(
                zip(self.ids, self.vectors.astype(float).tolist(), strict=True)
            )
        ]
        return client.put("/gallery", json={"items": items})


def _send(change: Change, client: httpx.Client, failures: list[str]) -> bool:
    """Send ``change``; True once acknowledged (200). False if the server went away under us
    (the change is unacknowledged) or answered an error (recorded in ``failures``)."""
    try:
        response = change.send(client)
    except httpx.TransportError:
        return False
    if response.status_code != 200:
        failures.append(f"{response.status_code} {response.text}")
        return False
    return True


class Gallery:
    """What the server must hold: ids in gallery order and their normalised embeddings."""

    def __init__(self, items: dict[str, np.ndarray]) -> None:
        self.items = dict(items)

    def copy(self) -> Gallery:
        return Gallery(self.items)

    def apply(self, change: Change) -> Gallery:
        if change.vectors is None:
            for i in change.ids:
                del self.items[i]
        else:
            for i, v in zip(change.ids, normalised(change.vectors), strict=True):
                self.items.pop(i, None)  # a replaced item moves to the end, as on the server
                self.items[i] = v
        return self


class Writer(threading.Thread):
    """Streams changes until stopped or the server goes away; remembers what was acked."""

    def __init__(self, url: str, gallery: Gallery, batch: int, seed: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.url, self.batch = url, batch
        self.rng = np.random.default_rng(seed)
        self.initial = list(gallery.items)
        self.acked: list[Change] = []
        self.in_flight: Change | None = None
        self.failures: list[str] = []
        self.stop = threading.Event()

    def _next(self, n: int) -> Change:
        inserted = [i for change in self.acked if change.vectors is not None for i in change.ids]
        deleted = {i for change in self.acked if change.vectors is None for i in change.ids}
        alive = [i for i in inserted if i not in deleted and i.startswith("c")]
        if n % 5 == 4 and alive:
            return Change((alive[0],))
        if n % 7 == 3:  # replace an item of the initial gallery
            return Change((self.initial[n],), self.rng.standard_normal((1, DIM)))
        ids = tuple(f"c{n}-{j}" for j in range(self.batch))
        return Change(ids, self.rng.standard_normal((self.batch, DIM)))

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            for n in range(10_000):
                if self.stop.is_set():
                    return
                self.in_flight = self._next(n)
                if not _send(self.in_flight, client, self.failures):
                    return
                self.acked.append(self.in_flight)
                self.in_flight = None

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.acked) >= count, f"only {len(self.acked)} changes acked; {self.failures}"


def _settings(env: dict[str, str], data_dir: Path) -> Settings:
    fields = {name.removeprefix("HUBLESS_").lower(): value for name, value in env.items()}
    return Settings(**fields, data_dir=data_dir)


def _served_ids(client: httpx.Client) -> list[str]:
    ids: list[str] = []
    while True:
        page = client.get("/gallery", params={"offset": len(ids), "limit": 1000}).json()
        ids += [item["id"] for item in page["items"]]
        if len(ids) >= page["total"]:
            return ids


def _check_recovered(client: httpx.Client, writer: Writer, start: Gallery) -> Gallery:
    """The restarted server holds every acked change (the in-flight one optionally), with
    the embeddings sent; returns the gallery it holds."""
    expected = start.copy()
    for change in writer.acked:
        expected.apply(change)
    served = _served_ids(client)
    if served != list(expected.items) and writer.in_flight is not None:
        expected.apply(writer.in_flight)  # it reached the log before the kill: allowed
    assert served == list(expected.items), "the recovered gallery is not the acknowledged one"
    # every item of the small changes; the first, middle and last of each large one
    sample = {i for change in writer.acked for i in change.ids[:: max(1, len(change.ids) // 2)]}
    for item_id in sorted(sample & set(expected.items)):
        body = client.get(f"/gallery/{item_id}", params={"embedding": "true"}).json()
        np.testing.assert_allclose(body["embedding"], expected.items[item_id], atol=1e-6)
    return expected


def _assert_same_searches(
    client: httpx.Client, gallery: Gallery, env: dict[str, str], workdir: Path
) -> None:
    """Searches on the recovered server equal those of a fresh server on its gallery."""
    fresh_input = workdir / "fresh"
    fresh_input.mkdir()
    np.save(fresh_input / "gallery.npy", np.stack(list(gallery.items.values())))
    (fresh_input / "gallery_ids.txt").write_text("\n".join(gallery.items) + "\n")
    fresh_env = env | {
        "HUBLESS_GALLERY": str(fresh_input / "gallery.npy"),
        "HUBLESS_GALLERY_IDS": str(fresh_input / "gallery_ids.txt"),
    }
    app = create_app(_settings(fresh_env, workdir / "fresh-data"), configure_logs=False)
    queries = demo_queries(8, offset=100).astype(float).tolist()
    with TestClient(app) as fresh:
        deadline = time.monotonic() + 60
        while fresh.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        for method in METHODS:
            for invgc in (False, True):
                body = {"queries": queries, "k": 10, "method": method, "invgc": invgc}
                got = client.post("/search", json=body).json()["results"]
                want = fresh.post("/search", json=body).json()["results"]
                for g, w in zip(got, want, strict=True):
                    assert [h["id"] for h in g] == [h["id"] for h in w], (method, invgc)
                    np.testing.assert_allclose(
                        [h["score"] for h in g], [h["score"] for h in w], rtol=1e-5, atol=1e-6
                    )


def _start(tmp_path: Path, rows: int) -> tuple[Server, dict[str, str], Gallery]:
    # InvGC on (off by default): recovery is compared on both gallery views
    env = write_gallery(tmp_path / "input", rows=rows, bank_rows=500) | {"HUBLESS_INVGC": "true"}
    ids = Path(env["HUBLESS_GALLERY_IDS"]).read_text().splitlines()
    start = Gallery(dict(zip(ids, normalised(np.load(env["HUBLESS_GALLERY"])), strict=True)))
    server = Server(tmp_path / "data", env)
    server.start()
    server.wait_ready()
    return server, env, start


def test_sigkill_mid_stream_loses_no_acknowledged_change(tmp_path: Path) -> None:
    """Recovery goes through a snapshot taken mid-stream plus the log written after it."""
    server, env, start = _start(tmp_path, rows=300)
    try:
        writer = Writer(server.url, start, batch=4, seed=1)
        writer.start()
        writer.wait_for(6)
        with httpx.Client(base_url=server.url, timeout=60.0) as client:  # compact mid-stream
            assert client.post("/admin/snapshot").status_code == 200
        writer.wait_for(12)
        time.sleep(float(np.random.default_rng().uniform(0, 0.05)))  # land mid-request
        server.kill()
        writer.join(timeout=30)
        assert not writer.failures
        server.start()  # same data directory
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            recovered = _check_recovered(client, writer, start)
            _assert_same_searches(client, recovered, env, tmp_path)
    finally:
        server.stop()


def test_kill_during_large_upserts_rolls_back_the_change_in_flight(tmp_path: Path) -> None:
    """Killed the moment a 600-item change's transaction starts writing (its rollback journal
    appears): the restart rolls it back (or finds it complete), keeps every acknowledged
    change, and a change written after recovery survives another restart."""
    server, _, start = _start(tmp_path, rows=200)
    try:
        writer = Writer(server.url, start, batch=600, seed=2)
        writer.start()
        writer.wait_for(2)
        (store,) = (tmp_path / "data").glob(f"galleries/*/{DB_NAME}")
        journal = store.with_name(f"{DB_NAME}-journal")
        deadline = time.monotonic() + 60
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.0002)  # kill the moment the next transaction starts to land
        server.kill()
        writer.join(timeout=30)
        assert not writer.failures
        hot = journal.exists()

        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            recovered = _check_recovered(client, writer, start)
            after = Change(("after-recovery",), np.ones((1, DIM)))
            assert after.send(client).status_code == 200
        server.stop()
        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            assert _served_ids(client) == [*recovered.items, "after-recovery"]
    finally:
        server.stop()
    print(f"journal left by the kill: {hot}")


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    """Writers are daemon threads; a failing test must not leave one running into the next."""
    yield
    for thread in threading.enumerate():
        if isinstance(thread, Writer):
            thread.stop.set()


class OneItemWriter(threading.Thread):
    """One of many concurrent clients: one-item upserts of its own ids, and every fifth
    request a delete of one of its acknowledged items (so the server groups their commits)."""

    def __init__(self, url: str, index: int) -> None:
        super().__init__(name=f"one-item-writer-{index}", daemon=True)
        self.url, self.index = url, index
        self.rng = np.random.default_rng(100 + index)
        self.upserted: dict[str, np.ndarray] = {}  # acknowledged, not deleted since
        self.deleted: set[str] = set()  # acknowledged deletes
        self.in_flight: Change | None = None
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            for n in range(100_000):
                if n % 5 == 4 and self.upserted:
                    self.in_flight = Change((next(iter(self.upserted)),))
                else:
                    vector = self.rng.standard_normal((1, DIM))
                    self.in_flight = Change((f"k{self.index}-{n}",), vector)
                if not _send(self.in_flight, client, self.failures):
                    return
                (item_id,) = self.in_flight.ids
                if self.in_flight.vectors is None:
                    del self.upserted[item_id]
                    self.deleted.add(item_id)
                else:
                    self.upserted[item_id] = normalised(self.in_flight.vectors)[0]
                self.in_flight = None


def test_sigkill_mid_group_commit_loses_no_acknowledged_change(tmp_path: Path) -> None:
    """Eight clients changing one item at a time (their commits grouped), killed mid-stream:
    after the restart every acknowledged upsert is there with its embedding, every
    acknowledged delete is gone, only an in-flight change may differ, and searches equal a
    fresh start on the recovered gallery (ids and scores, every method, InvGC on and off)."""
    server, env, start = _start(tmp_path, rows=300)
    writers = [OneItemWriter(server.url, index) for index in range(8)]
    try:
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 60
        while sum(len(w.upserted) + len(w.deleted) for w in writers) < 120:
            assert time.monotonic() < deadline and all(w.is_alive() for w in writers)
            time.sleep(0.01)
        server.kill()
        for writer in writers:
            writer.join(timeout=30)
        assert not [f for w in writers for f in w.failures]
        lines = [line for line in server.logs().splitlines() if "gallery changed" in line]
        commits = [json.loads(line) for line in lines if line.endswith("}")]  # whole lines
        assert max(c["changes"] for c in commits) > 1  # some commits were groups
        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            served = _served_ids(client)
            known = dict(start.items)
            for writer in writers:
                known |= writer.upserted
                flight = writer.in_flight
                if flight is not None and flight.vectors is not None:
                    known[flight.ids[0]] = normalised(flight.vectors)[0]
            acked = {i for w in writers for i in w.upserted}
            deleted = {i for w in writers for i in w.deleted}
            in_flight = {w.in_flight.ids[0] for w in writers if w.in_flight is not None}
            # an acknowledged item whose delete was in flight at the kill may be gone or not
            deleting = {
                w.in_flight.ids[0]
                for w in writers
                if w.in_flight is not None and w.in_flight.vectors is None
            }
            assert acked - deleting <= set(served) and not deleted & set(served)
            assert set(served) <= set(start.items) | acked | in_flight
            for item_id in sorted(acked - deleting)[::7]:
                body = client.get(f"/gallery/{item_id}", params={"embedding": "true"}).json()
                np.testing.assert_allclose(body["embedding"], known[item_id], atol=1e-6)
            recovered = Gallery({i: known[i] for i in served})
            _assert_same_searches(client, recovered, env, tmp_path)
    finally:
        server.stop()
