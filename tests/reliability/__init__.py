"""Reliability tests: fuzzing, crash recovery, load, bad inputs and auth against real servers.

The harness (server subprocess, small galleries, the bad-input survey, the load run) lives in
``benchmarks/load_test.py`` so the tests check exactly what that script reports.
"""

import sys
from pathlib import Path

# The package is not installed into the venv and pytest's config sets no pythonpath: make the
# repository root importable (for ``service`` and ``benchmarks``).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
