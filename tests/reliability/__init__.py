"""Reliability tests: fuzzing, crash recovery and abuse against real servers.

The server harness (subprocess, small galleries) is :mod:`service.harness`, the one the
benchmarks use; the load run and the bad-input survey are checked in ``benchmarks/tests``.
"""
