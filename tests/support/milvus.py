"""A shared milvus-lite gRPC server and ``hubless serve`` processes on it, for the tests of the
remote mode (writer and readers as separate processes sharing only Milvus)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.settings import Settings
from tests.support.realserver import stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def milvus_server(data_dir: Path, timeout: float = 60.0) -> Iterator[str]:
    """``milvus-lite server`` on a free port; yields its URI once it accepts connections."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "milvus-lite"),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (data_dir.parent / f"milvus-{port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("milvus-lite server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The ``HUBLESS_*`` variables of ``settings`` (only those set), nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    for name, value in settings.model_dump(exclude_unset=True).items():
        if value is not None:
            env[f"HUBLESS_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    env["HUBLESS_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


class Serve:
    """One ``hubless serve`` process (not waited for: :meth:`wait_ready`)."""

    def __init__(self, settings: Settings, log_path: Path, **extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-m", "service.cli", "serve"]
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(self.port)],
            env=environment(settings, **extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def readyz_status(self, timeout: float = 120.0) -> int:
        """The status of /readyz once the process listens (it may still be starting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.http.get("/readyz").status_code
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"not listening: {self.log()[-2000:]}") from None
                time.sleep(0.2)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited {self.process.returncode}: {self.log()[-2000:]}")
            try:
                answer = self.http.get("/readyz")
                if answer.status_code == 200:
                    return answer.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.close()

    def close(self) -> None:
        self.http.close()
        self._log.close()

    def rss_mb(self) -> float:
        """Resident memory of the process (Linux /proc), MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")
