"""RemoteEngine (in-process) against the exact Engine on the demo slices, on a milvus-lite
server: same top-10 and scores within a float32 bound for every method and view, through a
sequence of inserts, replacements and deletes; hub screening; crash recovery; the lease."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import InputError, check_embeddings
from service.backends.base import BackendUnavailable
from service.engine import Engine, SuspectedHubError, UnknownIdError
from service.remote.engine import RemoteEngine
from service.remote.lease import Lease, LeaseHeld
from service.remote.startup import remote_store
from service.remote.store import GALLERY, INVGC, ORIGINAL, QUERY, RemoteStore
from service.serving import load_engine
from tests.support.demo import DemoFiles, demo_queries
from tests.support.engines import assert_equal_engines

_prefixes = itertools.count()


def _remote(demo: DemoFiles, root: Path, uri: str, prefix: str, **extra: object) -> RemoteEngine:
    settings = demo.settings(
        root, backend="milvus", milvus_uri=uri, milvus_collection=prefix, **extra
    )
    return load_engine(settings)  # type: ignore[return-value]


@pytest.fixture
def pair(demo: DemoFiles, milvus_uri: str, tmp_path: Path) -> Iterator[tuple[Engine, RemoteEngine]]:
    prefix = f"e{next(_prefixes)}"
    exact = load_engine(demo.settings(tmp_path / "exact"))
    remote = _remote(demo, tmp_path / "remote", milvus_uri, prefix)
    try:
        yield exact, remote
    finally:
        remote.close()
        remote.store.drop()


def _unit(rows: np.ndarray) -> np.ndarray:
    return check_embeddings(rows, field="items")


def test_remote_engine_equals_the_exact_engine_through_changes(
    pair: tuple[Engine, RemoteEngine], demo: DemoFiles
) -> None:
    exact, remote = pair
    queries = _unit(demo_queries(16, start=280)[0])
    assert_equal_engines(exact, remote, queries)
    fresh = _unit(demo_queries(15, start=0)[0])  # distinct rows: a tie may break either way
    changes = [
        ("upsert", [f"n{i}" for i in range(6)], fresh[:6]),
        ("upsert", [*demo.ids[40:44], "n0"], fresh[6:11]),  # replacements
        ("delete", [*demo.ids[:25], "n1"], None),
        ("upsert", demo.ids[:3], fresh[12:15]),  # deleted ids come back as new items
    ]
    for kind, ids, rows in changes:
        if kind == "upsert":
            meta = [{"i": n} for n in range(len(ids))]
            a, b = exact.upsert(ids, rows, meta), remote.upsert(ids, rows, meta)
        else:
            a, b = exact.delete(ids), remote.delete(ids)
        assert (b.version, b.size, b.inserted, b.updated, b.deleted) == (
            a.version,
            a.size,
            a.inserted,
            a.updated,
            a.deleted,
        )
        assert_equal_engines(exact, remote, queries)
    # the bank state is the exact engine's activation sets
    for view, invgc in ((ORIGINAL, False), (INVGC, True)):
        state = exact.state.view(invgc)
        ids = exact.state.id_array
        for bank, top in ((QUERY, state.query_top), (GALLERY, state.gallery_top)):
            want = set(ids[np.flatnonzero(top.activated(state.size))].tolist())
            assert remote.served.tops[(view, bank)].activated == want
    assert remote.item(demo.ids[50]) == exact.item(demo.ids[50])
    with pytest.raises(UnknownIdError):
        remote.delete(["no such id"])


def test_query_ids_metadata_and_threshold(pair: tuple[Engine, RemoteEngine], demo: DemoFiles):
    exact, remote = pair
    options = {"k": 5, "method": "dualdis", "invgc": True, "query_ids": demo.ids[:3]}
    a, b = exact.search(None, **options), remote.search(None, **options)
    assert a.ids == b.ids
    b = remote.search(None, **options, with_metadata=True, score_threshold=float(a.scores[0][2]))
    assert [len(i) for i in b.ids] == [len(i) for i in b.metadata]
    assert all(m is None for row in b.metadata for m in row)
    with pytest.raises(UnknownIdError):
        remote.search(None, k=5, method="raw", invgc=False, query_ids=["missing"])


def test_hub_screening_warns_and_rejects_like_the_exact_engine(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path
) -> None:
    exact = load_engine(demo.settings(tmp_path / "exact"))
    hub = _unit(exact.banks.query_bank.mean(axis=0, keepdims=True))
    a = exact.upsert(["hub"], hub, [None])
    assert a.warnings
    remote = _remote(demo, tmp_path / "w", milvus_uri, "hubs_warn")
    try:
        b = remote.upsert(["hub"], hub, [None])
        assert [w.id for w in b.warnings] == [w.id for w in a.warnings]
        assert b.warnings[0].bank_occurrence == a.warnings[0].bank_occurrence
        assert b.warnings[0].z == pytest.approx(a.warnings[0].z)
    finally:
        remote.close()
        remote.store.drop()
    remote = _remote(demo, tmp_path / "r", milvus_uri, "hubs_reject", hub_policy="reject")
    try:
        before = remote.version
        with pytest.raises(SuspectedHubError):
            remote.upsert(["hub"], hub, [None])
        assert remote.version == before == remote.store.version().version
        assert not remote.store.get_rows(ORIGINAL, ["hub"], [])
    finally:
        remote.close()
        remote.store.drop()


def test_an_interrupted_change_is_recovered(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer dies after the original rows of a replacement were written and before the
    adjusted ones (and the version): a new writer finishes the change; nothing acknowledged
    is lost, and it equals the exact engine with the change applied."""
    exact = load_engine(demo.settings(tmp_path / "exact"))
    remote = _remote(demo, tmp_path / "w", milvus_uri, "crash", milvus_lease_seconds=1)
    queries = _unit(demo_queries(8, start=280)[0])
    rows = _unit(demo_queries(4, start=0)[0])
    ids = [*demo.ids[60:62], "x1", "x2"]
    remote.upsert(["kept"], rows[:1], [None])  # acknowledged
    exact.upsert(["kept"], rows[:1], [None])
    written = RemoteStore.upsert_rows

    def crash(store: RemoteStore, view: str, *args: object, **kwargs: object) -> None:
        if view == INVGC:
            raise BackendUnavailable("killed")
        written(store, view, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RemoteStore, "upsert_rows", crash)
    with pytest.raises(BackendUnavailable):
        remote.upsert(ids, rows, [None] * 4)
    monkeypatch.setattr(RemoteStore, "upsert_rows", written)
    assert remote.store.version().version == 2  # not committed
    remote.lease.release()
    remote.lease = None  # "dead": a new writer takes over
    restarted = _remote(demo, tmp_path / "w2", milvus_uri, "crash")
    try:
        exact.upsert(ids, rows, [None] * 4)
        assert_equal_engines(exact, restarted, queries)
        assert restarted.store.get_rows(ORIGINAL, ["kept"], [])
        assert not restarted.store.states('key like "intent:%"')
    finally:
        restarted.close()
        restarted.store.drop()


def test_the_lease_refuses_a_second_writer_until_it_expires(
    demo: DemoFiles, milvus_uri: str
) -> None:
    settings = demo.settings(Path("unused"), milvus_uri=milvus_uri, milvus_collection="lease")
    store = remote_store(settings, 384)
    store.ensure([ORIGINAL])
    first, second = Lease(store, 1.0), Lease(store, 1.0)
    first.acquire()
    with pytest.raises(LeaseHeld, match="until"):
        second.acquire()
    first._stop.set()  # stops renewing (a crashed writer)
    time.sleep(1.2)
    second.acquire()
    with pytest.raises(BackendUnavailable):  # the old holder may no longer write
        time.sleep(0.1)
        first.check()
    second.release()
    store.drop()


def test_diagnostics_equal_the_exact_engine(pair: tuple[Engine, RemoteEngine]) -> None:
    """Hubness per method and view from the same probes, and Δdeg over every item (the sample
    covers the gallery), as the exact engine computes them."""
    from service.serving import diagnose

    exact, remote = pair
    probes = exact.banks.query_bank[:50]
    options = {"k": 10, "probe_source": "query_bank", "degeneration_sample": 10_000}
    a, b = diagnose(exact, probes, **options), diagnose(remote, probes, **options)
    assert (b.version, b.gallery_size, b.bank_sizes) == (a.version, a.gallery_size, a.bank_sizes)
    for invgc in (False, True):
        assert b.degeneration[invgc].items == a.degeneration[invgc].items
        assert b.degeneration[invgc].value == pytest.approx(a.degeneration[invgc].value, abs=1e-5)
    for x, y in zip(a.methods, b.methods, strict=True):
        assert (x.method, x.invgc) == (y.method, y.invgc)
        assert y.hubness.as_dict() == pytest.approx(x.hubness.as_dict(), abs=1e-9)
        assert y.histogram == x.histogram
        assert [h.occurrence for h in y.hubs] == [h.occurrence for h in x.hubs]
    with pytest.raises(InputError):
        diagnose(remote, probes, truth_ids=["x"] * 50, **options)


def test_invgc_off_serves_the_original_collection_only(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path
) -> None:
    exact = load_engine(demo.settings(tmp_path / "exact", invgc=False))
    remote = _remote(demo, tmp_path / "w", milvus_uri, "noinvgc", invgc=False)
    try:
        assert remote.views == (ORIGINAL,)
        queries = _unit(demo_queries(8, start=280)[0])
        rows = _unit(demo_queries(3, start=0)[0])
        for engine in (exact, remote):
            engine.upsert(["a", "b", demo.ids[5]], rows, [None] * 3)
            engine.delete(demo.ids[:10])
        assert_equal_engines(exact, remote, queries)
        with pytest.raises(InputError, match="InvGC is not enabled"):
            remote.search(queries, k=5, method="raw", invgc=True)
    finally:
        remote.close()
        remote.store.drop()


def test_a_failed_change_changes_nothing_and_the_next_one_repairs(
    pair: tuple[Engine, RemoteEngine], demo: DemoFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus fails while a delete is written (after the adjusted rows went): 503, the served
    version stays; the next change finds the intent, completes it, then applies itself."""
    exact, remote = pair
    deleting = RemoteStore.delete_rows

    def fail_on_original(store: RemoteStore, view: str, ids: list[str]) -> None:
        if view == ORIGINAL:
            raise BackendUnavailable("Milvus went away")
        deleting(store, view, ids)

    monkeypatch.setattr(RemoteStore, "delete_rows", fail_on_original)
    with pytest.raises(BackendUnavailable):
        remote.delete(demo.ids[:5])
    monkeypatch.setattr(RemoteStore, "delete_rows", deleting)
    assert remote.version == remote.store.version().version == exact.version
    rows = _unit(demo_queries(2, start=0)[0])
    remote.upsert(["after"], rows[:1], [None])  # recovers the delete first (version + 1)
    exact.delete(demo.ids[:5])
    exact.upsert(["after"], rows[:1], [None])
    assert_equal_engines(exact, remote, _unit(demo_queries(8, start=280)[0]))
