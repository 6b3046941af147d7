"""Hubness, degeneration and retrieval-quality metrics on cases worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from service.algorithms import (
    degeneration,
    hubness,
    k_occurrence,
    retrieval_quality,
)
from service.algorithms.metrics import (
    RobustScale,
    gini,
    occurrence_histogram,
    robin_hood,
    skewness,
    top_hubs,
)
from tests.support import reference as ref

from .conftest import PROPERTY, seeds, unit, unit_rows

# ----------------------------------------------------------------------------- k-occurrence


@given(seed=seeds, m=st.integers(1, 20), n=st.integers(1, 15), data=st.data())
@PROPERTY
def test_k_occurrence_matches_naive(seed, m, n, data):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    topk = np.array([rng.permutation(n)[:k] for _ in range(m)])
    got = k_occurrence(topk, n)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert got.tolist() == ref.k_occurrence(topk.tolist(), n)
    assert got.sum() == m * k


def test_k_occurrence_counts_zeros_for_unseen_items():
    assert k_occurrence(np.array([[0], [0], [2]]), 5).tolist() == [2, 0, 1, 0, 0]


# ----------------------------------------------------------------------------- hubness


@pytest.mark.parametrize(("m", "n"), [(7, 5), (10, 10), (3, 40), (2, 2)])
def test_one_item_is_everyones_top1(m, n):
    """k = 1, every probe's top-1 is item 0: N = [m, 0, …, 0]."""
    occ = k_occurrence(np.zeros((m, 1), dtype=np.int64), n)
    assert occ.tolist() == [m] + [0] * (n - 1)
    rep = hubness(occ, k=1, probes=m)
    assert (rep.k, rep.probes, rep.gallery_size) == (1, m, n)
    # by hand: mean = m/n, Σ|N − mean| = (m − m/n) + (n − 1)·m/n = 2(m − m/n)
    assert rep.robin_hood == pytest.approx((m - m / n) / m)
    # Σ_i Σ_j |N_i − N_j| = 2(n − 1)m, over 2·n·m
    assert rep.gini == pytest.approx((n - 1) / n)
    assert rep.antihub_rate == pytest.approx((n - 1) / n)
    assert rep.hub_occurrence == pytest.approx(1.0)  # m ≥ 2 = 2k: item 0 is a hub with all slots
    assert rep.max_occurrence_ratio == pytest.approx(1.0)
    # skewness of one spike among n − 1 zeros: (n − 2) / sqrt(n − 1)
    assert rep.skewness == pytest.approx((n - 2) / math.sqrt(n - 1))
    assert rep.skewness == pytest.approx(scipy.stats.skew(occ))


@pytest.mark.parametrize(("n", "k"), [(5, 1), (6, 3), (10, 10)])
def test_uniform_k_occurrence(n, k):
    """n probes, probe i's top-k is items i, i+1, … (mod n): every N_k equals k."""
    topk = np.array([[(i + j) % n for j in range(k)] for i in range(n)])
    occ = k_occurrence(topk, n)
    assert occ.tolist() == [k] * n
    rep = hubness(occ, k=k, probes=n)
    assert rep.skewness == 0.0
    assert rep.robin_hood == 0.0
    assert rep.gini == 0.0
    assert rep.antihub_rate == 0.0
    assert rep.hub_occurrence == 0.0  # N = k < 2k: no hubs
    assert rep.max_occurrence_ratio == pytest.approx(k / n)


def test_hub_occurrence_by_hand():
    # k = 1, 6 probes: N = [3, 2, 1, 0]; hubs are N ≥ 2: items 0 and 1 take 5 of 6 slots
    occ = np.array([3, 2, 1, 0])
    rep = hubness(occ, k=1, probes=6)
    assert rep.hub_occurrence == pytest.approx(5 / 6)
    assert rep.antihub_rate == pytest.approx(1 / 4)
    assert rep.max_occurrence_ratio == pytest.approx(3 / 6)
    # mean 1.5: Σ|N − 1.5| = 1.5 + .5 + .5 + 1.5 = 4 → 0.5·4/6
    assert rep.robin_hood == pytest.approx(2 / 6)
    # pairwise |differences|: (1+2+3+1+2+1)·2 = 20 → 20 / (2·4·6)
    assert rep.gini == pytest.approx(20 / 48)
    # k = 2 on a made-up vector: hubs need N ≥ 4
    rep = hubness(np.array([4, 3, 5, 0]), k=2, probes=6)
    assert rep.hub_occurrence == pytest.approx(9 / 12)


def test_hubness_empty_inputs_do_not_divide_by_zero():
    rep = hubness(np.zeros(4, dtype=np.int64), k=10, probes=0)
    assert (rep.robin_hood, rep.gini, rep.hub_occurrence, rep.max_occurrence_ratio) == (0, 0, 0, 0)
    assert rep.antihub_rate == 1.0 and rep.skewness == 0.0


def test_hubness_of_an_empty_gallery():
    rep = hubness(np.zeros(0, dtype=np.int64), k=10, probes=3)
    assert rep.gallery_size == 0 and rep.antihub_rate == 0.0 and rep.max_occurrence_ratio == 0.0
    assert (rep.skewness, rep.robin_hood, rep.gini, rep.hub_occurrence) == (0, 0, 0, 0)


def test_hubness_report_as_dict():
    d = hubness(np.array([3, 2, 1, 0]), k=1, probes=6).as_dict()
    assert set(d) == {
        "k",
        "probes",
        "gallery_size",
        "skewness",
        "robin_hood",
        "gini",
        "antihub_rate",
        "hub_occurrence",
        "max_occurrence_ratio",
    }


@given(seed=seeds, n=st.integers(2, 60), high=st.integers(1, 50))
@PROPERTY
def test_skewness_equals_scipy(seed, n, high):
    x = np.random.default_rng(seed).integers(0, high + 1, size=n)
    want = 0.0 if np.all(x == x[0]) else float(scipy.stats.skew(x))
    assert skewness(x) == pytest.approx(want, abs=1e-12, rel=1e-9)
    assert skewness(x) == pytest.approx(ref.skewness(x.tolist()), abs=1e-12, rel=1e-9)


@given(seed=seeds, n=st.integers(1, 40), high=st.integers(1, 30))
@PROPERTY
def test_gini_and_robin_hood_match_naive(seed, n, high):
    x = np.random.default_rng(seed).integers(0, high + 1, size=n)
    if x.sum() == 0:
        assert gini(x) == 0.0 and robin_hood(x) == 0.0
        return
    assert gini(x) == pytest.approx(ref.gini(x.tolist()), abs=1e-12)
    assert robin_hood(x) == pytest.approx(ref.robin_hood(x.tolist()), abs=1e-12)
    assert 0.0 <= gini(x) < 1.0 and 0.0 <= robin_hood(x) < 1.0


@given(seed=seeds, m=st.integers(1, 30), n=st.integers(2, 20), data=st.data())
@PROPERTY
def test_hubness_report_matches_naive(seed, m, n, data):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(m, n)) + 2 * rng.normal(size=n)  # some items are popular
    topk = ref.topk_rows(scores, k)
    occ = k_occurrence(np.array(topk), n)
    rep = hubness(occ, k=k, probes=m)
    naive = ref.k_occurrence(topk, n)
    assert rep.skewness == pytest.approx(ref.skewness(naive), abs=1e-12)
    assert rep.robin_hood == pytest.approx(ref.robin_hood(naive), abs=1e-12)
    assert rep.gini == pytest.approx(ref.gini(naive), abs=1e-12)
    assert rep.antihub_rate == pytest.approx(ref.antihub_rate(naive))
    assert rep.hub_occurrence == pytest.approx(ref.hub_occurrence(naive, k, m))
    assert rep.max_occurrence_ratio == pytest.approx(max(naive) / m)


# ----------------------------------------------------------------------------- degeneration


def test_degeneration_known_neighbours():
    # three unit vectors in the plane at 0°, 60°, 180° and one orthogonal out of the plane
    g = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.5, math.sqrt(3) / 2, 0.0],
            [-1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    # nearest other item: 0→1 (0.5), 1→0 (0.5), 2→3 (0.0; 1 is at −0.5), 3→any (0.0)
    got = degeneration(g)
    assert got.value == pytest.approx((0.5 + 0.5 + 0.0 + 0.0) / 4)
    assert (got.items, got.gallery_size) == (4, 4)
    assert got.value == pytest.approx(ref.degeneration(g))


def test_degeneration_ignores_self_but_not_duplicates():
    g = unit(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert degeneration(g).value == pytest.approx((1.0 + 1.0 + 0.0) / 3)


def test_degeneration_tiny_galleries():
    assert degeneration(np.array([[1.0, 0.0]])).value == 0.0
    assert degeneration(np.zeros((0, 3))).items == 0
    assert degeneration(unit(np.array([[1.0, 0.0], [-1.0, 0.0]]))).value == pytest.approx(-1.0)


@given(seed=seeds, n=st.integers(2, 25))
@PROPERTY
def test_degeneration_matches_naive(seed, n):
    g = unit_rows(np.random.default_rng(seed), n, 4)
    assert degeneration(g).value == pytest.approx(ref.degeneration(g), abs=1e-12)


def test_degeneration_sample_is_a_seeded_subset_mean():
    g = unit_rows(np.random.default_rng(3), 6, 3)
    possible = {
        round(ref.degeneration(g, rows), 12) for rows in itertools.combinations(range(6), 3)
    }
    got = degeneration(g, sample=3, seed=11)
    assert (got.items, got.gallery_size) == (3, 6)
    assert round(got.value, 12) in possible
    assert degeneration(g, sample=3, seed=11) == got  # deterministic for a seed
    # a sample at least as large as the gallery is the full mean
    assert degeneration(g, sample=6).value == pytest.approx(ref.degeneration(g))
    assert degeneration(g, sample=100).items == 6


def test_degeneration_sample_on_a_regular_gallery():
    """Pairs of items at a fixed angle, pairs mutually orthogonal: every item's nearest other
    item has similarity cos 40°, so every sample has the same mean."""
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    rows = []
    for pair in range(4):
        a, b = np.zeros(8), np.zeros(8)
        a[2 * pair] = 1.0
        b[2 * pair], b[2 * pair + 1] = c, s
        rows += [a, b]
    g = np.array(rows)
    for seed in range(4):
        got = degeneration(g, sample=3, seed=seed)
        assert got.value == pytest.approx(c) and got.items == 3


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_quality_by_hand():
    ranks = np.array([1, 2, 1, 7, 30, 11])
    rep = retrieval_quality(ranks)
    assert rep.queries == 6
    assert rep.r1 == pytest.approx(2 / 6)
    assert rep.r5 == pytest.approx(3 / 6)
    assert rep.r10 == pytest.approx(4 / 6)
    assert rep.median_rank == pytest.approx((2 + 7) / 2)  # sorted: 1 1 2 7 11 30
    assert rep.mean_rank == pytest.approx(52 / 6)
    assert rep.mrr == pytest.approx((1 + 1 / 2 + 1 + 1 / 7 + 1 / 30 + 1 / 11) / 6)


def test_retrieval_quality_odd_count_and_perfect():
    rep = retrieval_quality([3, 1, 5])
    assert rep.median_rank == 3.0 and rep.r1 == pytest.approx(1 / 3)
    assert rep.r5 == 1.0 and rep.mrr == pytest.approx((1 / 3 + 1 + 1 / 5) / 3)
    perfect = retrieval_quality(np.ones(4, dtype=np.int64))
    assert (perfect.r1, perfect.r5, perfect.r10, perfect.mrr) == (1.0, 1.0, 1.0, 1.0)
    assert perfect.as_dict()["median_rank"] == 1.0


def test_retrieval_quality_needs_a_query():
    with pytest.raises(ValueError):
        retrieval_quality(np.array([], dtype=np.int64))


@given(ranks=st.lists(st.integers(1, 200), min_size=1, max_size=50))
@PROPERTY
def test_retrieval_quality_matches_naive(ranks):
    rep = retrieval_quality(np.array(ranks)).as_dict()
    for key, value in ref.retrieval_quality(ranks).items():
        assert rep[key] == pytest.approx(value), key


# ----------------------------------------------------------------------------- hub reports

occurrences = st.lists(st.integers(0, 300), min_size=1, max_size=60)


@given(xs=occurrences)
@PROPERTY
def test_occurrence_histogram_matches_naive(xs):
    edges, counts = occurrence_histogram(np.array(xs))
    assert (edges, counts) == ref.occurrence_histogram(xs)
    assert edges[0] == 0 and edges[-1] > max(xs) and len(counts) == len(edges) - 1
    assert all(b == 2 * a for a, b in itertools.pairwise(edges[1:]))  # powers of two after 0
    assert sum(counts) == len(xs)


def test_occurrence_histogram_by_hand():
    assert occurrence_histogram(np.array([0, 0, 1, 2, 3, 4, 7, 8])) == (
        [0, 1, 2, 4, 8, 16],
        [2, 1, 2, 2, 1],
    )
    assert occurrence_histogram(np.zeros(5, np.int64)) == ([0, 1], [5])


@given(xs=occurrences, limit=st.integers(1, 70))
@PROPERTY
def test_top_hubs_match_naive(xs, limit):
    hubs = top_hubs(np.array(xs), limit)
    med, mad, scale, z = ref.robust_z(xs)
    assert (hubs.scale.median, hubs.scale.mad) == (med, mad)
    assert hubs.scale.scale == pytest.approx(scale, rel=1e-15)
    # largest first, ties by lower row: the naive order of (−N_k, row)
    order = sorted(range(len(xs)), key=lambda i: (-xs[i], i))[:limit]
    assert hubs.rows.tolist() == order
    assert hubs.occurrence.tolist() == [xs[i] for i in order]
    np.testing.assert_allclose(hubs.z, [z[i] for i in order], rtol=1e-12)
    assert np.all(np.isfinite(hubs.z))


def test_robust_z_by_hand():
    # median 2, |x − 2| = [2, 2, 1, 3, 3, 1] → MAD 2, scale 2.9652
    scale = RobustScale.of(np.array([0, 0, 1, 5, 5, 3]))
    assert (scale.median, scale.mad, scale.scale) == (2.0, 2.0, 1.4826 * 2)
    assert scale.z(5) == pytest.approx(3 / 2.9652)
    # MAD 0 (most items never retrieved): scale 1, z is the excess over the median
    flat = RobustScale.of(np.array([0, 0, 0, 0, 7]))
    assert (flat.median, flat.mad, flat.scale) == (0.0, 0.0, 1.0)
    assert flat.z(7) == 7.0


@given(
    xs=st.lists(st.integers(0, 40), min_size=11, max_size=80),  # max < 4·size: histogram
    dtype=st.sampled_from([np.int64, np.int32, np.uint16]),
)
@PROPERTY
def test_robust_scale_of_counts_equals_the_float_medians(xs, dtype):
    # counts take the histogram path; the same values as floats take np.median: same floats
    counts, floats = RobustScale.of(np.array(xs, dtype)), RobustScale.of(np.array(xs, float))
    assert (counts.median, counts.mad, counts.scale) == (floats.median, floats.mad, floats.scale)
    med, mad, scale, _ = ref.robust_z(xs)
    assert (counts.median, counts.mad, counts.scale) == (med, mad, scale)
