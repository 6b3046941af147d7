"""Where the augmented gallery goes: a Parquet file, plus a sidecar (Milvus: ``hubless load``).

Sinks receive chunks in row order (``write(ids, coords, metadata)``) and are finished or aborted
once. Ids and metadata are streamed from their text files next to the chunks, so neither is
ever held whole.

Parquet columns: ``id`` (string), ``vector`` (list<float32>, d+5: ``[g, stat(g)]``),
``metadata`` (string: JSON text, or null). The file is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.algorithms import InputError


class LineSource:
    """A text file with one entry per gallery row (ids, or JSON-lines metadata), read in order.

    ``path=None`` stands for the row numbers ``'0', '1', …`` (the service's default ids).
    """

    def __init__(self, path: Path | None, rows: int, what: str = "ids") -> None:
        self.path, self.rows, self.what = path, rows, what
        if path is not None:
            with path.open("rb") as handle:
                count = sum(1 for _ in handle)
            if count != rows:
                raise InputError(str(path), f"{count} {what} for {rows} gallery rows")
        self._lines = self._read()

    def _read(self) -> Iterator[str]:
        if self.path is None:
            yield from (str(i) for i in range(self.rows))
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                value = line.rstrip("\n").rstrip("\r")
                if not value and self.what == "ids":
                    raise InputError(str(self.path), f"empty id on line {number + 1}")
                yield value

    def take(self, count: int) -> list[str]:
        """The next ``count`` entries."""
        return [next(self._lines) for _ in range(count)]

    def skip(self, count: int) -> None:
        """Pass over the next ``count`` entries without keeping them (a shard's first row)."""
        for _ in range(count):
            next(self._lines)

    def at(self, rows: np.ndarray) -> list[str]:
        """Entries at the given sorted rows (a fresh pass; for the few activated items)."""
        wanted = iter(rows.tolist())
        target = next(wanted, None)
        out: list[str] = []
        for row, value in enumerate(LineSource(self.path, self.rows, self.what)._lines):
            if row == target:
                out.append(value)
                target = next(wanted, None)
                if target is None:
                    break
        return out


class Sink(Protocol):
    def write(self, ids: list[str], coords: np.ndarray, metadata: list[str] | None) -> None: ...

    def finish(self) -> dict[str, Any]:
        """Complete the output; returns what the summary and sidecar should say about it."""

    def abort(self) -> None: ...


class ParquetSink:
    """Row groups of one chunk each, written to ``path`` via a temporary file."""

    def __init__(self, path: Path, vector_dim: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.path = path
        self.vector_dim = vector_dim
        self._tmp = path.with_name(f".{path.name}.partial")
        self.schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("vector", pa.list_(pa.float32()), nullable=False),
                pa.field("metadata", pa.string()),
            ]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self.rows = 0

    def write(self, ids: list[str], coords: np.ndarray, metadata: list[str] | None) -> None:
        pa = self._pa
        n = coords.shape[0]
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * self.vector_dim)
        vectors = pa.ListArray.from_arrays(offsets, pa.array(coords.reshape(-1)))
        meta = pa.array(metadata if metadata is not None else [None] * n, pa.string())
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), vectors, meta], schema=self.schema
        )
        self._writer.write_table(table)
        self.rows += n

    def finish(self) -> dict[str, Any]:
        self._writer.close()
        os.replace(self._tmp, self.path)
        return {"parquet": str(self.path), "rows": self.rows, "bytes": self.path.stat().st_size}

    def abort(self) -> None:
        if self._writer.is_open:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write JSON via a temporary file and a rename (never a half-written sidecar)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
