"""Reading the old data-dir format (``changes.log`` + ``snapshot.npz``), to migrate it once.

Before the SQLite store, changes went to a hand-written log (records ``b"HBL1" | seq u64 |
header_len u32 | body_len u32 | crc32 u32 | header JSON | float32 body``) and compactions to
an ``.npz`` snapshot. :func:`read` returns what they hold; the store writes it to SQLite and
then :func:`remove` deletes them. A torn tail (a crash mid-append) was never acknowledged and is
dropped with a warning, as the old code did.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from service.engine.changes import Change, Delete, Upsert
from service.engine.persistence import Snapshot

log = logging.getLogger(__name__)

LOG_NAME, SNAPSHOT_NAME = "changes.log", "snapshot.npz"
MAGIC = b"HBL1"
RECORD = struct.Struct("<4sQIII")


def present(directory: Path) -> bool:
    return (directory / LOG_NAME).exists() or (directory / SNAPSHOT_NAME).exists()


def _decode(header: dict, body: bytes) -> Change:
    ids = tuple(header["ids"])
    if header["op"] == "delete":
        return Delete(ids)
    embeddings = np.frombuffer(body, dtype="<f4").reshape(len(ids), header["dim"])
    return Upsert(ids, embeddings.astype(np.float32), tuple(header["metadata"]))


def read_log(path: Path) -> tuple[list[tuple[int, Change]], int]:
    """All intact records and the byte offset where they end."""
    records: list[tuple[int, Change]] = []
    data = path.read_bytes() if path.exists() else b""
    pos = 0
    while pos + RECORD.size <= len(data):
        magic, seq, head_len, body_len, crc = RECORD.unpack_from(data, pos)
        end = pos + RECORD.size + head_len + body_len
        if magic != MAGIC or end > len(data):
            break
        head = data[pos + RECORD.size : pos + RECORD.size + head_len]
        body = data[pos + RECORD.size + head_len : end]
        if zlib.crc32(head + body) != crc:
            break
        records.append((seq, _decode(json.loads(head), body)))
        pos = end
    return records, pos


def read(directory: Path) -> tuple[Snapshot | None, list[tuple[int, Change]]]:
    """The old snapshot (if any) and the logged changes after it, numbered consecutively."""
    snapshot = None
    if (directory / SNAPSHOT_NAME).exists():
        with np.load(directory / SNAPSHOT_NAME, allow_pickle=False) as archive:
            snapshot = Snapshot(
                seq=int(archive["seq"]),
                ids=tuple(str(i) for i in archive["ids"]),
                metadata=tuple(json.loads(str(archive["metadata"]))),
                embeddings=archive["embeddings"].astype(np.float32),
            )
    log_path = directory / LOG_NAME
    records, good_end = read_log(log_path)
    size = log_path.stat().st_size if log_path.exists() else 0
    if good_end < size:
        log.warning(
            "old change log has a torn or corrupt tail; not migrating it",
            extra={"path": str(log_path), "dropped_bytes": size - good_end},
        )
    after = snapshot.seq if snapshot else 0
    changes = [change for seq, change in records if seq > after]
    return snapshot, [(after + n, change) for n, change in enumerate(changes, 1)]


def remove(directory: Path) -> None:
    for name in (LOG_NAME, SNAPSHOT_NAME):
        (directory / name).unlink(missing_ok=True)
