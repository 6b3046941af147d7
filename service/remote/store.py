"""All Milvus I/O of the remote mode: the gallery rows of each view and the small shared state.

Collections (prefix P = ``HUBLESS_MILVUS_COLLECTION``):

``P_original`` / ``P_invgc``
    one row per gallery item: ``id`` (VARCHAR primary key), ``vector`` (FLOAT_VECTOR d+5,
    ``[g, stat(g)]``, metric IP), ``metadata`` (JSON ``{"v": <metadata or null>}``: Milvus 2.3
    has no nullable fields, so the item's metadata is wrapped) and ``seq`` (INT64, the gallery
    version that wrote the row). ``P_invgc`` holds the LocalAdj-adjusted view (InvGC on only).
``P_state``
    small shared rows: ``key`` (VARCHAR primary key), ``value`` (JSON), ``seq`` (INT64) and a
    2-d ``dummy`` vector (Milvus needs one vector field per collection). Keys: ``version``
    (committed version, gallery size, parameter fingerprint), ``lease`` (the writer),
    ``intent:<n>`` (the change in flight) and ``bank:<view>:<bank>:<chunk>`` (the bank-side
    state: each bank item's top-k gallery ids and similarities, :data:`BANK_CHUNK` bank items
    per row, ``seq`` = the version that last changed the chunk, so a reader reloads only the
    chunks newer than its version).

Every search filters ``seq <= V`` (V the version the caller serves): rows of a change that is not
committed yet (or crashed) are invisible (see docs/milvus.md, "What a search during a change
sees").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from service.backends.base import BackendUnavailable

log = logging.getLogger(__name__)

ORIGINAL, INVGC = "original", "invgc"
QUERY, GALLERY = "query", "gallery"
ID, VECTOR, METADATA, SEQ = "id", "vector", "metadata", "seq"
KEY, VALUE, DUMMY = "key", "value", "dummy"
#: Gallery ids are at most 512 characters (API); 4 bytes each in UTF-8 at worst.
MAX_ID_BYTES = 2048
#: Largest limit / offset + limit of one Milvus search or query.
MAX_LIMIT = 16384
#: Rows per upsert, queries per search, ids per ``id in [...]`` expression.
WRITE_BATCH = 2048
SEARCH_BATCH = 256
FILTER_BATCH = 1024
#: Bank items per bank-state row (a row holds their top-k ids and similarities as JSON).
BANK_CHUNK = 64
#: Ids per intent row.
INTENT_CHUNK = 512
_INDEXES: dict[str, tuple[str, dict[str, int]]] = {
    "flat": ("FLAT", {}),
    "hnsw": ("HNSW", {"M": 16, "efConstruction": 200}),
    "ivf_flat": ("IVF_FLAT", {"nlist": 1024}),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r"}


def literal(text: str) -> str:
    """A Milvus string literal (pymilvus pastes ids unescaped: an id with a quote would break
    or widen the expression)."""
    return '"' + text.translate(_ESCAPES) + '"'


def id_filter(ids: Iterable[str], negate: bool = False) -> str:
    return f"{ID} {'not in' if negate else 'in'} [{', '.join(literal(i) for i in ids)}]"


def both(*exprs: str | None) -> str:
    """The conjunction of the given expressions (None and empty ones left out)."""
    parts = [f"({e})" for e in exprs if e]
    return " and ".join(parts)


@dataclass(frozen=True)
class Version:
    """The committed state of the collection: version, gallery size, parameter fingerprint."""

    version: int
    size: int
    fingerprint: str


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    entity: dict[str, Any]


class RemoteStore:
    """One Milvus connection and the collections of one prefix; every call may raise
    :class:`BackendUnavailable` (the API answers 503)."""

    def __init__(
        self,
        uri: str,
        token: str | None,
        prefix: str,
        dim: int,
        *,
        index: str = "flat",
        fingerprint: str = "",
    ) -> None:
        if not _NAME.match(prefix):
            raise ValueError(
                f"invalid Milvus collection prefix {prefix!r}: letters, digits and '_', "
                "not starting with a digit"
            )
        self.uri, self.prefix, self.dim, self.index = uri, prefix, dim, index
        self.fingerprint = fingerprint
        if "://" not in uri:  # a milvus-lite file: its folder must exist
            Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MilvusClient(uri=uri, token=token or "")
        except MilvusException as exc:
            raise BackendUnavailable(f"Milvus at {uri}: {exc}") from exc

    def name(self, view: str) -> str:
        return f"{self.prefix}_{view}"

    # --- collections ----------------------------------------------------------------------

    def ensure(self, views: Sequence[str]) -> None:
        """Create the missing collections (the views' and the state's) and load them."""
        with _unavailable("creating collections"):
            for view in views:
                self._ensure(self.name(view), self._row_schema(), self.dim + 5, self.index)
            self._ensure(self.name("state"), self._state_schema(), 2, "flat")

    def exists(self) -> bool:
        with _unavailable("describing collections"):
            return bool(self.client.has_collection(self.name("state")))

    def load(self, views: Sequence[str]) -> None:
        with _unavailable("loading collections"):
            for name in [*(self.name(v) for v in views), self.name("state")]:
                self.client.load_collection(name)

    def _row_schema(self) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim + 5)
        schema.add_field(METADATA, DataType.JSON)
        schema.add_field(SEQ, DataType.INT64)
        return schema

    @staticmethod
    def _state_schema() -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(KEY, DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field(VALUE, DataType.JSON)
        schema.add_field(SEQ, DataType.INT64)
        schema.add_field(DUMMY, DataType.FLOAT_VECTOR, dim=2)
        return schema

    def _ensure(self, name: str, schema: Any, dim: int, index: str) -> None:
        if self.client.has_collection(name):
            fields = {f["name"]: f for f in self.client.describe_collection(name)["fields"]}
            vector = fields.get(VECTOR if VECTOR in fields else DUMMY, {})
            if int(vector.get("params", {}).get("dim", -1)) != dim:
                raise BackendUnavailable(
                    f"Milvus collection {name} has another vector dimension than {dim}: "
                    "drop it or choose another HUBLESS_MILVUS_COLLECTION"
                )
            self.client.load_collection(name)
            return
        index_type, build = _INDEXES[index]
        field = VECTOR if dim == self.dim + 5 else DUMMY
        params = self.client.prepare_index_params()
        params.add_index(field_name=field, index_type=index_type, metric_type="IP", params=build)
        self.client.create_collection(
            name, schema=schema, index_params=params, consistency_level="Strong"
        )
        self.client.load_collection(name)

    def drop(self) -> None:
        """Drop every collection of the prefix (tests, and rebuilding from scratch)."""
        with _unavailable("dropping collections"):
            for view in (ORIGINAL, INVGC, "state"):
                if self.client.has_collection(self.name(view)):
                    self.client.drop_collection(self.name(view))

    # --- gallery rows -----------------------------------------------------------------------

    def upsert_rows(
        self,
        view: str,
        ids: Sequence[str],
        coords: np.ndarray,
        metadata: Sequence[Any],
        seq: int,
    ) -> None:
        """Rows ``ids[i] -> coords[i]`` ((n, d+5) float32 ``[g, stat(g)]``), each item's metadata
        (any JSON value or None) and the version ``seq`` that writes them."""
        coords = np.ascontiguousarray(coords, dtype=np.float32)
        with _unavailable("writing gallery rows"):
            for start in range(0, len(ids), WRITE_BATCH):
                stop = min(len(ids), start + WRITE_BATCH)
                rows = [
                    {ID: ids[i], VECTOR: coords[i], METADATA: {"v": metadata[i]}, SEQ: seq}
                    for i in range(start, stop)
                ]
                self.client.upsert(self.name(view), rows)

    def delete_rows(self, view: str, ids: Sequence[str]) -> None:
        with _unavailable("deleting gallery rows"):
            for start in range(0, len(ids), FILTER_BATCH):
                part = ids[start : start + FILTER_BATCH]
                self.client.delete(self.name(view), filter=id_filter(part))

    def get_rows(
        self, view: str, ids: Sequence[str], fields: Sequence[str], expr: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """The stored ``fields`` of those ``ids`` that exist (and pass ``expr``), by id."""
        out: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(ids))
        with _unavailable("reading gallery rows"):
            for start in range(0, len(unique), FILTER_BATCH):
                part = unique[start : start + FILTER_BATCH]
                rows = self.client.query(
                    self.name(view),
                    filter=both(id_filter(part), expr),
                    output_fields=[ID, *fields],
                    limit=len(part),
                )
                out.update((row[ID], row) for row in rows)
        return out

    def vectors(
        self, view: str, ids: Sequence[str], expr: str | None = None
    ) -> dict[str, np.ndarray]:
        """The stored (d+5,) float32 rows of those ``ids`` that exist."""
        rows = self.get_rows(view, ids, [VECTOR], expr)
        return {i: np.asarray(r[VECTOR], dtype=np.float32) for i, r in rows.items()}

    def search(
        self,
        view: str,
        vectors: np.ndarray,
        limit: int,
        expr: str | None = None,
        output_fields: Sequence[str] = (),
    ) -> list[list[Hit]]:
        """Inner-product top-``limit`` of each (m, d+5) vector (best first; ties as Milvus
        orders them, the same for every process)."""
        out: list[list[Hit]] = []
        if limit <= 0 or not len(vectors):
            return [[] for _ in range(len(vectors))]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with _unavailable("searching"):
            for start in range(0, len(vectors), SEARCH_BATCH):
                found = self.client.search(
                    self.name(view),
                    data=[v for v in vectors[start : start + SEARCH_BATCH]],
                    limit=min(limit, MAX_LIMIT),
                    filter=expr or "",
                    output_fields=list(output_fields),
                    search_params={"metric_type": "IP"},
                    anns_field=VECTOR,
                )
                for hits in found:
                    out.append(
                        [
                            Hit(str(h["id"]), float(h["distance"]), dict(h.get("entity") or {}))
                            for h in hits
                        ]
                    )
        return out

    def query(
        self,
        view: str,
        expr: str,
        fields: Sequence[str],
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows passing ``expr`` (a page with ``offset``/``limit``, else all of them: paged)."""
        with _unavailable("querying"):
            if limit is not None and offset + limit <= MAX_LIMIT:
                return list(
                    self.client.query(
                        self.name(view),
                        filter=expr,
                        output_fields=[ID if view != "state" else KEY, *fields],
                        offset=offset,
                        limit=limit,
                    )
                )
            rows: list[dict[str, Any]] = []
            skipped = 0
            for batch in self.iterate(view, expr, fields):
                if skipped + len(batch) <= offset:
                    skipped += len(batch)
                    continue
                rows.extend(batch[max(0, offset - skipped) :])
                skipped = offset
                if limit is not None and len(rows) >= limit:
                    return rows[:limit]
            return rows

    def iterate(
        self, view: str, expr: str, fields: Sequence[str], batch_size: int = 4096
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row passing ``expr``, in batches (one batch in memory at a time)."""
        key = KEY if view == "state" else ID
        with _unavailable("reading rows"):
            iterator = self.client.query_iterator(
                self.name(view), batch_size=batch_size, filter=expr, output_fields=[key, *fields]
            )
            try:
                while batch := iterator.next():
                    yield batch
            finally:
                iterator.close()

    def count(self, view: str, expr: str = "") -> int:
        with _unavailable("counting rows"):
            rows = self.client.query(self.name(view), filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- shared state -----------------------------------------------------------------------

    def put_state(self, key: str, value: Any, seq: int = 0) -> None:
        self.put_states([(key, value)], seq)

    def put_states(self, items: Sequence[tuple[str, Any]], seq: int = 0) -> None:
        with _unavailable("writing shared state"):
            for start in range(0, len(items), 64):
                rows = [
                    {KEY: k, VALUE: v, SEQ: seq, DUMMY: [0.0, 0.0]}
                    for k, v in items[start : start + 64]
                ]
                self.client.upsert(self.name("state"), rows)

    def get_state(self, key: str) -> Any | None:
        with _unavailable("reading shared state"):
            rows = self.client.query(
                self.name("state"),
                filter=f"{KEY} == {literal(key)}",
                output_fields=[VALUE],
                limit=1,
            )
        return rows[0][VALUE] if rows else None

    def states(self, expr: str) -> list[dict[str, Any]]:
        """State rows (``key``, ``value``, ``seq``) passing ``expr``."""
        with _unavailable("reading shared state"):
            rows: list[dict[str, Any]] = []
            for batch in self.iterate("state", expr, [VALUE, SEQ], batch_size=256):
                rows.extend(batch)
            return rows

    def delete_states(self, expr: str) -> None:
        with _unavailable("deleting shared state"):
            self.client.delete(self.name("state"), filter=expr)

    def version(self) -> Version | None:
        value = self.get_state("version")
        if value is None:
            return None
        return Version(int(value["version"]), int(value["size"]), str(value["fingerprint"]))

    def set_version(self, version: int, size: int) -> None:
        """Commit ``version`` (readers adopt it at their next poll)."""
        value = {"version": version, "size": size, "fingerprint": self.fingerprint}
        self.put_state("version", value, version)

    def put_bank_state(
        self,
        view: str,
        bank: str,
        ids_matrix: np.ndarray,
        sims_matrix: np.ndarray,
        seq: int = 0,
        chunks: Iterable[int] | None = None,
    ) -> None:
        """Each bank item's top-k gallery ids (object array, None where the gallery has fewer
        than k items) and similarities ((N, k) float32), as rows of :data:`BANK_CHUNK` bank
        items; ``chunks``: only those chunk numbers (the ones a change touched). ``seq``: the
        version these rows belong to (readers at an older version reload rows newer than it;
        a process that starts reads them all)."""
        n = ids_matrix.shape[0]
        numbers = range((n + BANK_CHUNK - 1) // BANK_CHUNK) if chunks is None else sorted(chunks)
        items = []
        for chunk in numbers:
            rows = slice(chunk * BANK_CHUNK, min(n, (chunk + 1) * BANK_CHUNK))
            value = {
                "n": n,
                "ids": ids_matrix[rows].tolist(),
                "sims": np.asarray(sims_matrix[rows], np.float64).tolist(),
            }
            items.append((bank_key(view, bank, chunk), value))
        self.put_states(items, seq)

    def bank_chunks(self, since: int = -1) -> list[tuple[str, str, int, dict[str, Any]]]:
        """(view, bank, chunk, value) of the bank-state rows written after version ``since``."""
        rows = self.states(both(f'{KEY} like "bank:%"', f"{SEQ} > {since}"))
        out = []
        for row in rows:
            _, view, bank, chunk = row[KEY].split(":")
            out.append((view, bank, int(chunk), row[VALUE]))
        return out


def bank_key(view: str, bank: str, chunk: int) -> str:
    return f"bank:{view}:{bank}:{chunk:06d}"


@contextmanager
def _unavailable(doing: str) -> Iterator[None]:
    """Milvus errors as :class:`BackendUnavailable` (the API's 503), naming what was being done."""
    try:
        yield
    except MilvusException as exc:
        raise BackendUnavailable(f"Milvus failed while {doing}: {exc}") from exc
