"""HTTP API tests (FastAPI TestClient; helpers in :mod:`tests.support.api`)."""
