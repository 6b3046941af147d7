"""float16 storage: a gallery kept in float16 and computed in float32 blocks is exact for the
stored (float16-rounded) values: every stat and every method's scores equal a float64
reference computed from the same float16 values, within float32 rounding.

Tolerance, from the maths: a float32 dot product of two d-vectors of norm ≤ 1 + 2⁻¹¹ (a unit
vector rounded to float16) errs by at most about d·eps32; each stat column is, in score
units, a Lipschitz function of the similarities with constant ≤ 3 (log-mean-exp divided by β,
top-k means, DBSN's stat with T = 1: 2T + 1), plus a few eps32 of exp/log rounding, and a
method's score is the similarity plus at most two such terms with coefficients ≤ 1: so
8·(d + 8)·eps32 bounds every score on any BLAS kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.algorithms import METHODS, Banks, get_normaliser, plan_queries, prepare_items, search
from service.algorithms.scan import scan_bank

from .conftest import make_problem, small_params

D = 32
TOL = 8 * (D + 8) * np.finfo(np.float32).eps


def _problem(seed: int):
    p = make_problem(seed, n=40, d=D, nq=30, ng=25, m=12)
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    gallery16 = p.gallery.astype(np.float16)
    banks32 = Banks(f32(p.query_bank), f32(p.gallery_bank))
    banks64 = Banks(*(b.astype(np.float64) for b in (banks32.query_bank, banks32.gallery_bank)))
    return gallery16, f32(p.queries), banks32, banks64


@pytest.mark.parametrize("seed", range(4))
def test_float16_gallery_is_exact_for_its_stored_values(seed):
    gallery16, queries, banks32, banks64 = _problem(seed)
    params = small_params(dbsn_iterations=1)
    view16 = prepare_items(gallery16, banks32, params, None).original
    view64 = prepare_items(gallery16.astype(np.float64), banks64, params, None).original
    assert view16.embeddings.dtype == np.float16  # kept as stored, never widened whole
    assert view16.stats.dtype == np.float32
    np.testing.assert_allclose(view16.stats, view64.stats, rtol=0, atol=TOL)
    for method in METHODS:
        normaliser = get_normaliser(method)
        plan16 = plan_queries(normaliser, queries, view16, params)
        plan64 = plan_queries(normaliser, queries.astype(np.float64), view64, params)
        idx, val = search(queries, view16, plan16, view16.size)
        want = (
            queries.astype(np.float64) @ view64.embeddings.T * plan64.weight
            + plan64.coefficients @ view64.stats.T
            + plan64.offsets[:, None]
        )
        np.testing.assert_allclose(val, np.take_along_axis(want, idx, axis=1), atol=TOL)
        np.testing.assert_allclose(val, -np.sort(-want, axis=1), atol=TOL)


def test_float16_scan_outputs_are_float32():
    """The neighbour sums and bank top-k of a float16 scan come out in the work dtype."""
    gallery16, _, banks32, _ = _problem(9)
    scan = scan_bank(gallery16, banks32.query_bank, beta=1.0, neighbour_k=3, bank_topk=2)
    assert scan.neighbour_sum.dtype == np.float32
    assert scan.bank_top_sim.dtype == np.float32
    assert scan.log_mean_exp.dtype == np.float32


def test_float16_degeneration_is_computed_in_float32_blocks(monkeypatch):
    """Δdeg of a float16 gallery equals that of the same values in float32 (float32 products of
    unit vectors: within d·eps32), over several column blocks (a float16 product would round
    every similarity to 2⁻¹¹ and run without BLAS)."""
    from service.algorithms import metrics

    monkeypatch.setattr(metrics, "block_rows", lambda cols, itemsize: 7)  # many small blocks
    gallery16 = make_problem(3, n=40, d=D, nq=2, ng=2, m=2).gallery.astype(np.float16)
    want = metrics.degeneration(gallery16.astype(np.float64)).value
    for sample in (None, 13):
        got = metrics.degeneration(gallery16, sample=sample, seed=1)
        ref = metrics.degeneration(gallery16.astype(np.float64), sample=sample, seed=1)
        assert abs(got.value - ref.value) <= 2 * D * np.finfo(np.float32).eps
    assert abs(metrics.degeneration(gallery16).value - want) <= 2 * D * np.finfo(np.float32).eps


def test_a_float16_gallery_is_widened_one_bounded_block_at_a_time():
    """One query against a large float16 gallery: the float32 copy of each block stays within
    the block budget (it used to be the whole gallery: 1.5 GB at 1M × 384, ~1 min per query on
    a loaded machine); float32 blocks, which are views, keep the scores-only bound."""
    from service.algorithms.blocks import WIDEN_BYTES, block_rows
    from service.algorithms.scoring import gallery_block_rows

    budget = 32 << 20
    half = np.empty((1_000_000, 384), np.float16)
    assert gallery_block_rows(half, 1, budget) * 384 * 4 <= WIDEN_BYTES
    assert gallery_block_rows(half, 4096, budget) == block_rows(4096, 4, budget)
    single = np.empty((1_000_000, 384), np.float32)
    assert gallery_block_rows(single, 1, budget) == block_rows(1, 4, budget)


def test_the_widening_kernel_gives_every_float16_value_exactly():
    """All 65,536 bit patterns: finite values (subnormals, ±0) and ±inf bit for bit as numpy's
    cast, NaN stays NaN; strided and empty blocks too."""
    from service.algorithms.fused import widen_half

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    got, want = widen_half(every), every.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()
    grid = every[~np.isnan(every)][: 96 * 40].reshape(96, 40)
    assert np.array_equal(widen_half(grid[::3, 1::2]), grid[::3, 1::2].astype(np.float32))
    assert widen_half(grid[:0]).shape == (0, 40)


def test_products_with_float16_blocks_reuse_a_buffer_per_thread_and_stay_exact():
    """Blocks of changing shapes on several threads at once: each product equals the float64
    product of the stored values within the float32 bound (a buffer shared between threads, or
    one left too small, would show here)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.algorithms.blocks import product_with

    rng = np.random.default_rng(4)
    queries = rng.normal(size=(3, D)).astype(np.float32)
    blocks = [rng.normal(size=(int(r), D)).astype(np.float16) for r in rng.integers(1, 300, 64)]

    def check(block: np.ndarray) -> bool:
        want = queries.astype(np.float64) @ block.astype(np.float64).T
        got = product_with(queries, block)
        scale = np.abs(queries).astype(np.float64) @ np.abs(block.astype(np.float64)).T
        return got.dtype == np.float32 and bool(np.all(np.abs(got - want) <= D * 1.2e-7 * scale))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, blocks))
