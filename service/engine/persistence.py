"""Durable gallery changes: an append-only change log plus compacting snapshots.

Every acknowledged change is appended to ``changes.log`` and fsynced *before* it becomes
visible, so a crash (even ``kill -9``) loses nothing that was acknowledged. Each record carries
a sequence number and a CRC32, so a torn tail (a write cut off by a crash) is detected, reported
and cut off on the next start, and never half-applied.

A snapshot (``snapshot.npz``: ids, metadata, normalised embeddings and the sequence number it
includes) is written to a temporary file, fsynced and renamed; the log is then replaced by an
empty one. Replay skips records already in the snapshot, so a crash between the two steps is
harmless.

Record layout: ``b"HBL1" | seq u64 | header_len u32 | body_len u32 | crc32 u32 | header | body``
with the header JSON (op, ids, metadata, rows, dim) and the body float32 embedding bytes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.engine.changes import Change, Delete, Upsert
from service.engine.state import Metadata

log = logging.getLogger(__name__)

MAGIC = b"HBL1"
_FIXED = struct.Struct("<4sQIII")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(seq: int, change: Change) -> bytes:
    if isinstance(change, Upsert):
        body = np.ascontiguousarray(change.embeddings, dtype="<f4").tobytes()
        meta = [dict(m) if m is not None else None for m in change.metadata]
        header = {
            "op": "upsert",
            "ids": list(change.ids),
            "metadata": meta,
            "dim": int(change.embeddings.shape[1]),
        }
    else:
        body = b""
        header = {"op": "delete", "ids": list(change.ids)}
    head = json.dumps(header, separators=(",", ":")).encode()
    crc = zlib.crc32(head + body)
    return _FIXED.pack(MAGIC, seq, len(head), len(body), crc) + head + body


def _decode(header: dict, body: bytes) -> Change:
    ids = tuple(header["ids"])
    if header["op"] == "delete":
        return Delete(ids)
    embeddings = (
        np.frombuffer(body, dtype="<f4").reshape(len(ids), header["dim"]).astype(np.float32)
    )
    return Upsert(ids, embeddings, tuple(header["metadata"]))


def read_log(path: Path) -> tuple[list[tuple[int, Change]], int]:
    """All intact records and the byte offset where they end (a torn tail starts there)."""
    records: list[tuple[int, Change]] = []
    if not path.exists():
        return records, 0
    data = path.read_bytes()
    pos = 0
    while pos + _FIXED.size <= len(data):
        magic, seq, head_len, body_len, crc = _FIXED.unpack_from(data, pos)
        end = pos + _FIXED.size + head_len + body_len
        if magic != MAGIC or end > len(data):
            break
        head = data[pos + _FIXED.size : pos + _FIXED.size + head_len]
        body = data[pos + _FIXED.size + head_len : end]
        if zlib.crc32(head + body) != crc:
            break
        records.append((seq, _decode(json.loads(head), body)))
        pos = end
    return records, pos


@dataclass(frozen=True)
class Snapshot:
    seq: int
    ids: tuple[str, ...]
    metadata: tuple[Metadata, ...]
    embeddings: np.ndarray


class GalleryStore:
    """The change log and snapshot of one initial gallery, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "changes.log"
        self.snapshot_path = directory / "snapshot.npz"
        self._lock = threading.Lock()
        self.seq = 0

    def recover(self) -> tuple[Snapshot | None, list[Change]]:
        """The snapshot (if any) and the logged changes after it; cuts off a torn tail."""
        self.directory.mkdir(parents=True, exist_ok=True)
        snapshot = self._read_snapshot()
        records, good_end = read_log(self.log_path)
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        if good_end < size:
            log.warning(
                "change log has a torn or corrupt tail; ignoring it",
                extra={
                    "path": str(self.log_path),
                    "kept_bytes": good_end,
                    "dropped_bytes": size - good_end,
                },
            )
            with self.log_path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
        after = snapshot.seq if snapshot else 0
        changes = [change for seq, change in records if seq > after]
        self.seq = max([after, *(seq for seq, _ in records)])
        return snapshot, changes

    def append(self, change: Change) -> None:
        """Write one change durably (fsync) before the caller makes it visible."""
        with self._lock:
            record = encode(self.seq + 1, change)
            with self.log_path.open("ab") as handle:
                handle.write(record)
                handle.flush()
                os.fsync(handle.fileno())
            self.seq += 1

    def snapshot(
        self, ids: tuple[str, ...], metadata: tuple[Metadata, ...], embeddings: np.ndarray
    ) -> None:
        """Write the current gallery as a snapshot and start an empty log (compaction)."""
        with self._lock:
            meta = json.dumps([dict(m) if m is not None else None for m in metadata])
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.savez(
                        handle,
                        seq=np.int64(self.seq),
                        ids=np.asarray(ids, dtype=str),
                        metadata=np.asarray(meta),
                        embeddings=embeddings,
                    )
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.snapshot_path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            empty = self.directory / ".tmp-changes.log"
            with empty.open("wb") as handle:
                os.fsync(handle.fileno())
            os.replace(empty, self.log_path)
            _fsync_dir(self.directory)

    def _read_snapshot(self) -> Snapshot | None:
        if not self.snapshot_path.exists():
            return None
        with np.load(self.snapshot_path, allow_pickle=False) as archive:
            return Snapshot(
                seq=int(archive["seq"]),
                ids=tuple(str(i) for i in archive["ids"]),
                metadata=tuple(json.loads(str(archive["metadata"]))),
                embeddings=archive["embeddings"].astype(np.float32),
            )
