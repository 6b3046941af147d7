"""The reader's poll loop: adopt every version the writer commits.

Every ``HUBLESS_MILVUS_POLL_SECONDS`` (default 0.5) a reader reads the ``version`` row and, if it
moved, the bank-state rows written since its version (:meth:`RemoteEngine.refresh`). The gallery
rows need no copying (they are in Milvus), so a reader serves a committed change within one
poll plus one read of the changed rows: the documented guarantee is 2 s.
"""

from __future__ import annotations

import logging
import threading

from service.remote.engine import RemoteEngine

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, engine: RemoteEngine, seconds: float) -> None:
        self.engine, self.seconds = engine, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.engine.refresh()
            except Exception as exc:  # Milvus unreachable: keep serving the last version
                log.warning("following the writer failed", extra={"error": str(exc)})
