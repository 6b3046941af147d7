"""Engine tests (their shared data: :mod:`tests.support.demo`)."""
