"""Peers side by side, in one run: the NNN authors' package, FAISS flat and a plain Milvus search
on the same matrices as this project's backends.

- ``nnn``: ``nnn-retrieval`` (the NNN authors' package, extra ``peers``; torch on CPU) ranks
  with ``NNNRanker(NNNRetriever(d), gallery, query_bank, alternate_ks=128,
  alternate_weight=0.75)``, the same bias as our ``nnn`` (``HUBLESS_NNN_TOPK`` = 128,
  ``HUBLESS_NNN_ALPHA`` = 0.75) on the exact backend. Rows: the share of identical top-10
  lists (each differing list is checked against float64 scores: a swap of two items whose
  exact scores lie within float32 rounding is a near tie, anything else is a disagreement),
  and the time ratio ours / theirs.
- ``faiss``: a plain ``faiss.IndexFlatIP`` against our exact backend, method ``raw``: same ids,
  time ratio.
- ``milvus``: a plain Milvus FLAT/IP collection of the gallery against our ``dualis`` served by
  :class:`~service.remote.engine.RemoteEngine` (Milvus as the system of record, one search of
  the bias-augmented collection), both on one milvus-lite file (the ``milvus`` extra): the
  ratio is a correctness stand-in, never a speed figure for a real server.

Data: the bundled demo (real WordNet/e5 vectors: 2,000 gallery items, 2 × 2,000 banks) and,
in the full run, 50,000 items made from the real vectors as ``bench_ann`` does (real banks and
queries); Milvus on the demo only (milvus-lite takes seconds per search at 50k).
Batches of 1 and 64 queries; the two timings of each ratio take turns (``interleaved_best``).
Timings run with one BLAS/OpenMP/torch thread per library (:func:`one_thread_each`): on two
cores shared with other work, thread pools that spin while they wait (OpenMP, OpenBLAS) measure
the neighbours' load more than the kernel (FAISS flat at batch 64 took 430–560 ms on two
threads and 31–80 ms on one, in the same minute). Our exact backend still runs its top-k
reductions on ``parallel_map``'s threads, as it does in service.

    python -m benchmarks.run --only peers           # about 2 minutes
    python -m benchmarks.run --only peers --quick   # a slice of the demo, seconds

A peer that is not installed is left out (a line on stderr says which and why).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench_ann import jittered
from benchmarks.bench_search import interleaved_best, method_search
from benchmarks.common import Row
from benchmarks.run import _OPENBLAS_THREADS, _loaded_openblas
from service.algorithms import (
    Banks,
    GalleryView,
    NormParams,
    check_embeddings,
    plan_for,
    prepare_items,
)
from service.backends import ExactBackend
from service.settings import DEMO_DIR

SECTION = "peers"
K = 10
NORM = NormParams()  # nnn_topk 128, nnn_alpha 0.75: the defaults of HUBLESS_NNN_TOPK / _ALPHA
LARGE = 50_000
#: Peer name -> the module that must be importable for it to run.
PEERS = {"nnn": "nnn", "faiss": "faiss", "milvus": "milvus_lite"}
#: Two float32 scores of unit vectors (d products, each rounded) may differ by about d·eps from
#: their float64 value; items within twice that of each other can swap places in float32.
NEAR_TIE = 2 * np.finfo(np.float32).eps


@dataclass(frozen=True)
class Matrices:
    """One gallery with its banks and queries, prepared as our backends see it."""

    label: str
    view: GalleryView
    banks: Banks
    queries: np.ndarray

    @property
    def gallery(self) -> np.ndarray:
        return self.view.embeddings

    @property
    def tie(self) -> float:
        return NEAR_TIE * self.gallery.shape[1]


def missing() -> dict[str, str]:
    """Peers that cannot run here, with the reason."""
    return {
        name: f"{module} is not installed (pip install -e '.[peers]')"
        for name, module in PEERS.items()
        if importlib.util.find_spec(module) is None
    }


def _demo(name: str, rows: int | None = None) -> np.ndarray:
    return check_embeddings(np.load(DEMO_DIR / name)[:rows].astype(np.float32), field=name)


def matrices(quick: bool) -> list[Matrices]:
    """The demo (a slice of it when ``quick``) and, in the full run, 50k from real vectors."""
    rows = 400 if quick else None
    banks = Banks(_demo("query_bank.npy", rows), _demo("gallery_bank.npy", rows))
    queries = _demo("queries.npy", 64 if quick else 1000)
    gallery = _demo("gallery.npy", rows)
    out = [_prepared(f"demo {gallery.shape[0]:,}", gallery, banks, queries)]
    if not quick:
        pool = np.concatenate([gallery, _demo("val_gallery.npy")])
        out.append(
            _prepared(f"{LARGE // 1000}k from real vectors", jittered(pool, LARGE), banks, queries)
        )
    return out


def _prepared(label: str, gallery: np.ndarray, banks: Banks, queries: np.ndarray) -> Matrices:
    return Matrices(label, prepare_items(gallery, banks, NORM, None).original, banks, queries)


# --- comparing top-k lists ----------------------------------------------------------------------


def agreement(
    ours: np.ndarray, theirs: np.ndarray, exact: Callable[[int, np.ndarray], np.ndarray], tie: float
) -> tuple[float, str]:
    """Share of top-k lists that agree up to float32 near ties, and what the others are.

    ``exact(query, rows)`` gives float64 scores of ``rows`` for one query. A differing list whose
    rank-by-rank float64 scores agree within ``tie`` only orders near-equal items differently
    (float32 rounding decides); a larger gap is a real disagreement, counted against the share.
    """
    same = (ours == theirs).all(axis=1)
    differing = np.flatnonzero(~same)
    gaps = [float(np.abs(exact(q, ours[q]) - exact(q, theirs[q])).max()) for q in differing]
    lists = f"{len(same)} top-{ours.shape[1]} lists"
    if not gaps:
        return 1.0, f"all {lists} identical"
    ties = sum(g <= tie for g in gaps)
    in_order = sum(set(ours[q]) == set(theirs[q]) for q in differing)
    detail = (
        f"{len(gaps)} of {lists} differ ({in_order} only in order), {ties} of them float32 near "
        f"ties (float64 scores rank by rank within {tie:.1e}); largest gap {max(gaps):.1e}"
    )
    return float(same.mean() + ties / len(same)), detail


def _raw64(data: Matrices) -> Callable[[int, np.ndarray], np.ndarray]:
    queries = data.queries.astype(np.float64)
    return lambda q, rows: data.gallery[rows].astype(np.float64) @ queries[q]


def _nnn64(data: Matrices) -> Callable[[int, np.ndarray], np.ndarray]:
    """Float64 NNN scores ``s(q, g) − α · mean top-k_{b∈BQ} s(b, g)`` of some rows."""
    bank = data.banks.query_bank.astype(np.float64)
    raw = _raw64(data)

    def scores(q: int, rows: np.ndarray) -> np.ndarray:
        sims = data.gallery[rows].astype(np.float64) @ bank.T
        top = -np.sort(-sims, axis=1)[:, : NORM.nnn_topk]
        return raw(q, rows) - NORM.nnn_alpha * top.mean(axis=1)

    return scores


_OPENBLAS_SET = tuple(name.replace("_get_", "_set_") for name in _OPENBLAS_THREADS)


@contextlib.contextmanager
def one_thread_each() -> Iterator[None]:
    """Every OpenBLAS mapped (numpy's, FAISS's), FAISS's OpenMP and torch on one thread; the
    previous counts are restored on exit (later benchmarks of the same run see no change)."""
    restore: list[Callable[[], object]] = []
    for lib in _loaded_openblas():
        handle = ctypes.CDLL(lib)
        for get, set_ in zip(_OPENBLAS_THREADS, _OPENBLAS_SET, strict=True):
            if hasattr(handle, get) and hasattr(handle, set_):
                before, setter = getattr(handle, get)(), getattr(handle, set_)
                setter(1)
                restore.append(lambda s=setter, n=before: s(n))
                break
    if "faiss" in sys.modules:
        faiss = sys.modules["faiss"]
        before_omp = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        restore.append(lambda: faiss.omp_set_num_threads(before_omp))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        before_torch = torch.get_num_threads()
        torch.set_num_threads(1)
        restore.append(lambda: torch.set_num_threads(before_torch))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def _plan64(data: Matrices, method: str) -> tuple[Callable[[int, np.ndarray], np.ndarray], float]:
    """Float64 scores of a static method from our stat columns, and its near-tie width: the
    float32 rounding of ``w·s`` (≈ d·eps) plus that of the bias term (≈ eps·|c·stat|)."""
    plan = plan_for(method, NORM, data.view, len(data.queries))
    queries, stats = data.queries.astype(np.float64), data.view.stats.astype(np.float64)
    bias = np.abs(stats) @ np.abs(plan.coefficients).max(axis=0)
    tie = abs(plan.weight) * data.tie + NEAR_TIE * float(bias.max())

    def scores(q: int, rows: np.ndarray) -> np.ndarray:
        sims = data.gallery[rows].astype(np.float64) @ queries[q]
        return plan.weight * sims + stats[rows] @ plan.coefficients[q] + plan.offsets[q]

    return scores, tie


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _ratio_rows(
    peer: str,
    method: str,
    data: Matrices,
    ours: Callable[[np.ndarray], object],
    theirs: Callable[[np.ndarray], object],
    quick: bool,
    goal: float,
    note: str = "",
) -> list[Row]:
    """ours / theirs time at batches 1 and 64, one thread each, the two timings taking turns."""
    rows = []
    for m in (1, 64):
        batch = data.queries[:m]
        with one_thread_each():
            best = interleaved_best(
                {"ours": lambda b=batch: ours(b), "theirs": lambda b=batch: theirs(b)},
                quick,
                rounds=3,
            )
        rows.append(
            Row(
                SECTION,
                f"{method} time ours / {peer}, batch {m}, {data.label}",
                best["ours"] / best["theirs"],
                "×",
                goal,
                detail=(
                    f"ours {_ms(best['ours'])}, {peer} {_ms(best['theirs'])}, 1 thread each{note}"
                ),
            )
        )
    return rows


def _identical_row(peer: str, method: str, data: Matrices, share: float, detail: str) -> Row:
    return Row(
        SECTION,
        f"{method} top-{K} lists equal up to float32 ties, ours vs {peer}, {data.label}",
        share,
        "",
        1.0,
        higher_is_better=True,
        detail=detail,
    )


# --- the peers ----------------------------------------------------------------------------------


def nnn_rows(data: Matrices, quick: bool) -> list[Row]:
    """Our ``nnn`` on the exact backend against ``nnn-retrieval``'s NNNRanker."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # its retriever shows a bar per search
    with contextlib.redirect_stdout(io.StringIO()):  # it prints which FAISS flavours are missing
        import nnn
    import torch

    started = time.perf_counter()
    ranker = nnn.NNNRanker(
        nnn.NNNRetriever(data.gallery.shape[1]),
        data.gallery,
        data.banks.query_bank,
        alternate_ks=NORM.nnn_topk,
        alternate_weight=NORM.nnn_alpha,
    )
    setup = time.perf_counter() - started
    note = f"; torch {torch.__version__}; its setup (NNN means only) {setup:.2f} s"
    search = lambda q: ranker.search(q, K)  # noqa: E731
    return against_exact("nnn-retrieval", "nnn", data, search, _nnn64(data), quick, 1.0, note)


def faiss_rows(data: Matrices, quick: bool) -> list[Row]:
    """A plain ``IndexFlatIP`` against our exact backend, method ``raw``."""
    import faiss

    index = faiss.IndexFlatIP(data.gallery.shape[1])
    index.add(data.gallery)
    # service.backends.faiss (imported here through bench_ann) sets 20, FAISS's long-standing
    # default; faiss-cpu 1.15 ships 128000 (every batch on its per-query scan)
    threshold = faiss.cvar.distance_compute_blas_threshold
    note = f"; faiss {faiss.__version__}, BLAS from {threshold} queries"
    search = lambda q: index.search(q, K)  # noqa: E731
    return against_exact("FAISS IndexFlatIP", "raw", data, search, _raw64(data), quick, 1.25, note)


def against_exact(
    peer: str,
    method: str,
    data: Matrices,
    theirs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    exact64: Callable[[int, np.ndarray], np.ndarray],
    quick: bool,
    goal: float,
    note: str,
) -> list[Row]:
    """Our exact backend's ``method`` against a peer's ``theirs(queries) -> (scores, rows)``:
    the agreement row (with how close the scores of identical lists are) and the time ratios."""
    exact = ExactBackend(data.view, tuple(map(str, range(data.view.size))))
    ours_rows, ours_scores = method_search(exact, data.queries, method, NORM, K)
    theirs_scores, theirs_rows = (np.asarray(a) for a in theirs(data.queries))
    share, detail = agreement(ours_rows, theirs_rows, exact64, data.tie)
    same = (ours_rows == theirs_rows).all(axis=1)
    diff = np.abs(ours_scores[same] - theirs_scores[same]).max(initial=0.0)
    return [
        _identical_row(peer, method, data, share, f"{detail}; their scores within {diff:.1e}"),
        *_ratio_rows(
            peer,
            method,
            data,
            lambda q: method_search(exact, q, method, NORM, K),
            theirs,
            quick,
            goal=goal,
            note=note,
        ),
    ]


def milvus_rows(data: Matrices, quick: bool) -> list[Row]:
    """A plain FLAT/IP Milvus search of the gallery against our :class:`RemoteEngine`'s
    ``dualis`` (Milvus as the system of record), both on one milvus-lite file."""
    from pymilvus import DataType, MilvusClient

    from service.remote.engine import RemoteEngine
    from service.remote.store import RemoteStore

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        n, d = data.gallery.shape
        store = RemoteStore(str(Path(tmp) / "peers.db"), None, "peers", d)
        client = store.client  # one client per milvus-lite file: the plain collection shares it
        try:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
            params = client.prepare_index_params()
            params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            client.create_collection("plain", schema=schema, index_params=params)
            for start in range(0, n, 4096):
                stop = min(n, start + 4096)
                rows = [{"id": i, "vector": data.gallery[i]} for i in range(start, stop)]
                client.insert("plain", rows)
            client.load_collection("plain")

            def plain(queries: np.ndarray) -> np.ndarray:
                hits = client.search(
                    "plain",
                    data=list(queries),
                    limit=K,
                    search_params={"metric_type": "IP"},
                    consistency_level="Strong",
                )
                return np.array([[h["id"] for h in hit] for hit in hits], np.int64)

            ids = tuple(map(str, range(n)))
            ours = RemoteEngine(store, data.banks, NORM, None, None, read_only=False)
            store.ensure(ours.views)
            ours.load_gallery(ids, data.gallery, [None] * n)
            ours.refresh()

            def remote_dualis(queries: np.ndarray) -> np.ndarray:
                found = ours.search(queries, k=K, method="dualis", invgc=False)
                return np.array([[int(i) for i in row] for row in found.ids], np.int64)

            exact = ExactBackend(data.view, ids)
            raw = _raw64(data)
            share, detail = agreement(
                plain(data.queries),
                method_search(exact, data.queries, "raw", NORM, K)[0],
                raw,
                data.tie,
            )
            dualis_share, dualis_detail = agreement(
                remote_dualis(data.queries),
                method_search(exact, data.queries, "dualis", NORM, K)[0],
                *_plan64(data, "dualis"),
            )
            ours_name = "dualis (RemoteEngine on Milvus)"
            note = "; milvus-lite: a correctness stand-in, not a Milvus server's speed"
            return [
                _identical_row("plain Milvus", "raw", data, share, detail),
                _identical_row("our exact backend", ours_name, data, dualis_share, dualis_detail),
                *_ratio_rows(
                    "plain Milvus raw",
                    ours_name,
                    data,
                    remote_dualis,
                    plain,
                    quick,
                    goal=1.05,
                    note=note,
                ),
            ]
        finally:
            client.close()  # its server and file go with tmp


RUNNERS: dict[str, Callable[[Matrices, bool], list[Row]]] = {
    "nnn": nnn_rows,
    "faiss": faiss_rows,
    "milvus": milvus_rows,
}


def measure(quick: bool) -> list[Row]:
    skipped = missing()
    for name, reason in skipped.items():
        print(f"# peers: {name} skipped: {reason}", file=sys.stderr)
    rows: list[Row] = []
    for index, data in enumerate(matrices(quick)):
        for name, run in RUNNERS.items():
            if name in skipped or (name == "milvus" and index > 0):  # milvus-lite: demo only
                continue
            rows += run(data, quick)
    return rows
