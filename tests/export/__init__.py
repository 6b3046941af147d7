"""Tests of the Milvus backend / the augmented-gallery export.

The package is not installed into the venv: make the repository root importable so that
``.venv/bin/pytest tests/<this folder>`` works on its own (``python -m pytest`` needs nothing).
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
