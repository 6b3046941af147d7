"""``HUBLESS_BACKEND=milvus``: Milvus as the system of record (store, engine, follower, lease).

:mod:`~service.remote.bulk` loads a big gallery into it with independent shard workers and a
merge (``hubless load``).
"""
