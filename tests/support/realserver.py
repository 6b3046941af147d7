"""A real ``hubless`` server process on a free loopback port, for tests that need one (a real
HTTP client over the network, a browser)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from service.client import HublessClient, NotReadyError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(command: Sequence[str], data_dir: Path, **settings: str) -> Iterator[str]:
    """Run ``command --host 127.0.0.1 --port P`` with ``HUBLESS_DATA_DIR=data_dir`` and the
    given ``HUBLESS_*`` settings (none inherited), yield its URL once ready, stop it after."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
        "HUBLESS_DATA_DIR": str(data_dir),
        "HUBLESS_LOG_LEVEL": "WARNING",
        **{f"HUBLESS_{name.upper()}": value for name, value in settings.items()},
    }
    log_path = data_dir / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with HublessClient(url) as client:
            try:
                client.wait_ready(timeout=60)
            except NotReadyError:
                log.flush()
                raise RuntimeError(log_path.read_text()[-2000:]) from None
        yield url
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process`` and wait for it (killed after 10 s)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
