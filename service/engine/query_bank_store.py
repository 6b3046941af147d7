"""Durable rows of the live query bank (served queries) in their own SQLite file.

Served queries are user data: they are kept only with ``HUBLESS_LIVE_QUERY_BANK=true``, in
``<data_dir>/query_bank.sqlite3``, apart from the gallery's own store. Tables:

- ``rows(slot INTEGER PRIMARY KEY, embedding BLOB, crc INTEGER)``: the served rows by
  reservoir slot (see :mod:`service.engine.live_bank`), each embedding as little-endian
  float32 bytes with its CRC32;
- ``meta(key TEXT PRIMARY KEY, value INTEGER)``: ``dim``, ``seen`` (served queries offered to
  the reservoir so far), ``version`` (of the bank) and ``crc``, the CRC32 of those three.

WAL with ``synchronous=FULL``, one transaction per applied batch: a crash keeps a batch whole or
loses it whole; a checkpoint follows each one, so no committed batch waits in the WAL (whose
recovery silently drops every frame after a damaged one). SQLite does not checksum its pages,
so every row carries its own CRC32, verified on load; a row that fails it is dropped with a
warning (the bank is a sample of queries: losing a row costs a little statistics, never a wrong
one) and the table is rewritten without it. Counters that fail their CRC restart from the rows
(seen = rows kept, version 0), with a warning. A file SQLite cannot read stops the start with
a message naming it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.io import DataError

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


def _records(slots: np.ndarray, rows: np.ndarray) -> list[tuple[int, bytes, int]]:
    blobs = [_blob(row) for row in rows]
    return [
        (int(slot), blob, zlib.crc32(blob))
        for slot, blob in zip(slots.tolist(), blobs, strict=True)
    ]


_COUNTERS = ("dim", "seen", "version")


def _counters_crc(counters: dict[str, int]) -> int:
    return zlib.crc32(",".join(str(counters[k]) for k in _COUNTERS).encode())


def _counters(meta: dict) -> dict[str, int] | None:
    """dim, seen and version from the meta table, or None if missing or failing their CRC."""
    counters = {k: meta.get(k) for k in _COUNTERS}
    if not all(type(v) is int for v in counters.values()):
        return None
    return counters if meta.get("crc") == _counters_crc(counters) else None  # type: ignore[arg-type]


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
        counters = _counters(meta)
        if counters is not None and counters["dim"] != dim:
            raise DataError(
                f"{self.path}: the live query bank holds {counters['dim']}-d rows, the banks "
                f"are {dim}-d (move the file away to start an empty live bank)"
            )
        good = [
            (slot, blob)
            for slot, blob, crc in records
            if isinstance(blob, bytes) and len(blob) == 4 * dim and zlib.crc32(blob) == crc
        ]
        rows = np.frombuffer(b"".join(b for _, b in good), dtype="<f4").reshape(len(good), dim)
        rows = rows.astype(np.float32)
        bad_rows = len(good) < len(records) or [s for s, _ in good] != list(range(len(good)))
        if bad_rows:
            log.warning(
                "live query bank: dropped corrupt or misplaced rows",
                extra={"path": str(self.path), "kept": len(good), "found": len(records)},
            )
        if counters is None and meta:
            log.warning(
                "live query bank: corrupt counters; restarting them from the rows",
                extra={"path": str(self.path), "rows": len(good)},
            )
        if counters is None or bad_rows:  # (a new store gets its counters here)
            counters = counters or {"dim": dim, "seen": len(good), "version": 0}
            self._write(_records(np.arange(len(good)), rows), counters, clear=True)
        return StoredBank(rows, counters["seen"], counters["version"])

    def commit(
        self, slots: np.ndarray, rows: np.ndarray, *, dim: int, seen: int, version: int
    ) -> None:
        """Write rows into their slots and the counters, in one durable transaction."""
        self._write(_records(slots, rows), {"dim": dim, "seen": seen, "version": version})

    def _write(
        self, records: list[tuple[int, bytes, int]], counters: dict[str, int], clear: bool = False
    ) -> None:
        """One transaction, then a checkpoint: the rows are in the database file itself before
        the caller goes on, so a damaged WAL frame can never drop them silently."""
        meta = {**counters, "crc": _counters_crc(counters)}
        with self._lock:
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
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
