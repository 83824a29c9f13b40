"""The audit record every demo request flushes as its last cleanup; told by the client when to fail or dawdle.

The traffic generator decides which requests get a failing or a slow flush (query parameters
``fail=1`` and ``slow=1``), so it knows exactly how many failures the report should show.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio


class AuditFlushError(RuntimeError):
    pass


class AuditLog:
    __slots__ = ("route", "fail", "slow_seconds")

    def __init__(self, route: str, *, fail: bool, slow_seconds: float) -> None:
        self.route = route
        self.fail = fail
        self.slow_seconds = slow_seconds

    @classmethod
    def for_request(cls, route: str, query: Mapping[str, str], slow_seconds: float) -> AuditLog:
        slow = query.get("slow") == "1"
        return cls(route, fail=query.get("fail") == "1", slow_seconds=slow_seconds if slow else 0.0)

    async def flush(self) -> None:
        if self.slow_seconds:
            await anyio.sleep(self.slow_seconds)  # an audit store that is having a bad day
        if self.fail:
            raise AuditFlushError(f"audit store refused the record for {self.route}")
