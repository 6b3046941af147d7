"""Startup: the precompute reports its progress in the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.engine.startup import ProgressLog, load_engine

from . import write_demo_slices


def test_progress_is_logged_every_step_up_to_100(caplog: pytest.LogCaptureFixture) -> None:
    progress = ProgressLog(1000, step=25)
    with caplog.at_level(logging.INFO, logger="service.engine.startup"):
        for _ in range(10):
            progress(100)
    assert [r.percent for r in caplog.records] == [30, 50, 80, 100]  # type: ignore[attr-defined]


@pytest.mark.parametrize("invgc", [True, False])
def test_a_precompute_logs_its_progress_to_completion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, invgc: bool
) -> None:
    settings = write_demo_slices(tmp_path / "in").settings(
        tmp_path / "var", cache=False, invgc=invgc
    )
    with caplog.at_level(logging.INFO, logger="service.engine.startup"):
        load_engine(settings)
    percents = [r.percent for r in caplog.records if hasattr(r, "percent")]  # type: ignore[attr-defined]
    assert percents and percents[-1] == 100 and percents == sorted(percents)
