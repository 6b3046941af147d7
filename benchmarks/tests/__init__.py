"""Tests of the benchmark scripts themselves (they never rot, and what they report to the docs
is what the service does). They live beside the scripts they import; ``tests/`` imports
nothing from ``benchmarks/``. Collected by the default ``python -m pytest`` (``testpaths``)."""
