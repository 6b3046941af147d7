"""Input validation: every bad input raises InputError naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    InputError,
    InvGCParams,
    NormParams,
    check_embeddings,
    get_normaliser,
)


def raises_for(field: str):
    """pytest.raises(InputError) whose message names ``field``."""
    return pytest.raises(InputError, match=rf"^{field}: ")


# ----------------------------------------------------------------------------- check_embeddings


@pytest.mark.parametrize(
    "value",
    [
        np.ones(3),  # 1-D
        np.ones((2, 3, 4)),  # 3-D
        5.0,  # 0-D
        [],  # 1-D empty
    ],
    ids=["1d", "3d", "scalar", "empty-list"],
)
def test_wrong_rank(value):
    with raises_for("gallery") as info:
        check_embeddings(value, field="gallery")
    assert info.value.field == "gallery"
    assert "2-D" in str(info.value)


def test_dim_mismatch():
    with raises_for("queries") as info:
        check_embeddings(np.ones((2, 3)), field="queries", dim=4)
    assert "4" in info.value.message and "3" in info.value.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite(bad):
    x = np.ones((3, 4))
    x[1, 2] = bad
    with raises_for("query_bank") as info:
        check_embeddings(x, field="query_bank")
    assert "row 1" in info.value.message


def test_zero_row():
    x = np.ones((3, 4))
    x[2] = 0.0
    with raises_for("gallery_bank") as info:
        check_embeddings(x, field="gallery_bank")
    assert "row 2" in info.value.message


def test_tiny_but_nonzero_row_is_fine():
    x = np.array([[1e-8, 0.0, 0.0]])
    np.testing.assert_allclose(check_embeddings(x, field="g"), [[1.0, 0.0, 0.0]])


def test_empty_batch_rejected_unless_allowed():
    empty = np.zeros((0, 4))
    with raises_for("items"):
        check_embeddings(empty, field="items")
    out = check_embeddings(empty, field="items", allow_empty=True)
    assert out.shape == (0, 4)
    # the dimension is still checked on an allowed empty batch
    with raises_for("items"):
        check_embeddings(empty, field="items", dim=3, allow_empty=True)


@pytest.mark.parametrize(
    "value",
    [
        [["a", "b"], ["c", "d"]],
        [[1.0, None], [2.0, 3.0]],
        [[True, False]],
        np.array([[1 + 2j, 3 + 0j]]),
        [[1.0, 2.0], [3.0]],  # ragged
        [[{}, {}]],
    ],
    ids=["strings", "none", "bool", "complex", "ragged", "objects"],
)
def test_non_numeric(value):
    with raises_for("gallery") as info:
        check_embeddings(value, field="gallery")
    assert info.value.field == "gallery"


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


def test_output_is_unit_rows_and_keeps_float64():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    out = check_embeddings(x, field="g")
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]])
    assert x[0, 0] == 3.0  # the input is not modified


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.int32])
def test_other_dtypes_compute_in_float32(dtype):
    out = check_embeddings(np.array([[3, 4]], dtype=dtype), field="g")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)


def test_normalisation_is_idempotent(rng):
    x = rng.normal(size=(50, 7)) * rng.uniform(1e-6, 1e6, size=(50, 1))
    once = check_embeddings(x, field="g")
    twice = check_embeddings(once, field="g")
    np.testing.assert_allclose(twice, once, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(once, axis=1), 1.0, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- parameters

BAD_POSITIVE = [0.0, -1.0, math.nan, math.inf, -math.inf, "1.0", None]


@pytest.mark.parametrize("field", ["beta_query_bank", "beta_gallery_bank"])
@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_norm_params_reject_bad_beta(field, value):
    with raises_for(field):
        NormParams(**{field: value})


@pytest.mark.parametrize("field", ["dis_topk", "nnn_topk", "csls_topk"])
@pytest.mark.parametrize("value", [0, -3, 1.5, 2.0, True, None])
def test_norm_params_reject_bad_k(field, value):
    with raises_for(field):
        NormParams(**{field: value})


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_norm_params_reject_bad_alpha(value):
    with raises_for("nnn_alpha"):
        NormParams(nnn_alpha=value)


def test_norm_params_accept_edge_values():
    p = NormParams(
        beta_query_bank=1e-3, beta_gallery_bank=1000, dis_topk=1, nnn_topk=1, nnn_alpha=0
    )
    assert p.beta_gallery_bank == 1000
    assert NormParams(dis_topk=np.int64(3)).dis_topk == 3


@pytest.mark.parametrize("field", ["r_gallery_bank", "r_query_bank"])
@pytest.mark.parametrize("value", [-0.01, -1, math.nan, math.inf, "0.1"])
def test_invgc_params_reject_bad_rate(field, value):
    with raises_for(field):
        InvGCParams(**{field: value})


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.0000001, 2, math.nan, math.inf, "0.1", None])
def test_invgc_params_reject_bad_pool_rate(value):
    with raises_for("pool_rate"):
        InvGCParams(pool_rate=value)


@pytest.mark.parametrize("value", ["dense", "LOCAL", "", None])
def test_invgc_params_reject_unknown_adjacency(value):
    with raises_for("adjacency"):
        InvGCParams(adjacency=value)


def test_invgc_params_accept_edge_values():
    assert InvGCParams(r_gallery_bank=0, r_query_bank=0, pool_rate=1.0, adjacency="full")
    assert InvGCParams(pool_rate=1e-9).pool_rate == 1e-9


def test_unknown_method_lists_methods():
    with raises_for("method") as info:
        get_normaliser("nope")
    assert "'nope'" in info.value.message
    for name in METHODS:
        assert name in info.value.message


def test_parameters_accept_numpy_scalars_and_reject_bools() -> None:
    from service.algorithms import InvGCParams, NormParams

    assert NormParams(beta_query_bank=np.float32(0.5)).beta_query_bank == np.float32(0.5)
    assert InvGCParams(pool_rate=np.float64(0.1)).pool_rate == 0.1
    for bad in ({"beta_query_bank": True}, {"nnn_alpha": False}):
        with pytest.raises(InputError):
            NormParams(**bad)
    with pytest.raises(InputError, match="pool_rate"):
        InvGCParams(pool_rate=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_finite_rows_keep_their_direction(dtype):
    """Squaring 1e20 overflows float32: such rows must still normalise, not become zeros/NaN."""
    big = np.finfo(dtype).max / 4
    x = np.array([[big, -big, 0.0], [3.0, 4.0, 0.0]], dtype=dtype)
    before = x.copy()
    out = check_embeddings(x, field="q")
    np.testing.assert_allclose(out[0], [2**-0.5, -(2**-0.5), 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(x, before)  # the caller's array is untouched
