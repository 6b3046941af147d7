"""A short load run (the script `benchmarks/load_test.py` runs the long one): concurrent
searches and upserts against a real server on loopback, zero errors, and no search response
mixing two gallery versions."""

from __future__ import annotations

from pathlib import Path

from benchmarks.load_test import LoadRun
from service.harness import serving


def test_concurrent_searches_and_upserts_are_error_free_and_version_consistent(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, {"HUBLESS_API_KEY": "load-key"}) as server:
        report = LoadRun(
            server.url, duration=8.0, search_threads=3, writer_threads=1, api_key="load-key"
        ).run()
    assert not report.errors, report.errors[:5]
    assert not report.inconsistencies, report.inconsistencies[:5]
    # the consistency check had something to bite on: many versions, searched across
    assert report.versions >= 3, report
    assert report.search["requests"] >= 10, report
    assert report.duration < 30
