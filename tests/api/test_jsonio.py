"""The orjson body parser gives exactly what ``json.loads`` gives, errors included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.jsonio import PIECE_BYTES, parse_json

BODIES = [
    b'{"queries": [[0.1, -2e-5, 3]], "k": 5}',
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins in both
    b"[NaN, Infinity, -Infinity]",  # json-only literals: orjson refuses, json accepts
    b"1e400",  # overflows a double: inf for json
    b'"\\ud800"',  # a lone surrogate
    b"\xef\xbb\xbf[1]",  # a UTF-8 byte-order mark
    b"123456789012345678901234567890",  # beyond 64 bits: orjson would return a float
    b"[-9223372036854775809, 18446744073709551616]",
    b"[0.0001234567890123456789, 12345678901234567890.5]",
    b' \n{"k": 3}\t',
]


@pytest.mark.parametrize("body", BODIES)
def test_same_value_as_json(body: bytes) -> None:
    got, want = parse_json(body), json.loads(body)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and int vs float must match too


@pytest.mark.parametrize("body", [b"[1,2", b"", b"{'a': 1}", b"[1,]", b'"a\x01"', b"\xff"])
def test_same_error_as_json(body: bytes) -> None:
    with pytest.raises(ValueError) as want:
        json.loads(body)
    with pytest.raises(ValueError) as got:
        parse_json(body)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)


def _large(template: str) -> bytes:
    """A body over the piece threshold: ``template`` with ``ROWS`` replaced by 700 rows."""
    rng = np.random.default_rng(0)
    rows = json.dumps(rng.normal(size=(700, 96)).tolist())
    return template.replace("ROWS", rows).encode()


LARGE = [
    '{"queries": ROWS, "k": 5}',
    '{"k": 5, "queries": ROWS, "method": "dis"}',  # the rows in the middle of the object
    '{"a": "[[not", "queries": ROWS, "b": "a \\" quote ]]", "c": [[1, 2], [3]]}',
    '{"x": ROWS, "y": {"z": ROWS}}',  # two arrays of rows, one nested in an object
    "[ROWS, ROWS]",
    '{"queries": ROWS, "tail": [1, [2, [3]]]}',
]


@pytest.mark.parametrize("template", LARGE)
def test_large_bodies_parsed_in_pieces_give_the_same_value(template: str) -> None:
    body = _large(template)
    assert len(body) > 2 * PIECE_BYTES
    assert parse_json(body) == json.loads(body)


def test_a_large_body_with_a_bad_row_falls_back_to_json() -> None:
    body = _large('{"queries": ROWS}').replace(b"]]", b", NaN]]", 1)
    assert repr(parse_json(body)) == repr(json.loads(body))  # NaN: json's value, not an error
    broken = _large('{"queries": ROWS}')[:-5]
    with pytest.raises(ValueError):
        parse_json(broken)


def test_nesting_too_deep_is_a_json_error_not_a_recursion_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="nests too deep"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
