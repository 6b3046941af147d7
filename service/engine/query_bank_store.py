"""Durable rows of the live query bank (served queries) in their own SQLite file.

Served queries are user data: they are kept only with ``HUBLESS_LIVE_QUERY_BANK=true``, in
``<data_dir>/query_bank.sqlite3``, apart from the gallery's own store. Tables:

- ``rows(slot INTEGER PRIMARY KEY, embedding BLOB, crc INTEGER)``: the served rows by
  reservoir slot (see :mod:`service.engine.live_bank`), each embedding as little-endian
  float32 bytes with its CRC32;
- ``meta(key TEXT PRIMARY KEY, value INTEGER)``: ``dim``, ``seen`` (served queries offered to
  the reservoir so far) and ``version`` (of the bank).

WAL with ``synchronous=FULL``, one transaction per applied batch: a crash keeps a batch whole or
loses it whole. SQLite does not checksum its pages, so every row carries its own CRC32, verified
on load; a row that fails it is dropped with a warning (the bank is a sample of queries: losing
a row costs a little statistics, never a wrong one) and the table is rewritten without it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.engine.loading import DataError

log = logging.getLogger(__name__)

FILE_NAME = "query_bank.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (slot INTEGER PRIMARY KEY, embedding BLOB NOT NULL,
                                 crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class StoredBank:
    """What the store holds: served rows (k, d) float32 in slot order, the count of served
    queries offered so far, and the bank version."""

    rows: np.ndarray
    seen: int
    version: int


def _blob(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


class QueryBankStore:
    """One SQLite file of served query rows. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DataError(f"{path}: not a usable live query bank store ({exc})") from None

    def load(self, dim: int) -> StoredBank:
        """The stored rows (of dimension ``dim``; another dimension is a DataError)."""
        with self._lock:
            try:
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                found = self._db.execute("SELECT slot, embedding, crc FROM rows ORDER BY slot")
                records = found.fetchall()
            except sqlite3.DatabaseError as exc:
                raise DataError(f"{self.path}: cannot read the live query bank ({exc})") from None
        stored_dim = meta.get("dim", dim)
        if stored_dim != dim:
            raise DataError(
                f"{self.path}: the live query bank holds {stored_dim}-d rows, the banks are "
                f"{dim}-d (move the file away to start an empty live bank)"
            )
        good = [
            (slot, blob)
            for slot, blob, crc in records
            if len(blob) == 4 * dim and zlib.crc32(blob) == crc
        ]
        rows = np.frombuffer(b"".join(b for _, b in good), dtype="<f4").reshape(len(good), dim)
        rows = rows.astype(np.float32)
        if len(good) < len(records) or [s for s, _ in good] != list(range(len(good))):
            log.warning(
                "live query bank: dropped corrupt or misplaced rows",
                extra={"path": str(self.path), "kept": len(good), "found": len(records)},
            )
            self._rewrite(rows)
        return StoredBank(rows, meta.get("seen", len(good)), meta.get("version", 0))

    def commit(
        self, slots: np.ndarray, rows: np.ndarray, *, dim: int, seen: int, version: int
    ) -> None:
        """Write rows into their slots and the counters, in one durable transaction."""
        records = [
            (int(slot), blob, zlib.crc32(blob))
            for slot, blob in zip(slots.tolist(), map(_blob, rows), strict=True)
        ]
        with self._lock:
            self._transaction(records, {"dim": dim, "seen": seen, "version": version})

    def _rewrite(self, rows: np.ndarray) -> None:
        """Replace every row by ``rows`` in slots 0, 1, … (after dropping corrupt rows)."""
        records = [(slot, _blob(row), zlib.crc32(_blob(row))) for slot, row in enumerate(rows)]
        with self._lock:
            self._transaction(records, {}, clear=True)

    def _transaction(
        self, records: list[tuple[int, bytes, int]], meta: dict[str, int], clear: bool = False
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if clear:
                db.execute("DELETE FROM rows")
            db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)", records)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
