"""Limits checked at the door, so that what is accepted can always be stored and returned.

Metadata is returned as is by every read of its item, so what cannot be serialised later must
be refused now: nesting beyond ``HUBLESS_MAX_METADATA_DEPTH`` (orjson refuses to write more than
254 levels, and deep nesting costs recursion everywhere), more than
``HUBLESS_MAX_METADATA_BYTES`` of JSON, strings (keys included) that are not valid UTF-8 (a lone
surrogate such as ``"\\udfff"`` parses from a JSON escape but can never be encoded again), and
NaN or infinity (JSON has neither). The walk is iterative: no nesting can exhaust the stack.

The size of an answer is bounded too: queries × (k + offset) hits per request at most
``HUBLESS_MAX_HITS``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from service.algorithms import InputError
from service.settings import Settings


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def metadata_problem(value: Any, max_depth: int) -> str | None:
    """What makes ``value`` (parsed JSON) unstorable, or None."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth + 1 > max_depth:
                return f"nests deeper than {max_depth} levels (HUBLESS_MAX_METADATA_DEPTH)"
            if isinstance(node, dict):
                for key in node:
                    if not _valid_text(key):
                        return f"key {key!r} is not valid UTF-8 (a lone surrogate)"
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, str) and not _valid_text(node):
            return f"string {node[:40]!r} is not valid UTF-8 (a lone surrogate)"
        elif isinstance(node, float) and not math.isfinite(node):
            return "contains NaN or infinity (JSON has neither)"
    return None


def check_items(ids: Sequence[str], metadata: Sequence[Any], settings: Settings) -> None:
    """422 naming the first item whose id or metadata could not be stored and served back."""
    for n, (item_id, meta) in enumerate(zip(ids, metadata, strict=True)):
        # line breaks cannot be stored in the ids file, NUL is lost by some tools: no controls
        if any(ord(c) < 32 or ord(c) == 127 for c in item_id):
            raise InputError(
                f"items[{n}].id", "ids must not contain control characters (line breaks, NUL…)"
            )
        if not _valid_text(item_id):
            raise InputError(f"items[{n}].id", "ids must be valid UTF-8 (no lone surrogates)")
        if meta is None:
            continue
        problem = metadata_problem(meta, settings.max_metadata_depth)
        if problem is None:
            size = len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode())
            if size > settings.max_metadata_bytes:
                limit = settings.max_metadata_bytes
                problem = f"is {size} bytes of JSON, over {limit} (HUBLESS_MAX_METADATA_BYTES)"
        if problem is not None:
            raise InputError(f"items[{n}].metadata", f"item {item_id!r}: metadata {problem}")


def check_hits(rows: int, k: int, settings: Settings, *, what: str = "queries") -> None:
    """422 if ``rows`` × ``k`` hits exceed ``HUBLESS_MAX_HITS`` (memory and answer size)."""
    if rows * k > settings.max_hits:
        raise InputError(
            "k",
            f"{rows} {what} × k {k} = {rows * k} hits in one request; the limit is "
            f"{settings.max_hits} (HUBLESS_MAX_HITS): send fewer {what} or a smaller k",
        )
