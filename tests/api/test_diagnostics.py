"""/diagnostics: structure and denominators, caching per gallery version, retrieval figures
consistent with /search."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import METHODS
from tests.support.api import Serve, search
from tests.support.demo import demo_queries

SHARES = ("robin_hood", "gini", "antihub_rate", "hub_occurrence", "max_occurrence_ratio")


def _check_hubness(hubness: dict, k: int, probes: int, gallery_size: int) -> None:
    assert (hubness["k"], hubness["probes"], hubness["gallery_size"]) == (k, probes, gallery_size)
    for name in SHARES:
        assert 0.0 <= hubness[name] <= 1.0, (name, hubness)
    assert np.isfinite(hubness["skewness"])


def test_get_structure_and_denominators(client: TestClient) -> None:
    response = client.get("/diagnostics")
    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["gallery_size"], body["probe_source"]) == (1, 300, "query_bank")
    degeneration = {d["invgc"]: d for d in body["degeneration"]}
    assert set(degeneration) == {False, True}
    for d in degeneration.values():
        assert (d["items"], d["gallery_size"]) == (300, 300)
        assert -1.0 <= d["value"] <= 1.0
    # SPEC: InvGC pushes items apart, so their nearest neighbours are less similar
    assert degeneration[True]["value"] < degeneration[False]["value"]
    pairs = [(m["method"], m["invgc"]) for m in body["methods"]]
    assert sorted(pairs) == sorted((m, v) for m in METHODS for v in (False, True))
    for m in body["methods"]:
        _check_hubness(m["hubness"], k=10, probes=400, gallery_size=300)  # the whole query bank
        assert m["retrieval"] is None
    five = client.get("/diagnostics", params={"k": 5}).json()
    for m in five["methods"]:
        _check_hubness(m["hubness"], k=5, probes=400, gallery_size=300)
    metrics = client.get("/metrics").text
    assert 'hubless_k_occurrence_skewness{invgc="true",method="dualis"}' in metrics


def test_get_is_cached_until_the_gallery_changes(serve: Serve) -> None:
    client = serve(diagnostics_probes=50)
    cache = client.app.state.runtime.diagnostics_cache
    first = client.get("/diagnostics").json()
    (cached,) = cache.values()
    assert client.get("/diagnostics").json() == first
    assert next(iter(cache.values())) is cached  # not recomputed
    assert first["methods"][0]["hubness"]["probes"] == 50

    item = {"id": "new", "embedding": [0.05] * 384}
    assert client.put("/gallery", json={"items": [item]}).status_code == 200
    after = client.get("/diagnostics").json()
    assert (after["version"], after["gallery_size"]) == (2, 301)
    (recomputed,) = cache.values()
    assert recomputed is not cached and recomputed.version == 2


def test_post_with_truth_ids_matches_search(client: TestClient) -> None:
    queries, truth = demo_queries(40, start=100)
    body = {"queries": queries.tolist(), "truth_ids": truth, "k": 10}
    response = client.post("/diagnostics", json=body)
    assert response.status_code == 200
    report = response.json()
    assert report["probe_source"] == "request"
    assert len(report["methods"]) == 2 * len(METHODS)
    for m in report["methods"]:
        _check_hubness(m["hubness"], k=10, probes=40, gallery_size=300)
        quality = m["retrieval"]
        assert quality["queries"] == 40
        assert 0 <= quality["r1"] <= quality["r5"] <= quality["r10"] <= 1
        assert quality["r1"] <= quality["mrr"] <= 1
        assert 1 <= quality["median_rank"] <= 300 and 1 <= quality["mean_rank"] <= 300
        hits = search(client, queries, k=1, method=m["method"], invgc=m["invgc"])["results"]
        top1 = np.mean([h[0]["id"] == t for h, t in zip(hits, truth, strict=True)])
        assert quality["r1"] == pytest.approx(top1), (m["method"], m["invgc"])


def test_post_diagnoses_only_the_methods_asked_for(client: TestClient) -> None:
    queries, _ = demo_queries(5)
    body = {"queries": queries.tolist(), "methods": ["raw", "dualdis"], "k": 3}
    report = client.post("/diagnostics", json=body).json()
    assert sorted((m["method"], m["invgc"]) for m in report["methods"]) == [
        ("dualdis", False),
        ("dualdis", True),
        ("raw", False),
        ("raw", True),
    ]
    assert all(m["hubness"]["k"] == 3 and m["retrieval"] is None for m in report["methods"])


def test_hub_reports_are_consistent_with_the_hubness_figures(client: TestClient) -> None:
    """Histogram and top hubs describe the same k-occurrence as the hubness metrics."""
    body = client.get("/diagnostics").json()
    assert body["bank_sizes"] == {"query_bank": 400, "gallery_bank": 400}
    assert body["live_query_bank"] is None
    gallery_ids = set(client.app.state.runtime.engine.state.ids)
    for m in body["methods"]:
        hist, hubs, hubness = m["occurrence_histogram"], m["top_hubs"], m["hubness"]
        edges, counts = hist["edges"], hist["counts"]
        assert edges[:2] == [0, 1] and len(counts) == len(edges) - 1
        assert sum(counts) == 300  # every gallery item, zeros included
        top = hubs["items"][0]["occurrence"]
        assert top == round(hubness["max_occurrence_ratio"] * hubness["probes"])
        assert edges[-2] <= top < edges[-1]  # the last bin holds the largest N_k
        assert counts[0] == round(hubness["antihub_rate"] * 300)
        items = hubs["items"]
        assert len(items) == 10 and {h["id"] for h in items} <= gallery_ids
        occurrence = [h["occurrence"] for h in items]
        assert occurrence == sorted(occurrence, reverse=True)
        scale = hubs["scale"]
        assert scale == (pytest.approx(1.4826 * hubs["mad"]) if hubs["mad"] else 1.0)
        for h in items:
            assert h["z"] == pytest.approx((h["occurrence"] - hubs["median"]) / scale)
            assert h["metadata"] is None
    dualis = next(m for m in body["methods"] if (m["method"], m["invgc"]) == ("dualis", True))
    label = 'hubless_hub_max_z{invgc="true",method="dualis"} '
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(label))
    assert float(line.removeprefix(label)) == pytest.approx(dualis["top_hubs"]["items"][0]["z"])


def test_top_hubs_limit_applies_to_get_and_post(serve: Serve) -> None:
    client = serve(diagnostics_top_hubs=3, diagnostics_probes=100)
    body = client.get("/diagnostics").json()
    assert all(len(m["top_hubs"]["items"]) == 3 for m in body["methods"])
    probes = demo_queries(30)[0]
    report = client.post("/diagnostics", json={"queries": probes.tolist(), "methods": ["raw"]})
    assert report.status_code == 200
    assert all(len(m["top_hubs"]["items"]) == 3 for m in report.json()["methods"])
