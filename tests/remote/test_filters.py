"""Filters translated to Milvus expressions select exactly the rows the in-memory filter passes
(random metadata and random filters; each field keeps values of one JSON type, see
service/remote/filters.py), and a filtered RemoteEngine search equals the exact Engine's for
every method and view (same ids up to float32 near ties, scores within the bound of
tests/support/engines.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.algorithms import METHODS, check_embeddings
from service.engine.filters import allowed_rows, compile_filter
from service.remote.filters import milvus_filter
from service.remote.store import ORIGINAL, RemoteStore
from service.serving import load_engine
from tests.support.demo import DemoFiles, demo_queries
from tests.support.engines import assert_close, tolerance

LANGS = ["en", "fr", "de", 'q"uote', "back\\slash"]


def _metadata(rng: np.random.Generator) -> dict[str, Any] | None:
    if rng.random() < 0.1:
        return None
    out: dict[str, Any] = {}
    if rng.random() < 0.7:
        out["lang"] = (
            str(rng.choice(LANGS))
            if rng.random() < 0.6
            else [str(x) for x in rng.choice(LANGS, size=2)]
        )
    if rng.random() < 0.7:
        out["year"] = int(rng.integers(1990, 2020)) if rng.random() < 0.7 else 2000.5
    if rng.random() < 0.5:
        out["ok"] = bool(rng.random() < 0.5)
    if rng.random() < 0.4:
        out["src"] = {"lang": str(rng.choice(LANGS))}
    return out


def _condition(rng: np.random.Generator) -> dict[str, Any]:
    kind = rng.integers(5)
    if kind == 0:
        return {"key": "lang", "match": {"value": str(rng.choice(LANGS))}}
    if kind == 1:
        return {"key": "lang", "match": {"any": [str(x) for x in rng.choice(LANGS, size=2)]}}
    if kind == 2:
        low = int(rng.integers(1990, 2015))
        return {"key": "year", "range": {"gte": low, "lt": low + int(rng.integers(1, 10))}}
    if kind == 3:
        return {"key": "ok", "match": {"value": bool(rng.random() < 0.5)}}
    return {"key": "src.lang", "match": {"value": str(rng.choice(LANGS))}}


def _filter(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for part in ("must", "should", "must_not"):
        if rng.random() < 0.5:
            entries = [
                _filter(rng, depth + 1) if depth < 1 and rng.random() < 0.2 else _condition(rng)
                for _ in range(int(rng.integers(1, 3)))
            ]
            spec[part] = entries
    return spec


@pytest.fixture(scope="module")
def store(milvus_uri: str) -> RemoteStore:
    made = RemoteStore(milvus_uri, None, "filters", 4)
    made.drop()
    made.ensure([ORIGINAL])
    return made


def test_milvus_expressions_select_what_the_in_memory_filter_passes(store: RemoteStore) -> None:
    rng = np.random.default_rng(3)
    metadata = [_metadata(rng) for _ in range(300)]
    ids = [str(i) for i in range(len(metadata))]
    store.upsert_rows(ORIGINAL, ids, np.ones((len(ids), 9), np.float32), metadata, 1)
    for _ in range(80):
        spec = _filter(rng)
        want = set(np.flatnonzero(allowed_rows(metadata, compile_filter(spec))).tolist())
        got = {int(r["id"]) for r in store.query(ORIGINAL, milvus_filter(spec), [], limit=1000)}
        assert got == want, json.dumps(spec)


def test_a_filtered_search_equals_the_exact_engine(
    demo: DemoFiles, milvus_uri: str, tmp_path: Path
) -> None:
    exact = load_engine(demo.settings(tmp_path / "exact"))
    remote = load_engine(
        demo.settings(
            tmp_path / "w", backend="milvus", milvus_uri=milvus_uri, milvus_collection="filtered"
        )
    )
    try:
        rng = np.random.default_rng(5)
        ids = demo.ids[:120]
        metadata = [_metadata(rng) for _ in ids]
        rows = check_embeddings(demo.embeddings[:120], field="rows")
        exact.upsert(ids, rows, metadata)
        remote.upsert(ids, rows, metadata)
        queries = check_embeddings(demo_queries(5, start=280)[0], field="q")
        for round_ in range(6):
            spec = _filter(rng)
            key = json.dumps(spec, sort_keys=True)
            where = compile_filter(spec)
            for method in METHODS:
                invgc = (round_ + METHODS.index(method)) % 2 == 0  # each method in both views
                options = {"k": 10, "method": method, "invgc": invgc, "with_metadata": True}
                a = exact.search(queries, where=where, where_key=key, **options)
                b = remote.search(queries, where=where, where_key=key, **options)
                assert_close(a, b, tolerance(exact, method, invgc, rows.shape[1]), rows.shape[1])
                assert a.metadata is not None and b.metadata is not None
                for ia, ma, ib, mb in zip(a.ids, a.metadata, b.ids, b.metadata, strict=True):
                    got, want = zip(ib, mb, strict=True), zip(ia, ma, strict=True)
                    assert dict(got) == dict(want), (method, key)
    finally:
        remote.close()  # type: ignore[attr-defined]
        remote.store.drop()  # type: ignore[attr-defined]
