"""Metadata filters: the matcher against an obvious reference, and filtered searches equal to
the unfiltered full ranking restricted to the matching items, for every method, InvGC off and
on, on each single-node backend (exact, FAISS flat); the Milvus engine's filters:
tests/remote/test_filters.py."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    Banks,
    InvGCParams,
    NormParams,
    check_embeddings,
    prepare_items,
)
from service.backends import backend_factory
from service.engine.engine import Engine
from service.engine.filters import allowed_rows, compile_filter
from service.settings import DEMO_DIR

N_GALLERY, N_BANK, N_QUERIES, K = 160, 300, 6, 10
#: float32 sums of d = 384 unit-vector products (and a few stat terms) are off by at most
#: (d + 8)·eps times the magnitude; FAISS's selector path sums in another order than its plain
#: search, so two results may differ by twice that (see tests/api/test_exactness.py)
UNIT = 2 * (384 + 8) * float(np.finfo(np.float32).eps)


def _demo(name: str, rows: int) -> np.ndarray:
    return check_embeddings(np.load(DEMO_DIR / name)[:rows].astype(np.float32), field=name)


def _metadata(n: int) -> list[dict | None]:
    rng = np.random.default_rng(7)
    out: list[dict | None] = []
    for i in range(n):
        if i % 17 == 0:
            out.append(None)
            continue
        item: dict = {
            "lang": ["en", "fr", "de"][int(rng.integers(3))],
            "year": int(rng.integers(1990, 2025)),
        }
        if i % 3:
            item["tags"] = [f"t{int(t)}" for t in rng.integers(0, 5, size=2)]
        if i % 5 == 0:
            item["score"] = float(rng.normal())
            item["source"] = {"kind": "web" if i % 2 else "book"}
        out.append(item)
    return out


FILTERS = {
    "equality": {"must": [{"key": "lang", "match": {"value": "en"}}]},
    "in": {"must": [{"key": "lang", "match": {"any": ["fr", "de"]}}]},
    "range": {"must": [{"key": "year", "range": {"gte": 2000, "lt": 2010}}]},
    "and/or/not": {
        "must": [{"key": "year", "range": {"gt": 1995}}],
        "should": [
            {"key": "tags", "match": {"value": "t1"}},
            {"must": [{"key": "source.kind", "match": {"value": "book"}}]},
        ],
        "must_not": [{"key": "lang", "match": {"value": "de"}}],
    },
    "float range": {"must": [{"key": "score", "range": {"lte": 0.0}}]},
    "nothing": {"must": [{"key": "lang", "match": {"value": "xx"}}]},
}


def _reference(spec: dict, meta: dict | None) -> bool:
    """The semantics written out as plainly as possible."""

    def get(key: str) -> object:
        value: object = meta
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    def cond(c: dict) -> bool:
        if "key" not in c:
            return _reference(c, meta)
        value = get(c["key"])
        if "match" in c:
            wanted = [c["match"]["value"]] if "value" in c["match"] else c["match"]["any"]
            values = value if isinstance(value, list) else [value]
            return any(
                v is not None and type(v) is type(w) and v == w for v in values for w in wanted
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        r = c["range"]
        return (
            ("gt" not in r or value > r["gt"])
            and ("gte" not in r or value >= r["gte"])
            and ("lt" not in r or value < r["lt"])
            and ("lte" not in r or value <= r["lte"])
        )

    must = all(cond(c) for c in spec.get("must", []))
    should = not spec.get("should") or any(cond(c) for c in spec["should"])
    return must and should and not any(cond(c) for c in spec.get("must_not", []))


@pytest.mark.parametrize("name", FILTERS)
def test_the_matcher_agrees_with_the_reference(name: str) -> None:
    meta = _metadata(400)
    got = allowed_rows(meta, compile_filter(FILTERS[name]))
    want = np.array([_reference(FILTERS[name], m) for m in meta])
    np.testing.assert_array_equal(got, want)
    assert name == "nothing" or 0 < got.sum() < len(meta)


def test_booleans_are_not_numbers_and_missing_keys_do_not_match() -> None:
    where = compile_filter({"must": [{"key": "flag", "match": {"value": 1}}]})
    assert [where(m) for m in ({"flag": True}, {"flag": 1}, {"flag": 1.0}, {}, None)] == [
        False,
        True,
        True,
        False,
        False,
    ]
    keep = compile_filter({"must_not": [{"key": "flag", "match": {"value": True}}]})
    assert [keep(m) for m in ({"flag": True}, {"flag": 1}, None)] == [False, True, True]
    in_range = compile_filter({"must": [{"key": "n", "range": {"gte": 0}}]})
    assert [in_range(m) for m in ({"n": True}, {"n": "3"}, {"n": 0})] == [False, False, True]


BACKENDS = {
    "exact": {},
    "faiss": {"index": "flat"},
}


@pytest.fixture(scope="module", params=list(BACKENDS))
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = request.param
    banks = Banks(_demo("query_bank.npy", N_BANK), _demo("gallery_bank.npy", N_BANK))
    norm, invgc = NormParams(nnn_topk=16), InvGCParams()
    gallery = _demo("gallery.npy", N_GALLERY)
    ids = tuple((DEMO_DIR / "gallery_ids.txt").read_text("utf-8").splitlines()[:N_GALLERY])
    prepared = prepare_items(gallery, banks, norm, invgc)
    yield Engine.from_prepared(
        ids,
        tuple(_metadata(N_GALLERY)),
        prepared,
        banks,
        norm,
        invgc,
        backend_factory(name, **BACKENDS[name]),
    )


def _queries() -> np.ndarray:
    return _demo("queries.npy", N_QUERIES)


@pytest.mark.parametrize("invgc", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_a_filtered_search_is_the_full_ranking_restricted_to_matches(
    engine: Engine, method: str, invgc: bool
) -> None:
    _check_filtered(engine, method, invgc, ("equality", "and/or/not", "nothing"))


def _check_filtered(engine: Engine, method: str, invgc: bool, names: tuple[str, ...]) -> None:
    queries = _queries()
    full = engine.search(queries, k=N_GALLERY, method=method, invgc=invgc)
    meta = dict(zip(engine.state.ids, engine.state.metadata, strict=True))
    for name in names:
        spec = FILTERS[name]
        got = engine.search(
            queries, k=K, method=method, invgc=invgc, where=compile_filter(spec), with_metadata=True
        )
        for q in range(N_QUERIES):
            keep = [j for j, i in enumerate(full.ids[q]) if _reference(spec, meta[i])][:K]
            want_ids = [full.ids[q][j] for j in keep]
            want_scores = full.scores[q][keep]
            assert len(got.ids[q]) == len(want_ids), (name, q)
            tol = UNIT * (1 + np.abs(want_scores))
            assert (np.abs(got.scores[q] - want_scores) <= tol).all(), (name, q)
            # equal ids, except that items scoring within rounding of each other may swap
            for j, (a, b) in enumerate(zip(got.ids[q], want_ids, strict=True)):
                assert a == b or abs(got.scores[q][j] - want_scores[j]) <= 2 * tol[j], (name, q, j)
            assert got.metadata is not None
            assert got.metadata[q] == [meta[i] for i in got.ids[q]]
            assert all(_reference(spec, m) for m in got.metadata[q])


def test_search_by_stored_ids_uses_the_stored_embeddings(engine: Engine) -> None:
    ids = list(engine.state.ids[5:8])
    by_id = engine.search(None, k=K, method="dualis", invgc=True, query_ids=ids)
    rows = [engine.state.rows[i] for i in ids]
    by_vector = engine.search(
        engine.state.original.embeddings[rows], k=K, method="dualis", invgc=True
    )
    assert by_id.ids == by_vector.ids
    assert [hits[0] for hits in by_id.ids] == ids  # each item is its own nearest neighbour


def test_a_named_filter_is_matched_once_per_gallery_version(engine: Engine) -> None:
    if engine.state.backend(False).name != "exact":
        pytest.skip("the cache is the engine's; one backend is enough")
    where = compile_filter(FILTERS["equality"])
    calls = 0

    def counting(metadata: object) -> bool:
        nonlocal calls
        calls += 1
        return where(metadata)  # type: ignore[arg-type]

    first = engine.search(
        _queries(), k=K, method="dualis", invgc=True, where=counting, where_key="f"
    )
    again = engine.search(
        _queries(), k=K, method="dualis", invgc=True, where=counting, where_key="f"
    )
    assert calls == N_GALLERY and first.ids == again.ids
    engine.delete([engine.state.ids[-1]])  # a new version: matched again, on the new rows
    engine.search(_queries(), k=K, method="dualis", invgc=True, where=counting, where_key="f")
    assert calls == N_GALLERY + engine.state.row_count  # (the deleted item's row is dead)
