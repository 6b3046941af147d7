"""The door's metadata checks at their exact boundaries (the survey sends the gross cases)."""

from __future__ import annotations

import json

import pytest

from service.algorithms import InputError
from service.api.limits import check_hits, check_items, metadata_problem
from service.settings import Settings

SETTINGS = Settings.model_construct(max_metadata_depth=4, max_metadata_bytes=64, max_hits=100)


def _nested(depth: int, leaf: object = 1) -> object:
    """``depth`` containers, alternating objects and lists, around ``leaf``."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_metadata_up_to_the_depth_limit_is_accepted(depth: int) -> None:
    assert metadata_problem(_nested(depth), 4) is None


def test_one_level_more_is_refused_and_deep_nesting_does_not_recurse() -> None:
    assert "deeper than 4" in (metadata_problem(_nested(5), 4) or "")
    assert "deeper than 4" in (metadata_problem(_nested(100_000), 4) or "")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"a": "ok \udfff"}, "string"),
        ({"\ud800": 1}, "key"),
        ({"a": [1.0, float("nan")]}, "NaN"),
        ({"a": float("inf")}, "NaN"),
    ],
)
def test_unstorable_values_are_named(value: object, says: str) -> None:
    assert says in (metadata_problem(value, 4) or "")


def test_the_size_limit_counts_compact_utf8_json_bytes() -> None:
    fits = {"t": "é" * ((64 - len('{"t":""}')) // 2)}  # é is 2 bytes in UTF-8
    assert len(json.dumps(fits, ensure_ascii=False, separators=(",", ":")).encode()) <= 64
    check_items(["a"], [fits], SETTINGS)
    with pytest.raises(InputError, match=r"item 'b'.*bytes of JSON") as error:
        check_items(["a", "b"], [fits, {"t": "é" * 40}], SETTINGS)
    assert error.value.field == "items[1].metadata"


def test_ids_must_be_printable_utf8() -> None:
    for bad in ("a\nb", "x\x00", "\udfff"):
        with pytest.raises(InputError):
            check_items([bad], [None], SETTINGS)


def test_the_hit_budget_is_inclusive() -> None:
    check_hits(10, 10, SETTINGS)
    with pytest.raises(InputError, match="HUBLESS_MAX_HITS"):
        check_hits(10, 11, SETTINGS)
