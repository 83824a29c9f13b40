"""Programs a test starts in a subprocess: a port to give them, waiting until one answers, stopping it."""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any

import httpx

from .polling import wait_until

# seconds; generous bounds for a loaded machine, never measurements
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago, for a program that binds its own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(process: subprocess.Popen[Any], url: str, timeout: float = STARTUP_TIMEOUT) -> None:
    """Return once ``url`` answers at all; fail at once if ``process`` exits first."""

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
        except httpx.TransportError:  # not listening yet
            return False
        return True

    wait_until(answers, f"{url} to answer", timeout, interval=0.1)


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> bytes:
    """SIGTERM (uvicorn's graceful shutdown, which flushes the exporters), SIGKILL after
    ``timeout``; the process's stderr if it was piped."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr or b""
