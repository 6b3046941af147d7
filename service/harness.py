"""A real ``hubless serve`` process on loopback, and small demo galleries on disk to serve.

Shared by the benchmarks (load test, HTTP and write benchmarks) and the test suite's
reliability and deployment checks, so that both drive exactly the same server the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.algorithms import check_embeddings
from service.settings import DEMO_DIR

#: The checkout the server runs from (put on its ``PYTHONPATH``).
REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def write_gallery(
    directory: Path, *, rows: int = 300, bank_rows: int = 500, dim: int | None = None
) -> dict[str, str]:
    """Slices of the bundled demo data as files; returns the ``HUBLESS_*`` variables naming them.

    ``dim`` keeps only the first ``dim`` coordinates (a low dimension lets a fuzzer hit valid
    vectors). Small sizes make the startup precompute take well under a second.
    """
    directory.mkdir(parents=True, exist_ok=True)
    columns = slice(None) if dim is None else slice(0, dim)
    env = {}
    for name, count in (("gallery", rows), ("query_bank", bank_rows), ("gallery_bank", bank_rows)):
        path = directory / f"{name}.npy"
        np.save(path, np.load(DEMO_DIR / f"{name}.npy")[:count, columns].astype(np.float32))
        env[f"HUBLESS_{name.upper()}"] = str(path)
    ids_path = directory / "gallery_ids.txt"
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()[:rows]
    ids_path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    env["HUBLESS_GALLERY_IDS"] = str(ids_path)
    return env


def normalised(rows: np.ndarray) -> np.ndarray:
    """Rows as the server stores them (same validation and float32 normalisation)."""
    return check_embeddings(np.asarray(rows, dtype=np.float32), field="rows")


def demo_queries(count: int, offset: int = 0) -> np.ndarray:
    """Real query embeddings (WordNet glosses) from the bundled demo, float32."""
    return np.load(DEMO_DIR / "queries.npy")[offset : offset + count].astype(np.float32)


class Server:
    """``hubless serve`` in a subprocess on 127.0.0.1 and a free port; output goes to files.

    Inherited ``HUBLESS_*`` variables are dropped so only ``env`` configures it. Use it as a
    context manager (start, wait until ready, always stop) or call the steps yourself.
    """

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_dir = data_dir.parent / f"logs-{data_dir.name}"
        self._starts = 0

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"stderr-{self._starts}.log"

    def start(self) -> Server:
        self._starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env |= {"HUBLESS_DATA_DIR": str(self.data_dir), **self.env}
        command = [sys.executable, "-m", "service.cli", "serve", "--host", LOOPBACK]
        with (
            (self.log_dir / f"stdout-{self._starts}.log").open("wb") as out,
            self.stderr_path.open("wb") as err,
        ):
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], env=env, stdout=out, stderr=err
            )
        return self

    def logs(self) -> str:
        """Everything the current (or last) process wrote to stdout and stderr."""
        parts = [self.stderr_path, self.log_dir / f"stdout-{self._starts}.log"]
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in parts)

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """Poll ``/readyz`` until 200; fail fast (with the log tail) if the process dies."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    response = client.get("/readyz")
                    if response.status_code == 200:
                        return response.json()
                    if response.json().get("status") == "failed":
                        raise RuntimeError(f"startup failed: {response.text}\n{self.tail()}")
                time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it has not exited after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Server:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """A ready server on a small demo gallery under ``workdir`` (extra settings in ``env``)."""
    # InvGC on (off by default): the load mixes searches of both gallery views
    settings = write_gallery(workdir / "input") | {"HUBLESS_INVGC": "true"} | dict(env or {})
    with Server(workdir / "data", settings) as server:
        yield server
