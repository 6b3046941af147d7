"""The writer lease: one writer per collection prefix, taken over once it expires.

A ``lease`` row in ``P_state`` names the holder (a random id, host and pid) and its expiry
(Unix time). The writer takes it at start, renews it every third of its duration in a thread
and checks before each change that it still holds it (a writer cut off from Milvus longer than
the lease stops writing: 503). Milvus has no compare-and-set, so two writers starting within
the same instant are settled by reading the row back after a short pause: the one that no
longer finds itself there refuses to start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from service.backends.base import BackendUnavailable
from service.remote.store import RemoteStore

log = logging.getLogger(__name__)

KEY = "lease"
#: Pause between writing the lease and reading it back (two writers starting together).
SETTLE_SECONDS = 0.3


class LeaseHeld(RuntimeError):
    """Another live writer holds the lease: this process must not write."""


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class Lease:
    def __init__(self, store: RemoteStore, seconds: float) -> None:
        self.store, self.seconds = store, seconds
        self.holder = f"{uuid.uuid4().hex[:12]}@{socket.gethostname()}:{os.getpid()}"
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse_if_held(self) -> None:
        current = self.store.get_state(KEY)
        if current and current["holder"] != self.holder and current["expires"] > time.time():
            raise LeaseHeld(
                f"another writer holds the lease of Milvus collections {self.store.prefix}_*: "
                f"{current['holder']} until {_when(current['expires'])} (renewed every "
                f"{self.seconds / 3:g} s); run this replica with HUBLESS_MILVUS_READ_ONLY=true, "
                "or start it once that writer is gone and its lease expired"
            )

    def _write(self) -> None:
        now = time.time()
        self.store.put_state(KEY, {"holder": self.holder, "expires": now + self.seconds})
        self._valid_until = now + self.seconds

    def acquire(self) -> None:
        """Take the lease (raises LeaseHeld naming the holder and expiry) and keep renewing."""
        self._refuse_if_held()
        self._write()
        time.sleep(SETTLE_SECONDS)
        self._refuse_if_held()
        log.info("writer lease taken", extra={"holder": self.holder, "seconds": self.seconds})
        self._thread = threading.Thread(target=self._renew, name="writer-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._refuse_if_held()
                self._write()
            except LeaseHeld:
                log.error("writer lease lost to another writer: no more changes")
                self._valid_until = 0.0
                return
            except Exception as exc:  # Milvus unreachable: retry; check() stops writes
                log.warning("writer lease renewal failed", extra={"error": str(exc)})

    def check(self) -> None:
        """Before a change: the lease must still be ours (with a margin for the change)."""
        if time.time() > self._valid_until - self.seconds / 6:
            raise BackendUnavailable(
                "this writer no longer holds a valid lease on the Milvus collections "
                "(renewal failed or another writer took over); changes are refused"
            )

    def release(self) -> None:
        """At shutdown: stop renewing and free the lease for the next writer at once."""
        self._stop.set()
        try:
            current = self.store.get_state(KEY)
            if current and current["holder"] == self.holder:
                self.store.delete_states(f'key == "{KEY}"')
        except Exception as exc:  # it expires on its own
            log.warning("could not release the writer lease", extra={"error": str(exc)})
