"""A metadata filter (``service.engine.filters``'s JSON form) as a Milvus boolean expression.

Rows store ``metadata = {"v": <item metadata>}``, so a key ``a.b`` is ``metadata["v"]["a"]["b"]``.
Each condition is guarded by ``exists``: Milvus evaluates a comparison on a missing key to
*unknown*, which ``not`` keeps unknown (the row would be dropped), while the service's rule is
that a condition on a missing key does not hold (so ``must_not`` keeps the row). ``match`` holds
for an equal value or a list containing it (``json_contains``).

One documented deviation: Milvus (milvus-lite, like Python) compares ``true == 1`` and
``false == 0``, and ranges accept booleans, whereas the in-memory rule keeps booleans apart from
numbers; keep a field's values of one JSON type (the tests check exact agreement so).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.remote.store import METADATA, literal

_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return literal(value)
    return json.dumps(value)  # numbers and booleans (true / false)


def _path(key: str) -> str:
    return f'{METADATA}["v"]' + "".join(f"[{literal(part)}]" for part in key.split("."))


def _condition(spec: Mapping[str, Any]) -> str:
    path = _path(spec["key"])
    if spec.get("match") is not None:
        match = spec["match"]
        wanted = [match["value"]] if "value" in match else list(match["any"])
        tests = [f"{path} == {_value(w)} or json_contains({path}, {_value(w)})" for w in wanted]
        body = " or ".join(f"({t})" for t in tests) or "false"
    else:
        bounds = spec["range"]
        body = " and ".join(
            f"{path} {op} {_value(bounds[name])}"
            for name, op in _OPERATORS.items()
            if bounds.get(name) is not None
        )
        body = body or "true"
    return f"(exists {path} and ({body}))"


def milvus_filter(spec: Mapping[str, Any]) -> str:
    """The expression selecting exactly the rows whose metadata passes ``spec`` (validated)."""

    def entries(name: str) -> list[str]:
        return [_condition(e) if "key" in e else milvus_filter(e) for e in spec.get(name) or ()]

    must, should, must_not = entries("must"), entries("should"), entries("must_not")
    parts = list(must)
    if should:
        parts.append("(" + " or ".join(should) + ")")
    if must_not:
        parts.append("not (" + " or ".join(must_not) + ")")
    if not parts:
        return "true"
    return "(" + " and ".join(parts) + ")"
