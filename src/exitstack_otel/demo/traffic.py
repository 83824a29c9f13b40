"""Traffic for the demo service: a weighted mix of request kinds at a target rate and concurrency.

The generator decides which requests get a failing or a slow cleanup (``fail=1``/``slow=1``), and
counts them, so a report can be checked against what was asked for.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import httpx
from websockets.sync.client import connect as ws_connect

KINDS = ("upload", "pool", "stream", "websocket")
DEFAULT_MIX: Mapping[str, float] = {"upload": 3.0, "pool": 4.0, "stream": 2.0, "websocket": 1.0}
REQUEST_TIMEOUT_SECONDS = 10.0
UPLOAD_BYTES = 4096
# Starlette spools an upload to a real temporary file past 1 MiB: some uploads are that large, so
# FormData.close has files on disk to close as well
LARGE_UPLOAD_BYTES = 1536 * 1024
LARGE_UPLOAD_SHARE = 0.1
WEBSOCKET_MESSAGES = 3


@dataclass(frozen=True)
class TrafficConfig:
    target: str
    rate: float = 40.0
    concurrency: int = 8
    duration: float | None = 20.0  # None: until stopped
    failure_share: float = 0.05
    slow_share: float = 0.02
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.target.startswith(("http://", "https://")):
            raise ValueError(f"target must be an http:// or https:// URL, not {self.target!r}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a finite number > 0 of requests per second, not {self.rate}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a finite number > 0 of seconds or None, not {self.duration}")
        for name, share in (("failure_share", self.failure_share), ("slow_share", self.slow_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {share}")
        unknown = sorted(set(self.mix) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown request kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
        weights = self.mix.values()
        if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or not sum(weights) > 0:
            raise ValueError("mix weights must be finite, >= 0 and not all 0")


def parse_mix(text: str) -> dict[str, float]:
    """``"upload=3,pool=4"`` -> ``{"upload": 3.0, "pool": 4.0}``; kinds left out get weight 0."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"mix entries look like kind=weight, not {part.strip()!r}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {weight.strip()!r}") from None
    TrafficConfig("http://check", mix=mix)  # same validation as a real run
    return mix


@dataclass
class KindCounts:
    sent: int = 0  # requests started
    completed: int = 0  # answered in full with a 2xx
    errors: int = 0  # transport errors and unexpected statuses
    meant_to_fail: int = 0  # completed requests whose cleanup was told to fail
    meant_slow: int = 0  # completed requests whose cleanup was told to be slow
    interrupted: int = 0  # in flight when the run was stopped


@dataclass
class TrafficStats:
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    kinds: dict[str, KindCounts] = field(default_factory=lambda: {kind: KindCounts() for kind in KINDS})
    last_error: str | None = None

    def total(self) -> KindCounts:
        total = KindCounts()
        for counts in self.kinds.values():
            for key, value in asdict(counts).items():
                setattr(total, key, getattr(total, key) + value)
        return total

    def elapsed(self) -> float:
        return (self.finished if self.finished is not None else time.monotonic()) - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": round(self.elapsed(), 3),
            "kinds": {kind: asdict(counts) for kind, counts in self.kinds.items()},
            "total": asdict(self.total()),
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class _Job:
    kind: str
    fail: bool
    slow: bool
    large: bool  # for an upload: past the size Starlette keeps in memory

    def params(self) -> dict[str, str]:
        return {"fail": "1" if self.fail else "0", "slow": "1" if self.slow else "0"}

    def headers(self) -> dict[str, str]:
        # A cleanup that raises after the response makes uvicorn close the connection; a request
        # already on its way over that kept-alive connection would then fail without being served.
        return {"Connection": "close"} if self.fail else {}


class _UnexpectedStatus(Exception):
    pass


class TrafficGenerator:
    def __init__(self, config: TrafficConfig, stats: TrafficStats | None = None) -> None:
        self.config = config
        self.stats = stats or TrafficStats()
        self._random = random.Random(config.seed)
        self._kinds = [kind for kind in KINDS if config.mix.get(kind, 0) > 0]
        self._weights = [config.mix[kind] for kind in self._kinds]
        self._senders: dict[str, Callable[[httpx.AsyncClient, _Job], Awaitable[None]]] = {
            "upload": self._upload,
            "pool": self._pool,
            "stream": self._stream,
            "websocket": self._websocket,
        }

    async def run(self) -> TrafficStats:
        """Send until the duration is over or the caller cancels (requests in flight are then dropped)."""
        self.stats.started = time.monotonic()
        try:
            await self._send_all()
        finally:
            self.stats.finished = time.monotonic()
        return self.stats

    async def _send_all(self) -> None:
        config = self.config
        limits = httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        )
        send, receive = anyio.create_memory_object_stream[_Job](0)
        async with (
            httpx.AsyncClient(
                base_url=config.target, limits=limits, timeout=REQUEST_TIMEOUT_SECONDS
            ) as client,
            anyio.create_task_group() as tg,
        ):
            for _ in range(config.concurrency):
                tg.start_soon(self._worker, client, receive.clone())
            receive.close()
            async with send:
                await self._schedule(send)

    async def _schedule(self, send: anyio.abc.ObjectSendStream[_Job]) -> None:
        # Ticks sit on a fixed timeline, so a late one does not push back the ones after it. When
        # every worker is busy, send() waits; the ticks missed meanwhile are skipped, not sent in a
        # burst: the rate drops and the run still ends at its deadline.
        interval = 1.0 / self.config.rate
        start = time.monotonic()
        deadline = None if self.config.duration is None else start + self.config.duration
        tick = 0
        while True:
            due = start + tick * interval
            if deadline is not None and due >= deadline:
                return
            now = time.monotonic()
            if due > now:
                await anyio.sleep(due - now)
            elif now - due > interval:
                tick = int((now - start) / interval)
                continue
            await send.send(self._next_job())
            tick += 1

    def _next_job(self) -> _Job:
        kind = self._random.choices(self._kinds, self._weights)[0]
        return _Job(
            kind,
            fail=self._random.random() < self.config.failure_share,
            slow=self._random.random() < self.config.slow_share,
            large=self._random.random() < LARGE_UPLOAD_SHARE,
        )

    async def _worker(self, client: httpx.AsyncClient, receive: anyio.abc.ObjectReceiveStream[_Job]) -> None:
        async with receive:
            async for job in receive:
                counts = self.stats.kinds[job.kind]
                counts.sent += 1
                try:
                    await self._senders[job.kind](client, job)
                except anyio.get_cancelled_exc_class():
                    counts.interrupted += 1
                    raise
                except Exception as exc:  # a refused connection or a 500 is counted, never fatal
                    counts.errors += 1
                    self.stats.last_error = f"{job.kind}: {type(exc).__name__}: {exc}"[:200]
                else:
                    counts.completed += 1
                    counts.meant_to_fail += job.fail
                    counts.meant_slow += job.slow

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if not response.is_success:
            raise _UnexpectedStatus(f"{response.request.method} {response.url.path}: {response.status_code}")

    async def _upload(self, client: httpx.AsyncClient, job: _Job) -> None:
        size = LARGE_UPLOAD_BYTES if job.large else UPLOAD_BYTES
        files = {"file": ("readings.csv", random.randbytes(size), "text/csv")}
        response = await client.post(
            "/upload", params=job.params(), headers=job.headers(), data={"note": "demo"}, files=files
        )
        self._check(response)

    async def _pool(self, client: httpx.AsyncClient, job: _Job) -> None:
        self._check(await client.get("/pool", params=job.params(), headers=job.headers()))

    async def _stream(self, client: httpx.AsyncClient, job: _Job) -> None:
        async with client.stream("GET", "/stream", params=job.params(), headers=job.headers()) as response:
            self._check(response)
            async for _ in response.aiter_bytes():
                pass

    async def _websocket(self, client: httpx.AsyncClient, job: _Job) -> None:
        url = httpx.URL(self.config.target).join("/ws").copy_merge_params(job.params())
        ws_url = str(url.copy_with(scheme="wss" if url.scheme == "https" else "ws"))
        # websockets' blocking client in a worker thread runs under asyncio and trio alike
        await anyio.to_thread.run_sync(_websocket_session, ws_url)


def _websocket_session(url: str) -> None:
    with ws_connect(
        url, open_timeout=REQUEST_TIMEOUT_SECONDS, close_timeout=REQUEST_TIMEOUT_SECONDS
    ) as websocket:
        for index in range(WEBSOCKET_MESSAGES):
            websocket.send(f"reading {index}")
            websocket.recv(timeout=REQUEST_TIMEOUT_SECONDS)
