"""Metadata filters: which gallery items a search may return.

The JSON form (validated by the API's models, see ``service.api.models.Filter``) follows
Qdrant's: ``{"must": [...], "should": [...], "must_not": [...]}`` whose entries are conditions
``{"key": "lang", "match": {"value": "en"}}``, ``{"key": "lang", "match": {"any": ["en", "fr"]}}``,
``{"key": "year", "range": {"gte": 2000, "lt": 2010}}`` or nested filters. An item passes when
every ``must`` entry holds, at least one ``should`` entry holds (if there are any) and no
``must_not`` entry holds. A key may be a dotted path into nested objects (``"source.lang"``).
A condition on a missing key, on an item without metadata or on a value of another type does
not hold (so ``must_not`` keeps such items). ``match`` on a list-valued field holds if any
element matches. Numbers and booleans are different types (``true`` never equals ``1``).

Matching is done here, on the served metadata, for every backend: each backend then restricts
its exact ranking to the matching rows (the exact backend masks rows, FAISS takes an ID selector,
Milvus a boolean expression on the ids), so filtered results agree across backends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Metadata = Mapping[str, Any] | None
Predicate = Callable[[Metadata], bool]
_MISSING = object()


def _lookup(metadata: Metadata, key: str) -> Any:
    value: Any = metadata
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: a bool equals only a bool; ints and floats compare as numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _condition(spec: Mapping[str, Any]) -> Predicate:
    key = spec["key"]
    if spec.get("match") is not None:
        match = spec["match"]
        wanted = [match["value"]] if "value" in match else list(match["any"])

        def matches(value: Any) -> bool:
            return any(_same(value, w) for w in wanted)

        def holds(metadata: Metadata) -> bool:
            value = _lookup(metadata, key)
            if isinstance(value, list):
                return any(matches(v) for v in value)
            return value is not _MISSING and matches(value)

        return holds
    bounds = spec["range"]
    checks: list[Callable[[float], bool]] = []
    if bounds.get("gt") is not None:
        checks.append(lambda v, b=bounds["gt"]: v > b)
    if bounds.get("gte") is not None:
        checks.append(lambda v, b=bounds["gte"]: v >= b)
    if bounds.get("lt") is not None:
        checks.append(lambda v, b=bounds["lt"]: v < b)
    if bounds.get("lte") is not None:
        checks.append(lambda v, b=bounds["lte"]: v <= b)

    def in_range(metadata: Metadata) -> bool:
        value = _lookup(metadata, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return all(check(value) for check in checks)

    return in_range


def compile_filter(spec: Mapping[str, Any]) -> Predicate:
    """A predicate on one item's metadata from a validated filter (plain dicts and lists)."""

    def entries(name: str) -> list[Predicate]:
        return [_condition(e) if "key" in e else compile_filter(e) for e in spec.get(name) or ()]

    must, should, must_not = entries("must"), entries("should"), entries("must_not")

    def passes(metadata: Metadata) -> bool:
        return (
            all(p(metadata) for p in must)
            and (not should or any(p(metadata) for p in should))
            and not any(p(metadata) for p in must_not)
        )

    return passes


def allowed_rows(metadata: Sequence[Metadata], where: Predicate) -> np.ndarray:
    """(n,) bool: the rows whose metadata passes ``where``."""
    return np.fromiter((bool(where(m)) for m in metadata), dtype=bool, count=len(metadata))
