"""Fixtures: the demo slices on disk, a shared read-only service, and a service factory."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine.startup import load_engine
from tests.support.api import DemoFiles, Serve, running
from tests.support.demo import demo_queries, write_demo_slices


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return write_demo_slices(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def probes() -> np.ndarray:
    """20 real demo queries (not normalised: the service normalises)."""
    return demo_queries(20)[0]


@pytest.fixture(scope="module")
def client(demo: DemoFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One service per test module, for tests that do not change the gallery."""
    with running(demo.settings(tmp_path_factory.mktemp("var"))) as test_client:
        yield test_client


@pytest.fixture
def serve(demo: DemoFiles, tmp_path: Path) -> Iterator[Serve]:
    """``serve(**settings_overrides, loader=..., ready=..., files=...)`` starts a service of
    its own (own data_dir unless given), stopped at the end of the test."""
    counter = itertools.count()
    with ExitStack() as stack:

        def start(
            *, loader=load_engine, ready: bool = True, files: DemoFiles | None = None, **overrides
        ) -> TestClient:
            data_dir = overrides.pop("data_dir", tmp_path / f"var{next(counter)}")
            settings = (files or demo).settings(data_dir, **overrides)
            return stack.enter_context(running(settings, loader=loader, ready=ready))

        yield start
