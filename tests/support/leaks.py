"""Counting a process's open descriptors, temporary files and resident memory, for leak tests.

Linux only (``/proc``). Python's ``TemporaryFile`` uses ``O_TMPFILE`` where it can: such a file
has no directory entry, only a descriptor whose link names the directory, so temporary files are
found both ways: descriptors pointing into the directory, and entries left in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .polling import last_reading


def open_fds(pid: int | None = None) -> dict[int, str]:
    """Descriptor number -> what it points at (``socket:[..]``, a path, ``pipe:[..]``)."""
    fd_dir = Path(f"/proc/{pid or os.getpid()}/fd")
    found: dict[int, str] = {}
    for entry in os.listdir(fd_dir):
        try:
            found[int(entry)] = os.readlink(fd_dir / entry)
        except FileNotFoundError:  # closed while we looked
            continue
    return found


def temp_files(tempdir: Path, pid: int | None = None) -> list[str]:
    """Temporary files under ``tempdir`` that are open in ``pid`` or still exist on disk."""
    root = str(tempdir.resolve())
    held = [target for target in open_fds(pid).values() if target.startswith(root + "/")]
    on_disk = [str(path) for path in tempdir.rglob("*")]
    return held + on_disk


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size: ``/proc/PID/statm`` counts pages, of the machine's own page size."""
    with open(f"/proc/{pid or 'self'}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    fds: dict[int, str]
    temp_files: list[str]

    @property
    def fd_count(self) -> int:
        return len(self.fds)


def usage(tempdir: Path, pid: int | None = None) -> Usage:
    return Usage(open_fds(pid), temp_files(tempdir, pid))


def settle(check: Callable[[], Usage], done: Callable[[Usage], bool], timeout: float = 20.0) -> Usage:
    """Polls until ``done`` holds, then returns that usage; returns the last one on timeout.

    Cleanup runs after the response has been sent, so a client can see its answer a moment before
    the server has closed everything; callers assert on what this returns.
    """
    return last_reading(check, done, timeout)
