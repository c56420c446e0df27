"""What a session store offers the provider, and what can go wrong, independent of the backend.

A store keeps, per session id, a small tree of files and directories addressed by paths relative to the session
(`events.jsonl`, `checkpoints/index.md`; the root is `""`). Every mutating call is fenced: the backend accepts it
only if this server may write to the session at that moment, checked atomically with the write (see fencing.py).

Errors derive from the builtin the CLI's own filesystem would raise (FileNotFoundError, IsADirectoryError, ...) so
the provider can map them to the protocol's codes (`ENOENT` or `UNKNOWN`) and keep their messages, which the CLI
passes through to the turn that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from copilot_fleet.errors import FleetError


class StoreError(FleetError, OSError):
    """Base of every error a store raises on purpose; `str()` names the session and path."""


class NotFound(StoreError, FileNotFoundError):
    pass


class AlreadyExists(StoreError, FileExistsError):
    pass


class NotADirectory(StoreError, NotADirectoryError):
    pass


class IsADirectory(StoreError, IsADirectoryError):
    pass


class DirectoryNotEmpty(StoreError):
    pass


class InvalidMove(StoreError):
    """A rename that cannot be done (a directory into itself, a directory over a file)."""


class QuotaExceeded(StoreError):
    """A file, the session or its number of entries would pass the store's bounds; nothing was written."""


class FencedWrite(StoreError, PermissionError):
    """This server may not write to the session now (no lease, or the lease is bound to another server)."""


class StoreUnavailable(StoreError, ConnectionError):
    """The backend did not answer or refused us; nothing is known to have been written."""


@dataclass(frozen=True)
class FileInfo:
    is_file: bool
    is_directory: bool
    size: int
    mtime: datetime
    birthtime: datetime


@dataclass(frozen=True)
class DirEntry:
    name: str
    is_directory: bool


@dataclass(frozen=True)
class Limits:
    """Bounds per session, enforced atomically with each write (a refused write changes nothing).

    events.jsonl grows by about 25 KB per turn with CLI 1.0.102 (it is read whole on every resume), so the default
    file bound allows some 2,500 turns; raise it together with the backend's memory.
    """

    max_file_bytes: int = 64 * 1024 * 1024
    max_session_bytes: int = 256 * 1024 * 1024
    max_entries: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_session_bytes", "max_entries"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class SessionStore(Protocol):
    """The operations of the session filesystem, for one server (its identity decides which writes pass).

    `relative` is the path below the session (`""` for its root); `shown` is the path as the CLI sent it, for
    error messages.
    """

    async def read_file(self, session_id: str, relative: str, shown: str | None = None) -> str: ...

    async def write_file(self, session_id: str, relative: str, content: str, shown: str | None = None) -> None: ...

    async def append_file(self, session_id: str, relative: str, content: str, shown: str | None = None) -> None: ...

    async def stat(self, session_id: str, relative: str, shown: str | None = None) -> FileInfo: ...

    async def exists(self, session_id: str, relative: str, shown: str | None = None) -> bool: ...

    async def mkdir(self, session_id: str, relative: str, recursive: bool, shown: str | None = None) -> None: ...

    async def readdir(self, session_id: str, relative: str, shown: str | None = None) -> list[DirEntry]: ...

    async def rm(
        self, session_id: str, relative: str, recursive: bool, force: bool, shown: str | None = None
    ) -> None: ...

    async def rename(
        self,
        session_id: str,
        source: str,
        destination: str,
        shown_source: str | None = None,
        shown_destination: str | None = None,
    ) -> None: ...
