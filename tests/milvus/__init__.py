"""Tests that deploy/milvus and docs/milvus.md match the code (the engine itself: tests/remote)."""
