"""One milvus-lite server per test module; the demo slices the engine tests use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine import DemoFiles, write_demo_slices
from support.milvus import milvus_server


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with milvus_server(tmp_path_factory.mktemp("milvus") / "data") as uri:
        yield uri


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return write_demo_slices(tmp_path_factory.mktemp("demo"))
