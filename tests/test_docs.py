"""The README's generated parts stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from service.cli import build_parser
from service.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(
        r"<!-- settings-table:start[^>]*-->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert match, "README lost its settings-table markers"
    assert match.group(1) == settings_table(), "regenerate with `python -m service.settings`"


def test_cli_lists_its_commands() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"serve", "build-dataset", "evaluate", "tune", "export"} <= set(commands)
