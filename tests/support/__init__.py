"""Shared test harness (imported as ``support``: the tests folder is on the path)."""
