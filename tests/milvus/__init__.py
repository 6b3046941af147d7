"""Tests of the Milvus backend and of a service on Milvus (milvus-lite)."""
