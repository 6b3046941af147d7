"""Milvus as the system of record: the gallery's rows and the small shared state live in Milvus.

:mod:`~service.remote.bulk` loads a big gallery into it with independent shard workers and a
merge (``hubless load``).
"""
