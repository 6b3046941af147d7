"""The benchmark runner's ``--quick`` path on the search/precompute/ANN modules: they never rot."""

from __future__ import annotations

import json
import math

from benchmarks import run
from benchmarks.common import Row

MINE = ["ann", "precompute", "search"]


def test_quick_run_writes_a_table_and_json(tmp_path, capsys):
    out_json, out_md = tmp_path / "rows.json", tmp_path / "table.md"
    argv = ["--quick", "--only", *MINE, "--json", str(out_json), "--markdown", str(out_md)]
    assert run.main(argv) == 0
    payload = json.loads(out_json.read_text())
    sections = {row["section"] for row in payload["rows"]}
    assert sections == set(MINE)
    assert all(math.isfinite(row["value"]) for row in payload["rows"])
    assert payload["header"][0].startswith("Machine: ")
    assert "Threads: " in payload["header"][1]
    text = out_md.read_text()
    assert "| section | measurement |" in text and text in capsys.readouterr().out + "\n"


def test_a_broken_module_is_an_error_row_not_a_crash(monkeypatch):
    def broken(quick: bool) -> list[Row]:
        raise RuntimeError("boom")

    monkeypatch.setattr(run, "available", lambda: ["broken"])
    monkeypatch.setattr(
        run.importlib, "import_module", lambda name: type("M", (), {"measure": broken})
    )
    assert run.main(["--quick"]) == 1
