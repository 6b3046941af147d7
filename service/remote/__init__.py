"""``HUBLESS_BACKEND=milvus``: Milvus as the system of record (store, engine, follower, lease)."""
