"""Issue 14, findings 1–3, 6 and 7: the SQLite store under disk full, damage, deletion, crashes
mid-transaction, migration and housekeeping.

"Never silently smaller": after any damage a store either loads exactly what was committed or
refuses to load (:class:`StoreDamaged`, naming the file and ``hubless repair``). The damage
tests flip one byte at positions spread over every file the service keeps (database, hot
rollback journal, precompute cache) and check exactly that; the server tests check that a
refusal stops ``hubless serve`` with one clear line and that ``hubless repair`` recovers what is
intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import check_embeddings
from service.app import create_app
from service.engine import Engine
from service.engine.changes import Change, Delete, Upsert
from service.engine.persistence import (
    DB_NAME,
    GalleryStore,
    Snapshot,
    StorageError,
    StoreDamaged,
)
from service.engine.startup import load_engine, store_directory
from service.harness import REPO_ROOT, Server, write_gallery
from service.settings import Settings

DIM = 8


def _unit(rows: np.ndarray) -> np.ndarray:
    return check_embeddings(np.asarray(rows, dtype=np.float32), field="test")


def _upsert(rng: np.random.Generator, ids: list[str], meta: bool = True) -> Upsert:
    metadata = tuple({"n": n, "tag": "ü"} if meta else None for n in range(len(ids)))
    return Upsert(tuple(ids), _unit(rng.normal(size=(len(ids), DIM))), metadata)


def _summary(snapshot: Snapshot | None, changes: list[Change]) -> tuple:
    """Everything a store holds, comparable with ``==`` (embeddings as bytes)."""

    def change(c: Change) -> tuple:
        if isinstance(c, Delete):
            return ("delete", c.ids)
        return ("upsert", c.ids, json.dumps(c.metadata), c.embeddings.tobytes())

    snap = None
    if snapshot is not None:
        snap = (snapshot.seq, snapshot.ids, json.dumps(snapshot.metadata))
        snap += (snapshot.embeddings.tobytes(),)
    return snap, tuple(change(c) for c in changes)


def _load(directory: Path) -> tuple:
    store = GalleryStore(directory)
    try:
        return _summary(*store.recover())
    finally:
        store.close()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store with a snapshot of 40 items and 8 changes after it (both tables in use)."""
    directory = tmp_path / "store"
    store = GalleryStore(directory)
    store.recover()
    rng = np.random.default_rng(0)
    for n in range(3):
        store.append(_upsert(rng, [f"a{n}-{j}" for j in range(5)]))
    base = _upsert(rng, [f"s{j}" for j in range(40)])
    store.snapshot(base.ids, base.metadata, base.embeddings)
    for n in range(8):
        change = Delete((f"s{n}",)) if n % 3 == 2 else _upsert(rng, [f"c{n}-{j}" for j in range(4)])
        store.append(change)
    store.close()
    return directory


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def _positions(size: int, stride: int) -> list[int]:
    """Every byte of the first 100 (file headers) and every ``stride``-th after."""
    return sorted(set(range(min(100, size))) | set(range(100, size, stride)) | {size - 1})


def _flip_outcomes(directory: Path, name: str, expected: set[tuple], stride: int) -> dict:
    """Flip each position of ``directory/name`` in a fresh copy and load it: counts of
    'refused' and 'intact'; any other outcome fails."""
    outcomes = {"refused": 0, "intact": 0}
    size = (directory / name).stat().st_size
    for position in _positions(size, stride):
        copy = directory.parent / "flipped"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(directory, copy)
        _flip(copy / name, position)
        try:
            loaded = _load(copy)
        except StoreDamaged as exc:
            assert str(copy / DB_NAME) in str(exc) and "hubless repair" in str(exc)
            outcomes["refused"] += 1
            continue
        assert loaded in expected, f"byte {position} of {name}: loaded something else"
        outcomes["intact"] += 1
    return outcomes


# --- finding 2: a flipped byte anywhere -------------------------------------------------------


def test_a_flipped_byte_anywhere_in_the_database_is_refused_or_harmless(store_dir: Path) -> None:
    expected = _load(store_dir)
    outcomes = _flip_outcomes(store_dir, DB_NAME, {expected}, stride=53)
    # the flips that hit rows (most of a small store) are caught, none is silently dropped
    assert outcomes["refused"] > 50, outcomes
    print(outcomes)


def _hot_journal(store_dir: Path) -> Change:
    """Crash (``os._exit``) in the middle of a change's transaction, after SQLite spilled pages
    of it into the database file: a hot rollback journal is left. Returns the change."""
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        from pathlib import Path
        from service.engine.changes import Upsert
        from service.engine.persistence import GalleryStore
        store = GalleryStore(Path({str(store_dir)!r}))
        store.recover()
        store._conn.execute("PRAGMA cache_size=1")  # spill pages before the commit
        write = store._write
        def write_and_die(conn, row, head):
            write(conn, row, head)
            os._exit(0)  # inside the transaction: no COMMIT, no ROLLBACK
        store._write = write_and_die
        vectors = np.full((400, {DIM}), 0.125, dtype=np.float32) * np.sqrt(8) / 1
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.append(Upsert(tuple(f"x{{i}}" for i in range(400)), vectors, (None,) * 400))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    vectors = np.full((400, DIM), 0.125, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Upsert(tuple(f"x{i}" for i in range(400)), vectors, (None,) * 400)


def test_a_crash_mid_transaction_rolls_back_and_a_flipped_journal_byte_loses_nothing(
    store_dir: Path,
) -> None:
    committed = _load(store_dir)
    in_flight = _hot_journal(store_dir)
    journal = store_dir / f"{DB_NAME}-journal"
    assert journal.exists() and journal.stat().st_size > 0, "no hot journal was left"
    snapshot_and_changes = committed[0], (*committed[1], _summary(None, [in_flight])[1][0])
    # the in-flight change was never acknowledged: rolled back, or (if the journal is ignored)
    # complete; never a store smaller than what was committed
    allowed = {committed, snapshot_and_changes}
    outcomes = _flip_outcomes(store_dir, journal.name, allowed, stride=61)
    print(outcomes)
    assert _load(store_dir) == committed  # undamaged journal: rolled back exactly


# --- finding 3: header damage, missing rows, a changed sequence number, a deleted database ----


def _tamper(directory: Path, sql: str) -> None:
    with sqlite3.connect(directory / DB_NAME) as conn:
        conn.execute(sql)


@pytest.mark.parametrize(
    "damage",
    [
        "DELETE FROM items WHERE row = 7",  # a snapshot row gone
        "DELETE FROM items",  # the whole snapshot gone
        "DELETE FROM changes WHERE seq = (SELECT min(seq) + 2 FROM changes)",  # a middle change
        "DELETE FROM changes WHERE seq = (SELECT max(seq) FROM changes)",  # the last change
        "UPDATE changes SET seq = seq + 100 WHERE seq = (SELECT min(seq) + 1 FROM changes)",
        "UPDATE head SET head_seq = head_seq - 1",
        "DELETE FROM head",
    ],
)
def test_missing_or_renumbered_rows_are_refused(store_dir: Path, damage: str) -> None:
    _tamper(store_dir, damage)
    with pytest.raises(StoreDamaged, match="hubless repair"):
        _load(store_dir)


def test_header_damage_and_a_deleted_database_are_refused(store_dir: Path) -> None:
    _flip(store_dir / DB_NAME, 3)  # inside "SQLite format 3"
    with pytest.raises(StoreDamaged, match=r"gallery\.sqlite3"):
        _load(store_dir)
    (store_dir / DB_NAME).unlink()
    with pytest.raises(StoreDamaged, match="missing"):
        _load(store_dir)


# --- finding 1: disk full ---------------------------------------------------------------------


def test_disk_full_refuses_the_change_and_loses_nothing(store_dir: Path) -> None:
    """A database that may not grow (``max_page_count``: what a full disk does to SQLite)."""
    store = GalleryStore(store_dir)
    store.recover()
    before = _load(store_dir)
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    rng = np.random.default_rng(1)
    for size in (1, 300):  # a small change may still fit in free pages; a big one cannot
        try:
            store.append(_upsert(rng, [f"full{size}-{j}" for j in range(size)]))
        except StorageError as exc:
            assert exc.full and "no space left" in str(exc)
            break
    else:
        pytest.fail("the full database accepted every change")
    after_refusal = _load(store_dir)
    assert after_refusal[0] == before[0] and after_refusal[1][: len(before[1])] == before[1]
    store._conn.execute(f"PRAGMA max_page_count = {pages * 100}")  # space is back
    later = _upsert(rng, ["later"])
    store.append(later)
    store.close()
    snapshot, changes = after_refusal
    assert _load(store_dir) == (snapshot, (*changes, _summary(None, [later])[1][0]))


def _settings(files: dict[str, str], data_dir: Path, **overrides: Any) -> Settings:
    fields = {name.removeprefix("HUBLESS_").lower(): value for name, value in files.items()}
    # InvGC on (off by default): the precompute cache then holds both views, all checked here
    overrides = {"invgc": True, **overrides}
    return Settings(**fields, data_dir=data_dir, nnn_topk=16, **overrides)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return write_gallery(tmp_path / "input", rows=120, bank_rows=200)


@pytest.fixture
def serve(files: dict[str, str], tmp_path: Path) -> Callable[..., Any]:
    """``with serve(**settings) as client``: the same data dir each time (a second is a
    restart), ready before it is handed out."""
    from contextlib import contextmanager

    @contextmanager
    def run(**overrides: Any) -> Iterator[TestClient]:
        app = create_app(_settings(files, tmp_path / "data", **overrides), configure_logs=False)
        with TestClient(app) as client:
            while client.get("/readyz").status_code != 200:
                assert client.get("/readyz").json()["status"] != "failed"
            yield client

    return run


def _item(item_id: str, seed: int, **extra: Any) -> dict[str, Any]:
    vector = np.random.default_rng(seed).normal(size=384).tolist()
    return {"id": item_id, "embedding": vector, **extra}


def _ids(client: TestClient) -> list[str]:
    return [i["id"] for i in client.get("/gallery", params={"limit": 1000}).json()["items"]]


def test_disk_full_at_the_write_call_is_a_507_and_later_writes_are_fine(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as client:
        assert client.put("/gallery", json={"items": [_item("before", 1)]}).status_code == 200
        version, ids = client.get("/readyz").json()["version"], _ids(client)

        def no_space(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(GalleryStore, "_write", no_space)
        for _ in range(3):  # repeatedly: the old log format appended after partial records
            response = client.put("/gallery", json={"items": [_item("refused", 2)]})
            assert response.status_code == 507, response.text
            error = response.json()["error"]
            assert error["code"] == "insufficient_storage" and "no space" in error["message"]
        assert client.get("/readyz").json()["version"] == version and _ids(client) == ids
        monkeypatch.undo()
        assert client.put("/gallery", json={"items": [_item("after", 3)]}).status_code == 200
        served = _ids(client)
    with serve() as client:
        assert _ids(client) == served and "refused" not in served


# --- finding 7: bit-exact embeddings across a snapshot and a restart --------------------------


def test_embeddings_are_bit_exact_across_snapshot_and_restart(serve: Callable[..., Any]) -> None:
    items = [_item(f"exact{n}", n) for n in range(60)]
    with serve() as client:
        assert client.put("/gallery", json={"items": items}).status_code == 200
        ids = _ids(client)

        def served() -> dict[str, list[float]]:
            return {
                i: client.get(f"/gallery/{i}", params={"embedding": "true"}).json()["embedding"]
                for i in ids[::3]
            }

        before = served()
        assert client.post("/admin/snapshot").status_code == 200
    with serve() as client:
        assert served() == before  # floats equal to the last bit (JSON round-trips float32)


# --- finding 6: housekeeping ------------------------------------------------------------------


def test_temporary_files_and_old_cache_entries_are_removed(
    serve: Callable[..., Any], files: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with serve() as client:
        assert client.put("/gallery", json={"items": [_item("h", 1)]}).status_code == 200
        assert client.post("/admin/snapshot").status_code == 200
    store = store_directory(_settings(files, data))
    (store / ".tmp-abc.npz").write_bytes(b"left by a kill during a snapshot")
    (data / "cache" / ".tmp-x.npz").write_bytes(b"left by a kill during a cache save")
    (data / "cache" / ("0" * 32 + ".npz")).write_bytes(b"an old entry")
    with serve():
        pass
    with serve():  # the snapshot made a new cache key: one entry, the current one
        assert sorted(p.name for p in store.iterdir()) == ["STORE", DB_NAME]
        (entry,) = (data / "cache").iterdir()
        assert not entry.name.startswith(".tmp-")


# --- the precompute cache: damage means recompute ---------------------------------------------


def _fingerprint(engine: Engine) -> tuple:
    queries = _unit(np.random.default_rng(9).normal(size=(5, 384)))
    state = engine.state
    hits = [engine.search(queries, k=5, method=m, invgc=True).ids for m in ("dualis", "csls")]
    return state.ids, state.original.embeddings.tobytes(), state.adjusted.stats.tobytes(), hits


def test_a_flipped_byte_in_the_precompute_cache_is_recomputed_with_a_warning(
    files: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(files, tmp_path / "data")
    expected = _fingerprint(load_engine(settings))
    (entry,) = (tmp_path / "data" / "cache").glob("*.npz")
    pristine = entry.read_bytes()
    size = len(pristine)
    warned = 0
    for position in range(0, size, size // 12):
        entry.write_bytes(pristine)
        _flip(entry, position)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert _fingerprint(load_engine(settings)) == expected, position
        warned += any("precompute cache" in r.getMessage() for r in caplog.records)
    assert warned >= 8, warned  # most flips hit array data: detected and recomputed
    assert entry.read_bytes() != b""  # rewritten


# --- migration of an old data dir -------------------------------------------------------------


def _old_record(seq: int, change: Change) -> bytes:
    """The old change-log encoder, kept here to write a data dir as the old code did."""
    if isinstance(change, Upsert):
        body = np.ascontiguousarray(change.embeddings, dtype="<f4").tobytes()
        header = {
            "op": "upsert",
            "ids": list(change.ids),
            "metadata": list(change.metadata),
            "dim": int(change.embeddings.shape[1]),
        }
    else:
        body, header = b"", {"op": "delete", "ids": list(change.ids)}
    head = json.dumps(header, separators=(",", ":")).encode()
    crc = zlib.crc32(head + body)
    return struct.pack("<4sQIII", b"HBL1", seq, len(head), len(body), crc) + head + body


def test_an_old_data_dir_is_migrated_on_first_start(files: dict[str, str], tmp_path: Path) -> None:
    """A data dir as the old code wrote it (an .npz snapshot at seq 3, a log whose first three
    records the snapshot includes): the first start serves exactly what the old code would."""
    settings = _settings(files, tmp_path / "data")
    initial = load_engine(_settings(files, tmp_path / "reference")).state
    rng = np.random.default_rng(4)
    ids = initial.ids
    gallery = {i: (v, None) for i, v in zip(ids[5:], initial.original.embeddings[5:], strict=True)}
    changes = [
        Upsert(("m1", "m2"), _unit(rng.normal(size=(2, 384))), ({"k": "ü"}, None)),
        Delete((ids[7],)),
        Upsert((ids[9],), _unit(rng.normal(size=(1, 384))), ({"again": True},)),
    ]
    old = store_directory(settings)
    old.mkdir(parents=True)
    np.savez(
        old / "snapshot.npz",
        seq=np.int64(3),
        ids=np.asarray(list(gallery), dtype=str),
        metadata=np.asarray(json.dumps([None] * len(gallery))),
        embeddings=np.stack([v for v, _ in gallery.values()]),
    )
    logged = [changes[0]] * 3 + changes  # seqs 1-3 are in the snapshot already
    (old / "changes.log").write_bytes(b"".join(_old_record(n, c) for n, c in enumerate(logged, 1)))
    for change in changes:  # what the old code's replay gives
        for n, i in enumerate(change.ids):
            gallery.pop(i) if isinstance(change, Delete) else gallery.pop(i, None)
            if isinstance(change, Upsert):
                gallery[i] = (change.embeddings[n], change.metadata[n])

    for _ in range(2):  # migrated on the first start, then opened as SQLite
        state = load_engine(settings).compact_tombstones()  # replayed deletes: rows dropped
        assert state.ids == tuple(gallery) and state.version == 1 + 3 + 3
        assert [dict(m) if m else m for m in state.metadata] == [m for _, m in gallery.values()]
        want = np.stack([v for v, _ in gallery.values()])
        np.testing.assert_array_equal(state.original.embeddings, want)
        assert sorted(p.name for p in old.iterdir()) == ["STORE", DB_NAME]  # old files gone


# --- a real server: refuse to start, repair, start --------------------------------------------


def _cli(env: dict[str, str], data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    environment |= env | {"HUBLESS_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_damaged_store_stops_serve_with_one_line_and_repair_recovers_the_rest(
    files: dict[str, str], tmp_path: Path
) -> None:
    import httpx

    data = tmp_path / "data"
    server = Server(data, files)
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        for n in range(6):
            items = [_item(f"r{n}-{j}", 10 * n + j) for j in range(3)]
            assert client.put("/gallery", json={"items": items}).status_code == 200
        served = [i["id"] for i in client.get("/gallery", params={"limit": 1000}).json()["items"]]
    store = store_directory(_settings(files, data))
    # damage the fourth change's row (its checksum no longer matches)
    _tamper(store, 'UPDATE changes SET ids = \'["r3-0","r3-1","rX"]\' WHERE seq = 4')

    server.start()
    assert server.process is not None
    assert server.process.wait(timeout=60) == 3
    errors = [line for line in server.logs().splitlines() if "damaged" in line]
    assert len(errors) == 1, server.logs()
    assert str(store / DB_NAME) in errors[0] and "hubless repair" in errors[0]

    repaired = _cli(files, data, "repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "lost changes (sequence numbers): 1 [4]" in repaired.stdout, repaired.stdout
    assert any(p.name.startswith(f"{DB_NAME}.damaged-") for p in store.iterdir())
    assert "intact" in _cli(files, data, "repair").stdout  # nothing more to do

    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        now = [i["id"] for i in client.get("/gallery", params={"limit": 1000}).json()["items"]]
        version = client.get("/readyz").json()["version"]
    assert now == [i for i in served if not i.startswith("r3-")]  # exactly change 4 is lost
    assert version == 8  # after the 6 changes: a version of its own
