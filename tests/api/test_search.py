"""POST /search: every method on both views against docs/spec.md computed here with numpy, and the
request options (single query, k, offset, score_threshold, defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import METHODS
from service.settings import Settings
from tests.support.api import DemoFiles, Serve, assert_error, assert_same_hits, search
from tests.support.reference import dbsn_tau_log_u_dense

#: the service computes in float32; SPEC's formulas here run in float64
TOL = 1e-4


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mean_topk(sims: np.ndarray, k: int) -> np.ndarray:
    """(n,) mean of each row's k largest values."""
    return -np.mean(np.sort(-sims, axis=1)[:, :k], axis=1)


@dataclass(frozen=True)
class Reference:
    """docs/spec.md in float64 numpy, from the spec (nothing from ``service.algorithms``)."""

    gallery: np.ndarray  # original, normalised
    query_bank: np.ndarray
    gallery_bank: np.ndarray
    settings: Settings

    def invgc(self) -> np.ndarray:
        """LocalAdj InvGC: push each item from its K most similar items of each bank."""
        s = self.settings
        pushed = []
        for bank, rate in (
            (self.gallery_bank, s.r_gallery_bank),
            (self.query_bank, s.r_query_bank),
        ):
            k = max(1, math.floor(s.pool_rate * len(bank)))
            sims = self.gallery @ bank.T
            keep = np.argsort(-sims, axis=1)[:, :k]
            adjacency = np.zeros_like(sims)
            np.put_along_axis(adjacency, keep, np.take_along_axis(sims, keep, axis=1), axis=1)
            pushed.append(_unit(self.gallery - (rate / k) * adjacency @ bank))
        return _unit(0.5 * pushed[0] + 0.5 * pushed[1])

    def view(self, invgc: bool) -> np.ndarray:
        return self.invgc() if invgc else self.gallery

    def log_z(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log Z_BQ(g), log Z_BG(g)) with log-sum-exp."""
        s = self.settings
        z_q = np.logaddexp.reduce(s.beta_query_bank * (view @ self.query_bank.T), axis=1)
        z_g = np.logaddexp.reduce(s.beta_gallery_bank * (view @ self.gallery_bank.T), axis=1)
        return z_q, z_g

    @staticmethod
    def activation(view: np.ndarray, bank: np.ndarray) -> set[int]:
        """A_X for k = 1: every bank item's most similar gallery row."""
        return set((bank @ view.T).argmax(axis=1).tolist())

    def scores(self, queries: np.ndarray, method: str, invgc: bool) -> np.ndarray:
        """(m, n) normalised scores of ``method`` for normalised ``queries``."""
        s = self.settings
        view = self.view(invgc)
        sim = queries @ view.T
        z_q, z_g = self.log_z(view)
        beta_sum = s.beta_query_bank + s.beta_gallery_bank
        if method == "raw":
            return sim
        if method == "is":
            return sim - z_q / s.beta_query_bank
        if method == "dualis":
            return sim - (z_q + z_g) / beta_sum
        if method == "nnn":
            return sim - s.nnn_alpha * _mean_topk(view @ self.query_bank.T, s.nnn_topk)
        if method == "csls":
            return 2 * sim - _mean_topk(view @ self.query_bank.T, s.csls_topk)
        if method == "dbsn":
            return sim + dbsn_tau_log_u_dense(
                view, self.query_bank, self.gallery_bank, s.dbsn_tau, s.dbsn_iterations
            )
        top1 = sim.argmax(axis=1)
        a_q = np.isin(top1, list(self.activation(view, self.query_bank)))[:, None]
        if method == "dis":
            return sim - a_q * z_q / s.beta_query_bank
        a_g = np.isin(top1, list(self.activation(view, self.gallery_bank)))[:, None]
        assert method == "dualdis"
        return sim - (a_q * z_q + a_g * z_g) / beta_sum


@pytest.fixture(scope="module")
def reference(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(
        _unit(demo.embeddings),
        _unit(np.load(demo.query_bank)),
        _unit(np.load(demo.gallery_bank)),
        demo.settings(tmp_path_factory.mktemp("unused")),
    )


@pytest.mark.parametrize("invgc", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_scores_follow_the_spec(
    client: TestClient,
    reference: Reference,
    demo: DemoFiles,
    probes: np.ndarray,
    method: str,
    invgc: bool,
) -> None:
    k = 8
    body = search(client, probes, k=k, method=method, invgc=invgc)
    assert (body["method"], body["invgc"], body["k"], body["offset"]) == (method, invgc, k, 0)
    queries = _unit(probes)
    expected = reference.scores(queries, method, invgc)
    original = queries @ reference.gallery.T
    row_of = {item_id: row for row, item_id in enumerate(demo.ids)}
    assert len(body["results"]) == len(probes)
    for i, hits in enumerate(body["results"]):
        assert [h["rank"] for h in hits] == list(range(1, k + 1))
        rows = [row_of[h["id"]] for h in hits]
        scores = np.array([h["score"] for h in hits])
        # each hit's score is its SPEC score, and together they are the k best SPEC scores
        np.testing.assert_allclose(scores, expected[i, rows], atol=TOL)
        np.testing.assert_allclose(scores, np.sort(expected[i])[::-1][:k], atol=TOL)
        assert np.all(np.diff(scores) <= 0)
        sims = [h["similarity"] for h in hits]
        np.testing.assert_allclose(sims, original[i, rows], atol=1e-5)


def test_single_query_equals_first_of_batch(client: TestClient, probes: np.ndarray) -> None:
    batch = search(client, probes[:3], k=5)
    single = client.post("/search", json={"query": probes[0].tolist(), "k": 5})
    assert single.status_code == 200
    assert_same_hits(single.json()["results"], batch["results"][:1], atol=1e-6)


@pytest.mark.parametrize("method", ["dualdis", "csls"])
def test_offset_pages_are_the_tail_of_a_larger_k(
    client: TestClient, probes: np.ndarray, method: str
) -> None:
    full = search(client, probes, k=15, method=method)
    page = search(client, probes, k=5, offset=10, method=method)
    assert page["offset"] == 10
    for whole, tail in zip(full["results"], page["results"], strict=True):
        assert tail == whole[10:]
        assert [h["rank"] for h in tail] == [11, 12, 13, 14, 15]


def test_score_threshold_keeps_the_prefix_at_or_above_it(
    client: TestClient, probes: np.ndarray
) -> None:
    full = search(client, probes, k=10, method="dualis")["results"]
    threshold = full[0][4]["score"]
    kept = search(client, probes, k=10, method="dualis", score_threshold=threshold)["results"]
    for hits, whole in zip(kept, full, strict=True):
        assert all(h["score"] >= threshold for h in hits)
        assert hits == [h for h in whole if h["score"] >= threshold]
    assert len(kept[0]) == 5


def test_defaults_apply_when_fields_are_omitted(
    client: TestClient, probes: np.ndarray, monkeypatch: pytest.MonkeyPatch, serve: Serve
) -> None:
    body = search(client, probes[:2])
    default_method = Settings.model_fields["default_method"].default
    # the shared service turns InvGC on (tests.engine.SMALL_PARAMS)
    assert (body["method"], body["k"], body["offset"], body["invgc"]) == (
        default_method,
        10,
        0,
        True,
    )
    assert [len(hits) for hits in body["results"]] == [10, 10]
    assert body["gallery_version"] == client.get("/readyz").json()["version"] == 1

    monkeypatch.setenv("HUBLESS_DEFAULT_METHOD", "nnn")
    other = serve(invgc=False)  # an explicit field, as SMALL_PARAMS sets it explicitly
    body = search(other, probes[:2])
    assert (body["method"], body["invgc"]) == ("nnn", False)
    expected = search(client, probes[:2], method="nnn", invgc=False)["results"]
    assert_same_hits(body["results"], expected, atol=1e-6)
    # the InvGC view does not exist there
    response = other.post("/search", json={"query": probes[0].tolist(), "invgc": True})
    assert_error(response, 422, "invgc")


def test_k_beyond_the_gallery_returns_everything(client: TestClient, probes: np.ndarray) -> None:
    everything = search(client, probes[:1], k=1000, method="raw")["results"][0]
    assert len(everything) == 300 and len({h["id"] for h in everything}) == 300
    assert search(client, probes[:1], k=10, offset=295)["results"][0][-1]["rank"] == 300
    assert search(client, probes[:1], k=10, offset=300)["results"] == [[]]
