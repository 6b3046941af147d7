"""Startup: the precompute reports its progress in the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from service.engine.startup import ProgressLog, load_engine
from service.io import DataError
from tests.support.demo import write_demo_slices


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


def _cached(caplog: pytest.LogCaptureFixture) -> bool:
    ready = [r for r in caplog.records if r.getMessage() == "engine ready"]
    return ready[-1].precompute_cached  # type: ignore[attr-defined]


def test_a_restart_after_a_snapshot_hits_the_precompute_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache is keyed by the rows actually loaded: the snapshot writes the entry the next
    start looks for (it used to miss and recompute everything)."""
    settings = write_demo_slices(tmp_path / "in").settings(tmp_path / "var")
    with caplog.at_level(logging.INFO, logger="service.engine.startup"):
        engine = load_engine(settings)
        assert not _cached(caplog)
        ids, emb = engine.state.ids[:3], engine.state.original.embeddings[:3]
        engine.upsert([f"copy-{i}" for i in ids], emb[::-1].copy(), [None] * 3)
        engine.compact()
        before = engine.state
        restarted = load_engine(settings)
        assert _cached(caplog)
    after = restarted.state
    assert after.ids == before.ids and after.version == before.version
    np.testing.assert_array_equal(after.original.stats, before.original.stats)
    assert before.adjusted is not None and after.adjusted is not None
    np.testing.assert_array_equal(after.adjusted.embeddings, before.adjusted.embeddings)


def test_gallery_metadata_is_read_from_json_lines(tmp_path: Path) -> None:
    files = write_demo_slices(tmp_path / "in")
    ids = files.ids
    meta = tmp_path / "meta.jsonl"
    meta.write_text(
        json.dumps({"id": ids[1], "lang": "en", "year": 2001})
        + "\n\n"
        + json.dumps({"id": ids[0], "tags": ["a"]})
        + "\n",
        encoding="utf-8",
    )
    settings = files.settings(tmp_path / "var", gallery_metadata=meta, cache=False)
    state = load_engine(settings).state
    assert state.metadata[:3] == ({"tags": ["a"]}, {"lang": "en", "year": 2001}, None)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['{"id": "no such item"}'], r"meta\.jsonl: 1 id\(s\) not in the gallery: 'no such item'"),
        (['{"id": "ID0"}', '{"id": "ID0"}'], r"meta\.jsonl:2: id '.*' appears twice"),
        (["{'id': 1}"], r"meta\.jsonl:1: not valid JSON"),
        (['{"id": "ID0", "x": NaN}'], r"meta\.jsonl:1: not valid JSON \(NaN is not JSON\)"),
        (['{"lang": "en"}'], r'meta\.jsonl:1: expected an object \{"id"'),
    ],
)
def test_bad_gallery_metadata_names_the_file_and_line(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    files = write_demo_slices(tmp_path / "in")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(lines).replace("ID0", files.ids[0]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        load_engine(files.settings(tmp_path / "var", gallery_metadata=meta, cache=False))
