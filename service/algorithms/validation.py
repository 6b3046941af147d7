"""Input checks shared by every algorithm: one place that says what a valid embedding is.

Errors are :class:`InputError` (a ``ValueError``) naming the offending field, so the HTTP layer
can turn them into 4xx responses without knowing any maths.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

#: Rows whose L2 norm is below this are "zero vectors": they have no direction to normalise.
MIN_NORM = 1e-12


class InputError(ValueError):
    """A caller's value is invalid: ``field`` names it, the message says what was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def float_dtype(x: np.ndarray) -> np.dtype:
    """float64 stays float64 (tests, offline evaluation); everything else computes in float32."""
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def check_embeddings(
    x: object,
    *,
    field: str,
    dim: int | None = None,
    allow_empty: bool = False,
) -> np.ndarray:
    """Validate a 2-D batch of embeddings and return it L2-normalised (rows of unit length).

    x: array-like of shape (n, d). Rejects wrong rank, wrong dimension, NaN/inf and zero rows.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InputError(field, f"expected a 2-D array of numbers ({exc})") from None
    if arr.ndim != 2:
        raise InputError(field, f"expected a 2-D array (rows of embeddings), got {arr.ndim}-D")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(field, f"expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(float_dtype(arr), copy=False)
    if arr.shape[0] == 0 and not allow_empty:
        raise InputError(field, "expected at least one embedding, got an empty batch")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(field, f"expected embeddings of dimension {dim}, got {arr.shape[1]}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(field, f"row {bad} contains NaN or infinity; expected finite numbers")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(arr, axis=1)
    huge = ~np.isfinite(norms)  # finite rows whose sum of squares overflows (float32: |x| ≳ 1e19)
    if huge.any():  # divide those by their largest |x| first: same direction, no overflow
        arr = arr.copy()
        arr[huge] /= np.abs(arr[huge]).max(axis=1, keepdims=True)
        norms[huge] = np.linalg.norm(arr[huge], axis=1)
    if arr.shape[0] and (norms < MIN_NORM).any():
        bad = int(np.flatnonzero(norms < MIN_NORM)[0])
        raise InputError(field, f"row {bad} is an all-zero vector; it has no direction to compare")
    return arr / norms[:, None].astype(arr.dtype)


def is_real(value: object) -> bool:
    """A real number (numpy scalars included), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_positive(field: str, value: float) -> float:
    if not (is_real(value) and math.isfinite(value) and value > 0):
        raise InputError(field, f"expected a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(field: str, value: float) -> float:
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise InputError(field, f"expected a finite number >= 0, got {value!r}")
    return float(value)


def check_count(field: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(field, f"expected an integer >= {minimum}, got {value!r}")
    return int(value)
