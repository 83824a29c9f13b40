"""Each variant behind its own uvicorn server pinned to one core, loaded by ``wrk`` on the other.

All servers start first and stay up; rounds then alternate between them so that whatever else the
machine is doing spreads over every variant alike.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p99_ms: float


def parse_wrk(output: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if rps is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return Load(float(rps.group(1)), float(p99.group(1)) * _UNITS_MS[p99.group(2)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cores() -> tuple[str, str]:
    cores = sorted(os.sched_getaffinity(0))
    return (str(cores[0]), str(cores[-1]))


def _pinned(core: str, command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", core, *command] if taskset else command


def wait_until_serving(port: int, process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"benchmark server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"benchmark server on port {port} did not start within {timeout} s")


@contextmanager
def _servers(variants: Sequence[str], core: str) -> Iterator[dict[str, int]]:
    ports: dict[str, int] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in variants:
            port = free_port()
            command = [sys.executable, "-m", "benchmarks.server", name, str(port)]
            processes.append(subprocess.Popen(_pinned(core, command), cwd=_ROOT))
            ports[name] = port
        for process, port in zip(processes, ports.values(), strict=True):
            wait_until_serving(port, process)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _load(wrk: str, core: str, port: int, callbacks: int, seconds: float, connections: int) -> Load:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command.append(f"http://127.0.0.1:{port}/cb/{callbacks}")
    done = subprocess.run(_pinned(core, command), capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def run(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    *,
    seconds: float,
    rounds: int,
    connections: int = 16,
) -> dict[tuple[str, int], Load]:
    """Median requests/s and median p99 over ``rounds`` for each (variant, callbacks)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    server_core, load_core = _cores()
    samples: dict[tuple[str, int], list[Load]] = {(n, c): [] for n in variants for c in callback_counts}
    with _servers(variants, server_core) as ports:
        for name in variants:  # warm-up: imports, caches, first connections
            _load(wrk, load_core, ports[name], callback_counts[0], 1, connections)
        for round_ in range(rounds):
            order = list(variants[round_ % len(variants) :]) + list(variants[: round_ % len(variants)])
            for callbacks in callback_counts:
                for name in order:
                    load = _load(wrk, load_core, ports[name], callbacks, seconds, connections)
                    samples[(name, callbacks)].append(load)
    return {
        key: Load(
            statistics.median(load.requests_per_second for load in loads),
            statistics.median(load.p99_ms for load in loads),
        )
        for key, loads in samples.items()
    }
