"""The orjson body parser gives exactly what ``json.loads`` gives, errors included."""

from __future__ import annotations

import json

import pytest

from service.api.jsonio import parse_json

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
