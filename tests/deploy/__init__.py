"""Static checks of the Dockerfile, compose file and Kubernetes manifests against the code."""

import sys
from pathlib import Path

# The package is not installed into the venv and pytest's config sets no pythonpath: make the
# repository root importable (for ``service`` and ``benchmarks``).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
