"""Python standard library functions: docstring summary (query) -> code (gallery), text→code.

A second real dataset of a different kind from the WordNet demo (short English text against
source code instead of definitions against words), built offline from the interpreter's own
standard library. Each function or method with a docstring gives one pair: the query is the
docstring's first line, the gallery item is the function's source *without* its docstring
(truncated to ``MAX_CODE_CHARS``, which bounds the encoder's cost), and the gallery id is
``module/path.py:Qualified.name``. Pairs whose summary or code is not unique are dropped, so
every query has exactly one correct item. Test packages, IDLE and other demo/GUI trees are
skipped (their docstrings are boilerplate such as "Test ...").
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

SOURCE = "Python standard library (docstring summary -> function code)"
DEFAULT_STDLIB_DIR = Path(sysconfig.get_paths()["stdlib"])
#: Code beyond this many characters is cut: e5 reads at most 512 tokens anyway.
MAX_CODE_CHARS = 800
#: Summaries shorter than this ("Constructor.") say too little to retrieve anything.
MIN_SUMMARY_CHARS = 15
_SKIPPED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo"}
    | {"tkinter", "ensurepip", "venv", "__pycache__"}
)


@dataclass(frozen=True, slots=True)
class CodePair:
    """One query (docstring summary) and its gallery item (code) with the item's id."""

    item_id: str
    item_text: str
    query_text: str


def stdlib_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root`` outside the skipped trees, in a fixed (sorted) order."""
    return sorted(
        f for f in root.rglob("*.py") if not _SKIPPED_DIRS & set(f.relative_to(root).parts)
    )


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function and method, outer before inner."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, f"{name}.")


def _code_without_docstring(source: str, node: ast.AST) -> str | None:
    """The function's source with its docstring statement removed, whitespace-collapsed."""
    lines = source.splitlines()
    doc = node.body[0]  # type: ignore[attr-defined]
    keep = [
        line
        for number, line in enumerate(lines[node.lineno - 1 : node.end_lineno], node.lineno)
        if not doc.lineno <= number <= doc.end_lineno
    ]
    code = " ".join(" ".join(keep).split())
    return code[:MAX_CODE_CHARS] if code else None


def file_pairs(path: Path, root: Path) -> list[CodePair]:
    """The pairs of one file (none if it does not parse)."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = path.relative_to(root).as_posix()
    pairs = []
    for name, node in _functions(tree):
        doc = ast.get_docstring(node)  # type: ignore[arg-type]
        if not doc:
            continue
        summary = " ".join(doc.strip().split("\n")[0].split())
        code = _code_without_docstring(source, node)
        if len(summary) >= MIN_SUMMARY_CHARS and code:
            pairs.append(CodePair(f"{module}:{name}", code, summary))
    return pairs


def load_code_pairs(root: Path = DEFAULT_STDLIB_DIR) -> list[CodePair]:
    """Every one-to-one pair of the standard library under ``root``, in file order."""
    pairs = [p for f in stdlib_files(root) for p in file_pairs(f, root)]
    summaries = Counter(p.query_text for p in pairs)
    codes = Counter(p.item_text for p in pairs)
    ids = Counter(p.item_id for p in pairs)
    return [
        p
        for p in pairs
        if summaries[p.query_text] == 1 and codes[p.item_text] == 1 and ids[p.item_id] == 1
    ]


class StdlibSource:
    """The pair source ``build_dataset`` takes (parsed once; the digest is over the pairs, so
    another Python version gives another dataset)."""

    name = SOURCE

    def __init__(self, root: Path = DEFAULT_STDLIB_DIR) -> None:
        self.root = Path(root)

    @cached_property
    def _pairs(self) -> list[CodePair]:
        return load_code_pairs(self.root)

    def pairs(self) -> list[CodePair]:
        return self._pairs

    def digest(self) -> str:
        digest = hashlib.sha256()
        for pair in self._pairs:
            for text in (pair.item_id, pair.item_text, pair.query_text):
                digest.update(text.encode())
                digest.update(b"\0")
        return digest.hexdigest()
