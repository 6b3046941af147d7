"""Milvus backend: one view's bias-augmented gallery in a Milvus collection, synced by diffs.

Each row is stored once as ``[g, stat(g)]`` (d+5 float32, metric IP), keyed by its gallery id,
so one exact (FLAT) inner-product search with ``[w·q, c(q)]`` serves every method; HNSW and
IVF_FLAT are options for galleries too big for brute force (they are approximate).
``MilvusClient("path/file.db")`` runs an embedded milvus-lite; ``http://host:19530`` a server.

Sync: the engine builds a backend per gallery state, passing the previous one. The backend
computes the ids that left and the ids that arrived or whose row changed; :meth:`commit` (which
the engine calls once the change log accepted the change) deletes and upserts them, and never
rewrites unchanged rows. A backend built without a usable predecessor (startup, another
replica) *reconciles* when committed: it reads ``(id, digest)`` of every stored row and writes
only what differs, so a restart on an up-to-date collection writes nothing. Diffs start from the
view the collection actually holds (the last backend that committed), not blindly from
``previous``: a state committed but never adopted by the engine (its change-log transaction
failed) is still accounted for. A failed sync marks the collection dirty and the next backend
reconciles instead of trusting a diff.

Milvus is shared, mutable state, unlike the engine's copy-on-write snapshots: a search still
running on the previous state while a change is written can see the new rows (see
docs/milvus.md). Results are mapped to rows through the ids this backend was built with; ids it
does not know (written after it) are skipped, which is why searches over-fetch a little.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from service.algorithms import GalleryView, QueryPlan, top1_raw
from service.algorithms import search as exact_search
from service.algorithms.augment import EXTRA_DIMS, plan_coordinates, view_coordinates
from service.backends.base import BackendUnavailable, Mask, Ranked, RawTop1, SearchBackend

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "hubless"
DEFAULT_URI = "var/milvus.db"
ViewKind = Literal["original", "invgc"]
IndexKind = Literal["flat", "hnsw", "ivf_flat"]

ID_FIELD, VECTOR_FIELD, DIGEST_FIELD, METADATA_FIELD = "id", "vector", "digest", "metadata"
#: Gallery ids are at most 512 characters (API); 4 bytes each in UTF-8 at worst.
MAX_ID_BYTES = 2048
#: Milvus's largest top-k.
MAX_LIMIT = 16384
#: Rows per insert/delete request and queries per search request: keeps gRPC messages small.
WRITE_BATCH = 4096
SEARCH_BATCH = 256
#: Ids per delete or get request: each becomes a quoted literal in one filter expression.
FILTER_BATCH = 1024

#: Most ids one search's filter expression lists; beyond, the backend ranks the filtered rows
#: with the exact scan of its in-memory view (same result; Milvus parses long lists slowly).
MAX_FILTER_IDS = 16 * FILTER_BATCH

#: A stored row this close to the computed one (float32 recomputation noise) is left alone.
RECONCILE_ATOL = 1e-6

_INDEXES: dict[str, tuple[str, dict[str, int]]] = {
    "flat": ("FLAT", {}),
    "hnsw": ("HNSW", {"M": 16, "efConstruction": 200}),
    "ivf_flat": ("IVF_FLAT", {"nlist": 1024}),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")


# --- clients and collections (shared with the export command) ----------------------------------

_clients: dict[tuple[str, str], MilvusClient] = {}
_clients_lock = threading.Lock()


def milvus_client(uri: str, token: str | None = None) -> MilvusClient:
    """One client per (uri, token) per process: milvus-lite starts a server per file, and a
    client per gallery change would reconnect each time. Local paths get their folder made."""
    key = (uri, token or "")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if "://" not in uri:
                Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
            client = MilvusClient(uri=uri, token=token or "")
            _clients[key] = client
        return client


def collection_name(prefix: str, kind: ViewKind) -> str:
    """``<prefix>_original`` or ``<prefix>_invgc``: one collection per view."""
    if not _NAME.match(prefix):
        raise ValueError(
            f"invalid Milvus collection prefix {prefix!r}: letters, digits and '_', "
            "not starting with a digit"
        )
    return f"{prefix}_{kind}"


def row_digests(coords: np.ndarray) -> np.ndarray:
    """(n,) int64 fingerprint of each augmented row's float32 bits, stored next to the vector so
    that a reconcile finds out-of-date rows without reading vectors back. Exact: a row whose
    recomputation differs in the last bit is rewritten (costs a write, never correctness)."""
    bits = np.ascontiguousarray(coords, dtype=np.float32).view(np.uint32).astype(np.uint64)
    mixed = (bits + np.uint64(1)) * _digest_weights(coords.shape[1])  # wraps modulo 2^64
    return mixed.sum(axis=1, dtype=np.uint64).view(np.int64)


@lru_cache(maxsize=8)
def _digest_weights(dim: int) -> np.ndarray:
    """Odd random multipliers: a linear hash of the coordinates' bits modulo 2^64."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(1, 2**63, size=dim, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def ensure_collection(
    client: MilvusClient,
    name: str,
    dim: int,
    index: IndexKind = "flat",
    consistency: str = "Strong",
) -> None:
    """Create (or, if its schema no longer fits, drop and recreate) the collection and load it.

    The collection is derived data (rebuildable from the gallery), so an incompatible one (other
    dimension, fields or index) is replaced, with a warning, rather than failing startup.
    """
    index_type, build = _INDEXES[index]
    if client.has_collection(name):
        if _compatible(client, name, dim, index_type):
            client.load_collection(name)
            return
        log.warning("replacing incompatible Milvus collection", extra={"collection": name})
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(DIGEST_FIELD, DataType.INT64)
    schema.add_field(METADATA_FIELD, DataType.JSON, nullable=True)
    params = client.prepare_index_params()
    params.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type="IP", params=build)
    client.create_collection(
        name, schema=schema, index_params=params, consistency_level=consistency
    )


def _compatible(client: MilvusClient, name: str, dim: int, index_type: str) -> bool:
    fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
    vector = fields.get(VECTOR_FIELD, {})
    if set(fields) != {ID_FIELD, VECTOR_FIELD, DIGEST_FIELD, METADATA_FIELD}:
        return False
    if int(vector.get("params", {}).get("dim", -1)) != dim:
        return False
    try:
        described = client.describe_index(name, VECTOR_FIELD)
    except Exception:  # no index yet: pymilvus raises its own error type
        return False
    return bool(described) and described.get("index_type") == index_type


def upsert_rows(
    client: MilvusClient,
    name: str,
    ids: Iterable[str],
    coords: np.ndarray,
    metadata: Iterable[Any] | None = None,
) -> int:
    """Upsert rows ``ids[i] -> coords[i]`` (n, d+5) in batches; metadata is optional JSON."""
    ids = list(ids)
    meta = list(metadata) if metadata is not None else None
    digests = row_digests(coords)
    for start in range(0, len(ids), WRITE_BATCH):
        stop = min(len(ids), start + WRITE_BATCH)
        rows = [
            {ID_FIELD: ids[i], VECTOR_FIELD: coords[i], DIGEST_FIELD: int(digests[i])}
            for i in range(start, stop)
        ]
        if meta is not None:
            for row, value in zip(rows, meta[start:stop], strict=True):
                row[METADATA_FIELD] = value
        client.upsert(name, rows)
    return len(ids)


def delete_ids(client: MilvusClient, name: str, ids: list[str]) -> int:
    for start in range(0, len(ids), FILTER_BATCH):
        client.delete(name, filter=id_filter(ids[start : start + FILTER_BATCH]))
    return len(ids)


def id_filter(ids: Iterable[str]) -> str:
    """A boolean expression selecting ``ids``, every id quoted safely.

    Not ``client.delete(ids=...)``: pymilvus pastes ids between single quotes unescaped, so an
    id containing a quote breaks the expression (or widens it). Expression templates
    (``filter_params``) would be the alternative, but milvus-lite does not parse them.
    """
    return f"{ID_FIELD} in [{', '.join(_literal(i) for i in ids)}]"


def _literal(text: str) -> str:
    # Milvus string literals: backslash escapes for these; other characters may appear raw
    return '"' + text.translate(_ESCAPES) + '"'


_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r"}


def stored_vectors(client: MilvusClient, name: str, ids: list[str]) -> dict[str, np.ndarray]:
    """The stored vectors of some ids (those missing are absent from the result)."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), FILTER_BATCH):
        part = ids[start : start + FILTER_BATCH]
        rows = client.query(
            name, filter=id_filter(part), output_fields=[VECTOR_FIELD], limit=len(part)
        )
        out.update((row[ID_FIELD], np.asarray(row[VECTOR_FIELD], np.float32)) for row in rows)
    return out


def stored_digests(client: MilvusClient, name: str) -> dict[str, int]:
    """Every stored row's id and digest (no vectors)."""
    out: dict[str, int] = {}
    for batch in iter_stored(client, name):
        out.update((row[ID_FIELD], int(row[DIGEST_FIELD])) for row in batch)
    return out


def iter_stored(
    client: MilvusClient, name: str, fields: tuple[str, ...] = (ID_FIELD, DIGEST_FIELD)
) -> Iterator[list[dict]]:
    """Every stored row's ``fields``, in batches from a query iterator: a pass over a huge
    collection (the export's leftover check) holds one batch, not every id."""
    iterator = client.query_iterator(
        name, batch_size=WRITE_BATCH * 4, output_fields=list(fields), filter=""
    )
    try:
        while batch := iterator.next():
            yield batch
    finally:
        iterator.close()


# --- the backend -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Collection:
    """A collection shared by a chain of backends (one per gallery state of one view)."""

    client: MilvusClient
    name: str
    kind: ViewKind
    dim: int
    #: the collection exists (made by the first commit; a reader never makes it)
    created: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a sync failed half-way: the next backend must reconcile, not trust the diff
    dirty: bool = False
    #: the backend whose view the collection holds (its last successful sync). Usually the
    #: engine's current one; if that state was never adopted (e.g. the change log append
    #: failed after Milvus was written) it is not the next backend's ``previous``.
    synced: weakref.ref[MilvusBackend] | None = None

    def base(self) -> MilvusBackend | None:
        """What a diff must start from: the view Milvus holds, if it is known."""
        if self.dirty or self.synced is None:
            return None
        return self.synced()


#: (uri, prefix, read_only) -> live collections by view kind, to tell the original view from the
#: InvGC one. Readers claim apart from writers: a read-only engine in the same process as the
#: writer (an embedded reader, tests) writes nothing, so it cannot overwrite the writer's rows.
_live: dict[tuple[str, str, bool], dict[str, weakref.ref[_Collection]]] = {}
_live_lock = threading.Lock()


@dataclass(frozen=True)
class SyncReport:
    """What one backend construction wrote: ``mode`` is "diff", "reconcile" or "none"."""

    mode: str
    upserted: int
    deleted: int
    seconds: float


class MilvusBackend(SearchBackend):
    """Search one gallery view stored in Milvus; keeps the collection in sync with the view.

    Options (settings ``HUBLESS_MILVUS_*``): uri (a milvus-lite file or ``http://host:19530``),
    token, collection (the prefix: ``<prefix>_original`` / ``<prefix>_invgc``), index
    (flat | hnsw | ivf_flat), consistency (Milvus level for searches, default Strong),
    read_only (search only; a writer keeps the collection in sync), kind (original | invgc |
    auto: by construction order, see :meth:`_claim`), fetch_slack (extra hits asked for up
    front, saving a second request when unknown ids are skipped), ef / nprobe (HNSW / IVF
    search breadth).
    """

    name = "milvus"
    tombstones = False  # the collection is keyed by id and synced from whole views

    def __init__(
        self,
        view: GalleryView,
        ids: tuple[str, ...],
        previous: SearchBackend | None = None,
        *,
        uri: str = DEFAULT_URI,
        token: str | None = None,
        collection: str = DEFAULT_PREFIX,
        index: IndexKind = "flat",
        consistency: str = "Strong",
        read_only: bool = False,
        kind: ViewKind | Literal["auto"] = "auto",
        fetch_slack: int = 0,
        ef: int = 128,
        nprobe: int = 32,
    ) -> None:
        super().__init__(view, ids, previous)
        if index not in _INDEXES:
            raise ValueError(f"unknown Milvus index {index!r}; expected one of {list(_INDEXES)}")
        self.index: IndexKind = index
        self.consistency = consistency
        self.read_only = read_only
        self.fetch_slack = int(fetch_slack)
        self._ef, self._nprobe = int(ef), int(nprobe)
        dim = view.embeddings.shape[1] + EXTRA_DIMS
        self._index_options = (index, consistency)
        chained = (
            isinstance(previous, MilvusBackend)
            and previous._collection.dim == dim
            and previous._key == (uri, collection)
            and kind in ("auto", previous._collection.kind)
        )
        self._key = (uri, collection)
        self._claim_key = (uri, collection, read_only)
        if chained:
            assert isinstance(previous, MilvusBackend)
            self._collection = previous._collection
        else:
            client = milvus_client(uri, token)
            view_kind = self._claim(kind)
            name = collection_name(collection, view_kind)
            if read_only:
                if client.has_collection(name):
                    client.load_collection(name)
                else:  # a reader may start before the writer: searches fail until it exists
                    log.warning("milvus collection does not exist yet", extra={"collection": name})
            self._collection = _Collection(client, name, view_kind, dim, created=read_only)
            self._register()
        #: the diff against the view Milvus holds now (None: reconcile at commit), and that base
        self._base = self._collection.base() if chained and not read_only else None
        self._difference = None if self._base is None else self._diff(self._base)
        #: what :meth:`commit` wrote (None until then); a reader writes nothing
        self.sync: SyncReport | None = SyncReport("none", 0, 0, 0.0) if read_only else None

    def commit(self) -> None:
        """Write the difference computed at construction (or reconcile), once; a failure marks
        the collection dirty, so the next backend reconciles."""
        if self.sync is not None:
            return
        started = time.perf_counter()
        handle = self._collection
        if not handle.created:
            try:
                ensure_collection(handle.client, handle.name, handle.dim, *self._index_options)
            except MilvusException as exc:
                raise BackendUnavailable(f"Milvus collection {handle.name!r}: {exc}") from exc
            handle.created = True
        base = handle.base()
        if base is not None and base is not self._base:  # another state was committed since
            self._base, self._difference = base, self._diff(base)
        difference = self._difference if base is not None else None
        if difference is None:
            self.sync = self._write(self._reconcile, "reconcile", started)
        else:
            self.sync = self._write(lambda: self._apply(*difference), "diff", started)
        self._base = self._difference = None  # holding the previous backend would chain them all

    # --- which collection --------------------------------------------------------------------

    def _claim(self, kind: ViewKind | Literal["auto"]) -> ViewKind:
        """The view kind of a backend built without a predecessor.

        The engine builds a state's original-view backend first, then (InvGC on) the adjusted
        one, with nothing telling them apart; so "auto" takes ``original`` unless a live
        collection chain of this process already holds it, then ``invgc``. Two live engines on
        one prefix would overwrite each other's collections anyway, so a third claim fails.
        Read-only backends claim among themselves (a reader may share a process with the writer).
        """
        if kind != "auto":
            return kind
        with _live_lock:
            live = _live.get(self._claim_key, {})
            for candidate in ("original", "invgc"):
                ref = live.get(candidate)
                if ref is None or ref() is None:
                    return candidate  # type: ignore[return-value]
        raise RuntimeError(
            f"two live engines use the Milvus collection prefix {self._key[1]!r} on {self._key[0]}"
            "; give each its own HUBLESS_MILVUS_COLLECTION"
        )

    def _register(self) -> None:
        with _live_lock:
            self_ref = weakref.ref(self._collection)
            _live.setdefault(self._claim_key, {})[self._collection.kind] = self_ref

    @property
    def collection_name(self) -> str:
        return self._collection.name

    # --- sync --------------------------------------------------------------------------------

    def _write(self, apply: Callable[[], tuple[int, int]], mode: str, started: float) -> SyncReport:
        """Run one sync under the collection's lock; a failure leaves it marked dirty."""
        handle = self._collection
        with handle.lock:
            try:
                upserted, deleted = apply()
            except MilvusException as exc:
                handle.dirty = True
                raise BackendUnavailable(f"Milvus write to {handle.name!r} failed: {exc}") from exc
            except BaseException:
                handle.dirty = True
                raise
            handle.dirty = False
            handle.synced = weakref.ref(self)
        report = SyncReport(mode, upserted, deleted, round(time.perf_counter() - started, 4))
        log.info(
            "milvus collection synced",
            extra={"collection": handle.name, "size": len(self.ids), **report.__dict__},
        )
        return report

    def _diff(self, previous: MilvusBackend) -> tuple[np.ndarray, list[str]]:
        """(rows to upsert, ids to delete): ids that arrived or whose row changed, and ids that
        left, relative to ``previous``, the backend whose view the collection holds."""
        before = previous._rows
        removed = [i for i in previous.ids if i not in self._rows]
        write: list[int] = []
        common_now: list[int] = []
        common_before: list[int] = []
        for row, item_id in enumerate(self.ids):
            old = before.get(item_id)
            if old is None:
                write.append(row)
            else:
                common_now.append(row)
                common_before.append(old)
        changed = _changed_rows(
            self.view,
            np.asarray(common_now, np.int64),
            previous.view,
            np.asarray(common_before, np.int64),
        )
        return np.sort(np.concatenate([np.asarray(write, np.int64), changed])), removed

    def _apply(self, rows: np.ndarray, removed: list[str]) -> tuple[int, int]:
        return self._upsert(rows), self._delete(removed)

    def _reconcile(self) -> tuple[int, int]:
        """Make the stored collection equal the view, reading ids and digests, and vectors only
        of rows whose digest differs (a recomputation elsewhere, e.g. by ``hubless export``,
        may differ in the last bits: such rows are close enough and are left alone)."""
        handle = self._collection
        stored = stored_digests(handle.client, handle.name)
        stale: list[np.ndarray] = [np.empty(0, np.int64)]
        for rows in _row_chunks(len(self.ids)):
            coords = view_coordinates(self.view, rows)
            ids = self.ids[rows.start : rows.stop]
            digests = row_digests(coords)
            suspect = [
                j for j, (i, h) in enumerate(zip(ids, digests, strict=True)) if stored.get(i) != h
            ]
            vectors = stored_vectors(handle.client, handle.name, [ids[j] for j in suspect])
            far = [
                j
                for j in suspect
                if ids[j] not in vectors
                or not np.allclose(vectors[ids[j]], coords[j], rtol=0, atol=RECONCILE_ATOL)
            ]
            stale.append(np.asarray(far, np.int64) + rows.start)
        removed = [i for i in stored if i not in self._rows]
        return self._upsert(np.concatenate(stale)), self._delete(removed)

    def _upsert(self, rows: np.ndarray) -> int:
        handle = self._collection
        for start in range(0, len(rows), WRITE_BATCH):
            part = rows[start : start + WRITE_BATCH]
            ids = [self.ids[r] for r in part]
            upsert_rows(handle.client, handle.name, ids, view_coordinates(self.view, part))
        return len(rows)

    def _delete(self, ids: list[str]) -> int:
        return delete_ids(self._collection.client, self._collection.name, ids)

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self.ids)}

    # --- searching ---------------------------------------------------------------------------

    def _ranked(
        self, queries: np.ndarray, plan: QueryPlan, k: int, allowed: Mask, raw: RawTop1 | None
    ) -> Ranked:
        coords = plan_coordinates(plan, queries.astype(np.float32, copy=False))
        if allowed is not None:
            k = min(k, int(np.count_nonzero(allowed)))
        if k <= 0:
            m = queries.shape[0]
            return np.empty((m, 0), np.int64), np.empty((m, 0), np.float64)
        expression = self._allowed_filter(allowed)
        if expression is None:  # too many ids for one expression: the same ranking, scanned here
            assert allowed is not None
            return exact_search(queries, self.view, plan, k, allowed=allowed)
        hits = self._known_hits(coords, k, expression)
        width = min((len(rows) for rows, _ in hits), default=0)  # rectangular: fewest known
        rows = np.array([r[:width] for r, _ in hits], np.int64).reshape(len(hits), width)
        scores = np.array([d[:width] for _, d in hits], np.float64).reshape(len(hits), width)
        return rows, scores + plan.offsets[:, None]

    def _raw_top1(self, queries: np.ndarray) -> RawTop1:
        zeros = np.zeros((queries.shape[0], EXTRA_DIMS), queries.dtype)
        coords = np.hstack([queries, zeros]).astype(np.float32, copy=False)
        best = np.array([r[0] if r else -1 for r, _ in self._known_hits(coords, 1)], np.int64)
        lost = best < 0  # every hit was unknown to this state: answer from the local view
        if lost.any():
            best[lost] = top1_raw(queries[lost], self.view.embeddings)
        return RawTop1(best)

    def _allowed_filter(self, allowed: np.ndarray | None) -> str | None:
        """A metadata filter's rows as a Milvus boolean expression on the primary key: the
        allowed ids, or (when they are most of the gallery) ``not in`` the others; None when
        that list would exceed :data:`MAX_FILTER_IDS`. The metadata is matched by the service
        (one matcher for every backend, so results agree exactly); the service's collections
        hold vectors and digests, not the metadata."""
        if allowed is None or allowed.all():
            return ""
        ids = np.asarray(self.ids, dtype=object)
        passing = int(np.count_nonzero(allowed))
        if min(passing, allowed.size - passing) > MAX_FILTER_IDS:
            return None
        if 2 * passing <= allowed.size:
            return id_filter(ids[allowed].tolist())
        return id_filter(ids[~allowed].tolist()).replace(" in [", " not in [", 1)

    def _known_hits(
        self, coords: np.ndarray, k: int, expression: str = ""
    ) -> list[tuple[list[int], list[float]]]:
        """Per query, the rows and inner products of its best hits that this backend's ids
        include (at most k, best first). Unknown ids (written after this backend) are skipped;
        a query left short while more hits exist is asked again with twice the limit."""
        want = min(k, len(self.ids))
        if want > MAX_LIMIT:
            raise ValueError(f"Milvus returns at most {MAX_LIMIT} hits; asked for {want}")
        out: list[tuple[list[int], list[float]]] = [([], [])] * coords.shape[0]
        pending = np.arange(coords.shape[0])
        limit = min(want + self.fetch_slack, MAX_LIMIT)
        while pending.size:
            short = []
            found = self._raw_search(coords[pending], limit, expression)
            for query, hits in zip(pending, found, strict=True):
                known = [
                    (self._rows[h["id"]], h["distance"]) for h in hits if h["id"] in self._rows
                ]
                out[query] = ([r for r, _ in known[:want]], [d for _, d in known[:want]])
                if len(known) < want and len(hits) == limit < MAX_LIMIT:
                    short.append(query)
            pending, limit = np.asarray(short, np.int64), min(2 * limit, MAX_LIMIT)
        return out

    def _raw_search(
        self, coords: np.ndarray, limit: int, expression: str = ""
    ) -> Iterator[list[dict]]:
        handle = self._collection
        params: dict[str, object] = {"metric_type": "IP"}
        if self.index == "hnsw":
            params["params"] = {"ef": max(self._ef, limit)}
        elif self.index == "ivf_flat":
            params["params"] = {"nprobe": self._nprobe}
        for start in range(0, coords.shape[0], SEARCH_BATCH):
            try:
                hits = handle.client.search(
                    handle.name,
                    data=list(coords[start : start + SEARCH_BATCH]),
                    limit=limit,
                    filter=expression,
                    output_fields=[],
                    search_params=params,
                    consistency_level=self.consistency,
                )
            except MilvusException as exc:
                raise BackendUnavailable(f"Milvus search of {handle.name!r} failed: {exc}") from exc
            yield from hits


def _row_chunks(n: int, rows: int = 65536) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _changed_rows(
    view: GalleryView, rows: np.ndarray, before: GalleryView, before_rows: np.ndarray
) -> np.ndarray:
    """Of the pairs (rows[i] in ``view``, before_rows[i] in ``before``), the rows of ``view``
    whose embedding or stats differ (exact comparison, blocked to bound memory)."""
    changed: list[np.ndarray] = []
    for sl in _row_chunks(len(rows)):
        now, old = rows[sl], before_rows[sl]
        differs = (view.embeddings[now] != before.embeddings[old]).any(axis=1)
        differs |= (view.stats[now] != before.stats[old]).any(axis=1)
        changed.append(now[differs])
    return np.concatenate(changed) if changed else np.empty(0, np.int64)
