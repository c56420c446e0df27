"""The session store in Redis: one script per request (lua.py), keys as in keys.py.

`RedisSessionStore(redis, keys, writer=ServerIdentity(...))` is what one provider uses: reads are plain, every
write is fenced by the session's lease and this server's registration (fencing.py). Redis failures become
StoreUnavailable with the Redis error's text, never a silent success.

Appends use APPEND on a string: O(appended bytes), one round trip. Redis grows a string's allocation ahead of its
length (doubling below 1 MiB), so a session's memory in Redis is up to about twice its bytes; the benchmark reports
both figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from .fencing import ServerIdentity
from .keys import StoreKeys
from .lua import READ_SCRIPT, WRITE_SCRIPT
from .store import (
    AlreadyExists,
    DirectoryNotEmpty,
    DirEntry,
    FencedWrite,
    FileInfo,
    InvalidMove,
    IsADirectory,
    Limits,
    NotADirectory,
    NotFound,
    QuotaExceeded,
    StoreError,
    StoreUnavailable,
)

_ERRORS: dict[str, type[StoreError]] = {
    "ENOENT": NotFound,
    "EEXIST": AlreadyExists,
    "ENOTDIR": NotADirectory,
    "EISDIR": IsADirectory,
    "ENOTEMPTY": DirectoryNotEmpty,
    "EINVAL": InvalidMove,
    "EQUOTA": QuotaExceeded,
    "FENCED": FencedWrite,
}


def describe_redis(client: aioredis.Redis) -> str:
    """host:port (or the socket path) of a Redis client, for messages; never the URL, which holds the password."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


class RedisSessionStore:
    """The SessionStore of one server (`writer`) in one scope. `writer=None` makes a read-only store."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: StoreKeys,
        *,
        writer: ServerIdentity | None,
        limits: Limits | None = None,
        require_lease: bool = True,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.writer = writer
        self.limits = limits or Limits()
        self.require_lease = require_lease
        self._read = client.register_script(READ_SCRIPT)
        self._write = client.register_script(WRITE_SCRIPT)

    # -- plumbing ---------------------------------------------------------------------------------------------

    async def _call(self, script: Any, keys: list[str], args: list[Any], session_id: str) -> list[Any]:
        try:
            result = await script(keys=keys, args=args)
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(
                f"session {session_id}: the session store (Redis at {describe_redis(self.redis)}) failed: {exc}"
            ) from exc
        status = _text(result[0])
        if status == "OK":
            return list(result[1:])
        raise _ERRORS.get(status, StoreError)(_text(result[1]) if len(result) > 1 else status)

    async def _read_op(self, op: str, session_id: str, relative: str, shown: str) -> list[Any]:
        keys = [self.keys.tree(session_id), self.keys.content(session_id, relative)]
        return await self._call(self._read, keys, [op, relative, shown], session_id)

    async def _write_op(
        self, op: str, session_id: str, relative: str, shown: str, extra: list[Any], second: str | None = None
    ) -> None:
        if self.writer is None:
            raise FencedWrite(f"fenced: session {session_id}: this store was opened read-only")
        k = self.keys
        keys = [
            k.bind(session_id), k.server(self.writer.server_id), k.meta(session_id), k.tree(session_id), k.index,
            k.content(session_id, relative), k.content(session_id, second if second is not None else relative),
        ]
        args = [
            op, session_id, self.writer.server_id, self.writer.instance, "1" if self.require_lease else "0",
            self.limits.max_file_bytes, self.limits.max_session_bytes, self.limits.max_entries,
            k.content_prefix(session_id), relative, shown, k.lease(session_id), *extra,
        ]
        await self._call(self._write, keys, args, session_id)

    # -- the filesystem ---------------------------------------------------------------------------------------
    # `shown` is the path as the CLI sent it, so error messages name what the CLI asked for.

    async def read_file(self, session_id: str, relative: str, shown: str | None = None) -> str:
        (content,) = await self._read_op("read", session_id, relative, shown or relative)
        return _text(content)

    async def stat(self, session_id: str, relative: str, shown: str | None = None) -> FileInfo:
        kind, size, mtime, birth = await self._read_op("stat", session_id, relative, shown or relative)
        is_dir = _text(kind) == "d"
        return FileInfo(is_file=not is_dir, is_directory=is_dir, size=int(size), mtime=_time(mtime),
                        birthtime=_time(birth))

    async def exists(self, session_id: str, relative: str, shown: str | None = None) -> bool:
        (found,) = await self._read_op("exists", session_id, relative, shown or relative)
        return int(found) == 1

    async def readdir(self, session_id: str, relative: str, shown: str | None = None) -> list[DirEntry]:
        flat = await self._read_op("readdir", session_id, relative, shown or relative)
        entries = [DirEntry(_text(flat[i]), _text(flat[i + 1]) == "d") for i in range(0, len(flat), 2)]
        return sorted(entries, key=lambda e: e.name)

    async def write_file(self, session_id: str, relative: str, content: str, shown: str | None = None) -> None:
        await self._write_op("write", session_id, relative, shown or relative, [content])

    async def append_file(self, session_id: str, relative: str, content: str, shown: str | None = None) -> None:
        await self._write_op("append", session_id, relative, shown or relative, [content])

    async def mkdir(self, session_id: str, relative: str, recursive: bool, shown: str | None = None) -> None:
        await self._write_op("mkdir", session_id, relative, shown or relative, ["1" if recursive else "0"])

    async def rm(
        self, session_id: str, relative: str, recursive: bool, force: bool, shown: str | None = None
    ) -> None:
        flags = ["1" if recursive else "0", "1" if force else "0"]
        await self._write_op("rm", session_id, relative, shown or relative, flags)

    async def rename(
        self,
        session_id: str,
        source: str,
        destination: str,
        shown_source: str | None = None,
        shown_destination: str | None = None,
    ) -> None:
        extra = [destination, shown_destination or destination]
        await self._write_op("rename", session_id, source, shown_source or source, extra, second=destination)
