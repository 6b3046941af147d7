"""The tests' shared harness, imported as ``tests.support.<module>`` (the repository root is on
pytest's ``pythonpath``; no test edits ``sys.path`` or imports from ``benchmarks/``).

- :mod:`~tests.support.reference`: slow, obvious float64 loop references of every formula;
- :mod:`~tests.support.demo`: small real data sets (slices of the bundled demo) on disk;
- :mod:`~tests.support.api`: a TestClient of a real app, and assertions on its answers;
- :mod:`~tests.support.backends`: one backend search as the engine asks for it;
- :mod:`~tests.support.milvus`: a milvus-lite server and `hubless serve` processes around it.
"""
