"""Durable gallery changes in SQLite: one transaction per group of changes, snapshots as items.

The store is one SQLite file, ``gallery.sqlite3``, in the gallery's directory under
``HUBLESS_DATA_DIR``. Changes that arrive while another commits share one transaction (group
commit, :meth:`GalleryStore.append_many`). Every acknowledged change is committed
(``synchronous=FULL``) *before* it becomes visible, so a crash (even ``kill -9``) loses nothing
acknowledged, and a change that fails (disk full included) rolls back whole: the store is
exactly as before.

Why the rollback journal (``journal_mode=DELETE``) and not WAL: WAL recovery stops at the first
frame whose checksum fails and silently drops every later frame, committed or not, so one
flipped byte in ``-wal`` could lose acknowledged changes without an error. With a rollback
journal every committed change is in the database file itself by the time it is acknowledged;
the journal only ever holds the *old* pages of the one transaction in flight. Damage to a
journal can therefore only affect a change that was never acknowledged, and what it leaves
behind is caught by the checks below.

SQLite does not checksum its pages, so the store does: every change row carries a checksum of
its sequence number, operation, ids, metadata, dimension and embedding bytes; every snapshot
row one of its row number, id, metadata and embedding; the one ``head`` row (written in the
same transaction as each change) one of the snapshot's sequence number, row count and the
digest of its rows, and of the last sequence number. Loading verifies all of it (and runs
SQLite's ``quick_check``): a flipped byte anywhere either changes nothing that is read or is
reported as :class:`StoreDamaged`, naming the file; the service then refuses to start and
``hubless repair`` salvages what is intact. A missing row (snapshot or change) is a gap in the
row numbers or sequence numbers the head row vouches for, so it is reported too.

Embeddings are stored as the float32 bytes served, and read back unchanged (no
re-normalisation), so a snapshot and restart give bit-identical embeddings.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.engine.changes import Change, Delete, Upsert
from service.engine.state import Metadata

log = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
#: Written next to a new database, so that a database deleted on its own is noticed (a store
#: directory that is not empty but has no database is refused, not silently started afresh).
MARKER_NAME = "STORE"
MARKER_TEXT = (
    "This directory holds a hubless gallery store: gallery.sqlite3 is its database. Without it\n"
    "the service refuses to start; `hubless repair` starts a new store from what is left.\n"
)
#: Bump when the tables or the checksums change (a newer store is refused, not misread).
FORMAT = 1
TMP_PREFIX = ".tmp-"

_SCHEMA = """
CREATE TABLE head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    snapshot_seq INTEGER NOT NULL,
    snapshot_items INTEGER NOT NULL,  -- -1: no snapshot (the gallery files are the base)
    snapshot_digest BLOB NOT NULL,
    head_seq INTEGER NOT NULL,
    checksum BLOB NOT NULL
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    ids TEXT NOT NULL,
    metadata TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embeddings BLOB NOT NULL,
    checksum BLOB NOT NULL
);
CREATE TABLE items (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB NOT NULL,
    checksum BLOB NOT NULL
);
"""


class StoreDamaged(RuntimeError):
    """The store fails a check: the service must not start on it (``hubless repair``)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path} is damaged ({reason}); the service will not start on it. Run "
            "`hubless repair` (same settings) to copy what is intact into a new store: it "
            "keeps the damaged file aside and reports what was lost"
        )
        self.path, self.reason = path, reason


class StorageError(RuntimeError):
    """A change could not be written; nothing was changed. ``full``: out of disk space."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def _storage_error(exc: BaseException, path: Path) -> StorageError:
    if _is_full(exc):
        message = f"no space left for the change log ({path}); nothing was changed: free space"
        return StorageError(message, full=True)
    return StorageError(f"cannot write the change log ({path}): {exc}", full=False)


def _digest(*parts: bytes | str | int) -> bytes:
    """16-byte BLAKE2b over length-prefixed parts (so no two part lists collide)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, int):
            data = struct.pack("<q", part)
        elif isinstance(part, str):
            data = part.encode("utf-8", "surrogatepass")
        else:
            data = part
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.digest()


def _dumps(value: object) -> str:
    # ASCII-only JSON: any string the service ever accepted round-trips, SQLite stores text
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _meta_list(metadata: Sequence[Metadata]) -> list[object]:
    return [dict(m) if m is not None else None for m in metadata]


@dataclass(frozen=True)
class Head:
    snapshot_seq: int
    snapshot_items: int  # -1: no snapshot
    snapshot_digest: bytes
    head_seq: int

    def checksum(self) -> bytes:
        return _digest(
            "head",
            FORMAT,
            self.snapshot_seq,
            self.snapshot_items,
            self.snapshot_digest,
            self.head_seq,
        )


@dataclass(frozen=True)
class Snapshot:
    seq: int
    ids: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    embeddings: np.ndarray


def change_row(seq: int, change: Change) -> tuple[int, str, str, str, int, bytes, bytes]:
    """The ``changes`` row of ``change`` at ``seq`` (its checksum last)."""
    ids = _dumps(list(change.ids))
    if isinstance(change, Upsert):
        op, meta = "upsert", _dumps(_meta_list(change.metadata))
        dim = int(change.embeddings.shape[1])
        body = np.ascontiguousarray(change.embeddings, dtype="<f4").tobytes()
    else:
        op, meta, dim, body = "delete", "null", 0, b""
    return seq, op, ids, meta, dim, body, _digest("change", seq, op, ids, meta, dim, body)


def _decode_change(op: str, ids: str, meta: str, dim: int, body: bytes) -> Change:
    id_tuple = tuple(json.loads(ids))
    if op == "delete":
        return Delete(id_tuple)
    embeddings = np.frombuffer(body, dtype="<f4").reshape(len(id_tuple), dim).astype(np.float32)
    return Upsert(id_tuple, embeddings, tuple(json.loads(meta)))


def _item_row(row: int, item_id: str, meta: str, body: bytes) -> tuple:
    return row, item_id, meta, body, _digest("item", row, item_id, meta, body)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=DELETE")  # see the module docstring: never WAL
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cell_size_check=ON")
    return conn


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error (the store is then as before)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _write_head(conn: sqlite3.Connection, head: Head) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO head VALUES (1, ?, ?, ?, ?, ?, ?)",
        (
            FORMAT,
            head.snapshot_seq,
            head.snapshot_items,
            head.snapshot_digest,
            head.head_seq,
            head.checksum(),
        ),
    )


def _item_rows(
    ids: Sequence[str], metadata: Sequence[Metadata], embeddings: np.ndarray
) -> list[tuple[int, str, str, bytes, bytes]]:
    """The ``items`` rows of a snapshot (each with its checksum)."""
    data = np.ascontiguousarray(embeddings, dtype="<f4")
    return [
        _item_row(n, i, _dumps(m), data[n].tobytes())
        for n, (i, m) in enumerate(zip(ids, _meta_list(metadata), strict=True))
    ]


def _write_items(conn: sqlite3.Connection, rows: Sequence[tuple]) -> bytes:
    """Replace the snapshot rows by ``rows``; returns the digest of their checksums."""
    conn.execute("DELETE FROM items")
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", rows)
    return _digest("items", *(r[-1] for r in rows))


def _create(path: Path, snapshot: Snapshot | None = None, changes: Sequence[tuple] = ()) -> None:
    """A new store at ``path`` (a temporary name, renamed by the caller) in one transaction."""
    conn = _connect(path)
    try:
        with _transaction(conn):
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            if snapshot is None:
                head = Head(0, -1, b"", 0)
            else:
                rows = _item_rows(snapshot.ids, snapshot.metadata, snapshot.embeddings)
                digest = _write_items(conn, rows)
                head = Head(snapshot.seq, len(snapshot.ids), digest, snapshot.seq)
            for row in changes:
                conn.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            if changes:
                head = Head(
                    head.snapshot_seq, head.snapshot_items, head.snapshot_digest, changes[-1][0]
                )
            _write_head(conn, head)
    finally:
        conn.close()
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Contents:
    """What a store holds, as read and verified."""

    head: Head
    snapshot: Snapshot | None
    changes: list[tuple[int, Change]]
    change_bytes: int


def _read(conn: sqlite3.Connection, path: Path) -> Contents:
    """Everything in the store, every checksum and count verified; StoreDamaged otherwise."""
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreDamaged(path, f"SQLite quick_check: {'; '.join(problems[:3])}")
        rows = conn.execute("SELECT * FROM head").fetchall()
        if len(rows) != 1:
            raise StoreDamaged(path, f"{len(rows)} head rows, expected 1")
        _, fmt, s_seq, s_items, s_digest, h_seq, checksum = rows[0]
        if fmt != FORMAT:
            raise StoreDamaged(path, f"store format {fmt}, this version reads {FORMAT}")
        head = Head(s_seq, s_items, bytes(s_digest), h_seq)
        if bytes(checksum) != head.checksum():
            raise StoreDamaged(path, "the head row fails its checksum")
        changes, size = [], 0
        expected = head.snapshot_seq + 1
        for seq, op, ids, meta, dim, body, check in conn.execute(
            "SELECT * FROM changes ORDER BY seq"
        ):
            body = bytes(body)
            if bytes(check) != _digest("change", seq, op, ids, meta, dim, body):
                raise StoreDamaged(path, f"change {seq} fails its checksum")
            if seq != expected:
                raise StoreDamaged(path, f"change {expected} is missing (next found: {seq})")
            changes.append((seq, _decode_change(op, ids, meta, dim, body)))
            size += len(body) + len(ids) + len(meta)
            expected += 1
        if expected != head.head_seq + 1:
            raise StoreDamaged(path, f"changes {expected}…{head.head_seq} are missing")
        snapshot = _read_snapshot(conn, path, head) if head.snapshot_items >= 0 else None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", …
        raise StoreDamaged(path, f"SQLite: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # rows decoding to nonsense
        raise StoreDamaged(path, f"undecodable row: {type(exc).__name__}: {exc}") from None
    return Contents(head, snapshot, changes, size)


def _read_snapshot(conn: sqlite3.Connection, path: Path, head: Head) -> Snapshot:
    ids, metadata, bodies, checksums = [], [], [], []
    for row, item_id, meta, body, check in conn.execute("SELECT * FROM items ORDER BY row"):
        body = bytes(body)
        if bytes(check) != _digest("item", row, item_id, meta, body):
            raise StoreDamaged(path, f"snapshot row {row} fails its checksum")
        if row != len(ids):
            raise StoreDamaged(path, f"snapshot row {len(ids)} is missing")
        ids.append(item_id)
        metadata.append(json.loads(meta))
        bodies.append(body)
        checksums.append(bytes(check))
    if len(ids) != head.snapshot_items or _digest("items", *checksums) != head.snapshot_digest:
        raise StoreDamaged(
            path,
            f"snapshot has {len(ids)} intact rows, the head row vouches for "
            f"{head.snapshot_items} with another digest",
        )
    dims = {len(b) // 4 for b in bodies}
    if len(dims) > 1:
        raise StoreDamaged(path, f"snapshot rows of different dimensions {sorted(dims)}")
    dim = dims.pop() if dims else 0
    embeddings = np.frombuffer(b"".join(bodies), dtype="<f4").reshape(len(ids), dim)
    return Snapshot(head.snapshot_seq, tuple(ids), tuple(metadata), embeddings.astype(np.float32))


def remove_temporary_files(directory: Path) -> list[Path]:
    """Delete what an interrupted write left behind (``.tmp-*``); returns what was removed."""
    removed = []
    for path in directory.glob(f"{TMP_PREFIX}*") if directory.is_dir() else []:
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed temporary files", extra={"files": [str(p) for p in removed]})
    return removed


class GalleryStore:
    """The change log and snapshot of one initial gallery, in ``directory``.

    ``compact_changes`` / ``compact_bytes``: :attr:`due_for_compaction` turns true once the
    changes since the snapshot reach this many records or bytes.
    """

    def __init__(
        self, directory: Path, *, compact_changes: int = 1000, compact_bytes: int = 256 << 20
    ) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self.compact_changes, self.compact_bytes = compact_changes, compact_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._head = Head(0, -1, b"", 0)
        self._pending_bytes = 0

    @property
    def seq(self) -> int:
        """Sequence number of the last committed change."""
        return self._head.head_seq

    @property
    def due_for_compaction(self) -> bool:
        pending = self._head.head_seq - self._head.snapshot_seq
        return pending >= self.compact_changes or self._pending_bytes >= self.compact_bytes

    def recover(self) -> tuple[Snapshot | None, list[Change]]:
        """Open (create, or migrate an old data dir), verify, and return the snapshot (if any)
        and the changes after it. Raises :class:`StoreDamaged` if any check fails."""
        from service.engine import legacy  # only for data dirs of the old format

        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(self.directory)
        if not self.path.exists():
            if legacy.present(self.directory):
                snapshot, records = legacy.read(self.directory)
                self._create_from(snapshot, [change_row(seq, c) for seq, c in records])
                legacy.remove(self.directory)
                log.info("migrated the old change log to SQLite", extra={"path": str(self.path)})
            elif any(self.directory.iterdir()):
                found = sorted(p.name for p in self.directory.iterdir())
                raise StoreDamaged(self.path, f"the file is missing, the directory holds {found}")
            else:
                self._create_from(None, [])
        marker = self.directory / MARKER_NAME
        if not marker.exists():
            marker.write_text(MARKER_TEXT, encoding="utf-8")
        try:
            self._conn = _connect(self.path)
            contents = _read(self._conn, self.path)
        except StoreDamaged:
            self.close()
            raise
        except Exception as exc:  # damage fails in many ways ("not a database", bad UTF-8…)
            self.close()
            raise StoreDamaged(self.path, f"{type(exc).__name__}: {exc}") from None
        self._head, self._pending_bytes = contents.head, contents.change_bytes
        return contents.snapshot, [change for _, change in contents.changes]

    def _create_from(self, snapshot: Snapshot | None, changes: Sequence[tuple]) -> None:
        tmp = self.directory / f"{TMP_PREFIX}{DB_NAME}"
        tmp.unlink(missing_ok=True)
        _create(tmp, snapshot, changes)
        os.replace(tmp, self.path)
        _fsync(self.directory)

    def append(self, change: Change) -> None:
        """Commit one change (durably) before the caller makes it visible; on any failure the
        store is unchanged and :class:`StorageError` says why (``full`` for disk full)."""
        self.append_many([change])

    def append_many(self, changes: Sequence[Change]) -> None:
        """Commit ``changes`` (consecutive sequence numbers) in one transaction: a group commit
        pays the fsyncs of one change for all of them. All or nothing, like :meth:`append`."""
        if not changes:
            return
        with self._lock:
            conn = self._connection()
            first = self._head.head_seq + 1
            rows = [change_row(first + i, change) for i, change in enumerate(changes)]
            head = Head(
                self._head.snapshot_seq,
                self._head.snapshot_items,
                self._head.snapshot_digest,
                rows[-1][0],
            )
            try:
                with _transaction(conn):
                    for row in rows:
                        self._write(conn, row, head)
            except (sqlite3.Error, OSError) as exc:
                raise _storage_error(exc, self.path) from exc
            self._head = head
            self._pending_bytes += sum(len(r[5]) + len(r[2]) + len(r[3]) for r in rows)

    def _write(self, conn: sqlite3.Connection, row: tuple, head: Head) -> None:
        """The statements of one change row and the head after the transaction's last row (a
        seam for tests that inject write failures); inside one transaction, so only the head
        written last is ever read."""
        conn.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        _write_head(conn, head)

    def snapshot(
        self,
        ids: tuple[str, ...],
        metadata: tuple[Metadata, ...],
        embeddings: np.ndarray,
        seq: int | None = None,
    ) -> None:
        """Replace the snapshot by the gallery as of change ``seq`` (default: the last one) and
        drop the changes it includes, in one transaction (compaction); the changes logged after
        ``seq`` stay. On failure the store is unchanged (StorageError).

        The rows are encoded and checksummed before the store's lock is taken, so concurrent
        :meth:`append_many` calls wait only for the transaction itself. A snapshot older than
        the stored one is not written (two compactions crossing: the newer one stays)."""
        rows = _item_rows(ids, metadata, embeddings)
        with self._lock:
            conn = self._connection()
            last = self._head.head_seq
            seq = last if seq is None else seq
            if not self._head.snapshot_seq <= seq <= last:
                if seq > last:
                    raise ValueError(f"snapshot at change {seq}: the log ends at change {last}")
                return
            try:
                with _transaction(conn):
                    digest = _write_items(conn, rows)
                    conn.execute("DELETE FROM changes WHERE seq <= ?", (seq,))
                    head = Head(seq, len(ids), digest, last)
                    _write_head(conn, head)
                    (kept,) = conn.execute(
                        "SELECT coalesce(sum(length(embeddings) + length(ids) + length(metadata))"
                        ", 0) FROM changes"
                    ).fetchone()
            except (sqlite3.Error, OSError) as exc:
                raise _storage_error(exc, self.path) from exc
            self._head, self._pending_bytes = head, kept

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("GalleryStore.recover() must run first")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- salvage (``hubless repair``) -------------------------------------------------------------

SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Salvaged:
    """What could be read intact from a damaged store (rows failing their checksum are lost)."""

    head: Head | None
    items: dict[int, tuple[str, Metadata, np.ndarray]]  # snapshot row -> id, metadata, vector
    changes: dict[int, Change]  # seq -> change
    lost_items: list[int]  # snapshot rows that could not be read intact
    lost_changes: list[int]  # seqs that could not be read intact
    problems: list[str]


def _rows(conn: sqlite3.Connection, table: str, key: str, expected: range) -> dict[int, tuple]:
    """Rows by key: a full scan, or one lookup per expected key where the scan breaks."""
    found: dict[int, tuple] = {}
    try:
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY {key}"):
            found[row[0]] = row
        return found
    except sqlite3.DatabaseError:
        pass
    for number in expected:
        if number in found:
            continue
        try:
            row = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (number,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            found[number] = row
    return found


def salvage(path: Path, workdir: Path) -> Salvaged:
    """Read every intact row of the store at ``path`` (never modified: a copy in ``workdir`` is
    read, its SQLite header magic restored if that is what was hit)."""
    copy = workdir / "salvage.sqlite3"
    data = bytearray(path.read_bytes())
    problems = []
    if data[: len(SQLITE_MAGIC)] != SQLITE_MAGIC:
        data[: len(SQLITE_MAGIC)] = SQLITE_MAGIC
        problems.append("the SQLite header was damaged (restored in the copy read)")
    copy.write_bytes(bytes(data))
    journal = path.with_name(path.name + "-journal")
    if journal.exists():
        copy.with_name(copy.name + "-journal").write_bytes(journal.read_bytes())
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        head = None
        try:
            rows = conn.execute("SELECT * FROM head").fetchall()
            if len(rows) == 1:
                _, _fmt, s_seq, s_items, s_digest, h_seq, check = rows[0]
                candidate = Head(s_seq, s_items, bytes(s_digest), h_seq)
                if bytes(check) == candidate.checksum():
                    head = candidate
        except sqlite3.DatabaseError as exc:
            problems.append(f"head row unreadable: {exc}")
        if head is None:
            problems.append("the head row is damaged: counts and sequence numbers unknown")
        n_items = head.snapshot_items if head else 0
        item_rows = _rows(conn, "items", "row", range(max(0, n_items)))
        items, lost_items = {}, []
        for number in range(max([n_items - 1, *item_rows]) + 1):
            row = item_rows.get(number)
            if row is not None and bytes(row[4]) == _digest("item", *row[:3], bytes(row[3])):
                try:
                    vector = np.frombuffer(bytes(row[3]), dtype="<f4").astype(np.float32)
                    items[number] = (row[1], json.loads(row[2]), vector)
                    continue
                except ValueError:
                    pass
            lost_items.append(number)
        first = head.snapshot_seq + 1 if head else 1
        last = head.head_seq if head else 0
        change_rows = _rows(conn, "changes", "seq", range(first, last + 1))
        changes, lost_changes = {}, []
        for seq in range(min([first, *change_rows]), max([last, *change_rows]) + 1):
            row = change_rows.get(seq)
            if row is not None and bytes(row[6]) == _digest("change", *row[:5], bytes(row[5])):
                try:
                    changes[seq] = _decode_change(row[1], row[2], row[3], row[4], bytes(row[5]))
                    continue
                except (ValueError, TypeError, KeyError):
                    pass
            lost_changes.append(seq)
    finally:
        conn.close()
    return Salvaged(head, items, changes, lost_items, lost_changes, problems)


def replace_store(directory: Path, snapshot: Snapshot, suffix: str) -> Path:
    """Write a new store holding ``snapshot`` and move the old file (and journal) aside to
    ``<name>.<suffix>``; returns where the old file went."""
    path = directory / DB_NAME
    tmp = directory / f"{TMP_PREFIX}repair-{DB_NAME}"
    tmp.unlink(missing_ok=True)
    _create(tmp, snapshot)
    aside = path.with_name(f"{DB_NAME}.{suffix}")
    for name in (DB_NAME, f"{DB_NAME}-journal"):
        if (directory / name).exists():
            os.replace(directory / name, directory / name.replace(DB_NAME, aside.name))
    os.replace(tmp, path)
    _fsync(directory)
    return aside
