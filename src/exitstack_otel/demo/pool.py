"""A small async connection pool: the kind of resource a request must give back, whatever happens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel


class Connection:
    __slots__ = ("ident", "queries")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.queries = 0

    async def query(self, rows: int = 1) -> list[dict[str, int]]:
        await anyio.lowlevel.checkpoint()  # a real driver would await the network here
        self.queries += 1
        return [{"connection": self.ident, "row": row} for row in range(rows)]


class ConnectionPool:
    """``size`` connections; ``acquire`` waits for a free one, ``release`` hands it back."""

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.size = size
        self._free = [Connection(ident) for ident in range(size)]
        # made on first use, in the serving event loop: anyio binds a primitive to the backend
        # running where it is created, and an app may be built under another one (or none)
        self._available: anyio.Semaphore | None = None
        self._leased: set[int] = set()
        self.acquired = 0
        self.released = 0

    @property
    def in_use(self) -> int:
        return len(self._leased)

    def _semaphore(self) -> anyio.Semaphore:
        if self._available is None:
            self._available = anyio.Semaphore(self.size)
        return self._available

    async def acquire(self) -> Connection:
        await self._semaphore().acquire()
        connection = self._free.pop()
        self._leased.add(connection.ident)
        self.acquired += 1
        return connection

    async def release(self, connection: Connection) -> None:
        if connection.ident not in self._leased:
            raise ValueError(f"connection {connection.ident} is not leased from this pool")
        self._leased.discard(connection.ident)
        self._free.append(connection)
        self.released += 1
        self._semaphore().release()

    async def cursor(self, rows: int) -> ResultCursor:
        return ResultCursor(self, await self.acquire(), rows)


class CursorClosedError(RuntimeError):
    pass


class ResultCursor:
    """Rows streamed from a leased connection; ``close`` gives the connection back.

    Reading after ``close`` raises: a cleanup that ran before the last row would break the stream.
    """

    def __init__(self, pool: ConnectionPool, connection: Connection, rows: int) -> None:
        self._pool = pool
        self._connection = connection
        self._rows = rows
        self.closed = False

    async def rows(self) -> AsyncIterator[bytes]:
        for _ in range(self._rows):
            if self.closed:
                raise CursorClosedError("the cursor was closed while its rows were still being read")
            (row,) = await self._connection.query(1)
            yield f"{row['connection']},{self._connection.queries}\n".encode()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._pool.release(self._connection)
