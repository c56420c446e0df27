"""Answers the CLI server's `sessionFs.*` requests for every session on it, from a SessionStore.

The SDK's own dispatch routes these requests only to sessions its client created or resumed; a server-wide
provider must answer for sessions that other clients attach, so it dispatches on the request's `sessionId` itself.

The request and result shapes (protocol 3, SDK 1.0.25 / CLI 1.0.102) are written out here rather than taken from
the SDK's typed classes: `copilot.rpc` is a 69,000-line generated module that costs each provider about 34 MiB of
memory and a second of start-up, for ten flat shapes. The tests check every answer against those classes.

Error conventions (as the CLI reads them): a failed operation answers a result carrying
`error: {code: ENOENT|UNKNOWN, message}`; the CLI raises `<code>: <path>: <message>` in the operation that asked, and
a failed append of events.jsonl ends the turn with that text ("Failed to persist session events: ..."). `exists`
has no error field, so a store failure there is a JSON-RPC error (the CLI's call fails) instead of a false
"does not exist" that could make a resume look like a missing session.

Requests of one session are handled in arrival order (the CLI may send the next before the last is answered);
different sessions proceed concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from copilot_fleet.errors import FleetError

from .jsonrpc import METHOD_NOT_FOUND, RpcError
from .paths import PathRefused, Resolved, SessionPaths
from .store import FencedWrite, NotFound, SessionStore, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

INVALID_PARAMS = -32602
_EPOCH = datetime.fromtimestamp(0, tz=UTC)
Result = dict[str, Any] | None


class InvalidParams(FleetError, ValueError):
    pass


@dataclass(frozen=True)
class Request:
    """The parameters every sessionFs request may carry, checked for type."""

    session_id: str
    path: str
    content: str = ""
    recursive: bool = False
    force: bool = False
    dest: str = ""


def _text(params: dict[str, Any], name: str, required: bool = True) -> str:
    value = params.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidParams(f"{name!r} must be a string, got {type(value).__name__}")
    return value


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidParams(f"{name!r} must be true or false, got {value!r}")
    return bool(value)


def _parse(method: str, params: object) -> Request:
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    if method == "sessionFs.rename":
        return Request(_text(params, "sessionId"), _text(params, "src"), dest=_text(params, "dest"))
    return Request(
        _text(params, "sessionId"), _text(params, "path"),
        content=_text(params, "content", required=method in ("sessionFs.writeFile", "sessionFs.appendFile")),
        recursive=_flag(params, "recursive"), force=_flag(params, "force"),
    )


def _fs_error(exc: Exception) -> dict[str, str]:
    return {"code": "ENOENT" if isinstance(exc, FileNotFoundError) else "UNKNOWN", "message": str(exc)}


def _stat(is_dir: bool, size: int, mtime: datetime, birthtime: datetime) -> dict[str, Any]:
    return {"isFile": not is_dir, "isDirectory": is_dir, "size": size, "mtime": mtime.isoformat(),
            "birthtime": birthtime.isoformat()}


def _cwd_refusal(session_id: str, path: str, what: str) -> PathRefused:
    return PathRefused(
        f"session {session_id}: {what} of {path!r} refused: the initial working directory is not part of the "
        "session's state"
    )


class Counters:
    """What the provider did, for status and benchmarks."""

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.fenced = 0
        self.refused_paths = 0
        self.path_forms: dict[str, int] = {"registered": 0, "home": 0, "cwd": 0}


class SessionFsProvider:
    """`await provider.handle(method, params)` for every request the CLI sends; see module doc."""

    def __init__(self, store: SessionStore, paths: SessionPaths) -> None:
        self.store = store
        self.paths = paths
        self.counters = Counters()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._methods: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "sessionFs.readFile": self._read_file,
            "sessionFs.writeFile": self._write_file,
            "sessionFs.appendFile": self._append_file,
            "sessionFs.exists": self._exists,
            "sessionFs.stat": self._stat,
            "sessionFs.mkdir": self._mkdir,
            "sessionFs.readdir": self._readdir,
            "sessionFs.readdirWithTypes": self._readdir_with_types,
            "sessionFs.rm": self._rm,
            "sessionFs.rename": self._rename,
        }

    @staticmethod
    def capabilities() -> dict[str, bool]:
        """Declared at registration: no binary and no SQLite requests (the CLI then never sends them)."""
        return {"binary": False, "sqlite": False}

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        run = self._methods.get(method)
        if run is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} (this provider serves sessionFs.* only)")
        try:
            request = _parse(method, params)
        except InvalidParams as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc}") from None
        lock = self._locks.get(request.session_id)
        if lock is None:
            lock = self._locks[request.session_id] = asyncio.Lock()
        self.counters.requests += 1
        async with lock:
            return await run(request)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _resolve(self, session_id: str, path: str) -> Resolved:
        try:
            where = self.paths.resolve(session_id, path)
        except PathRefused:
            self.counters.refused_paths += 1
            raise
        self.counters.path_forms[where.form] += 1
        return where

    def _note(self, exc: Exception) -> None:
        self.counters.failed += 1
        if isinstance(exc, FencedWrite):
            self.counters.fenced += 1
            logger.warning("%s", exc)
        elif isinstance(exc, StoreUnavailable):
            logger.error("%s", exc)

    async def _state_write(self, r: Request, op: Callable[[str], Awaitable[None]]) -> Result:
        """Run a mutating op on the session's file at `r.path`; the error object on failure, else None."""
        try:
            where = self._resolve(r.session_id, r.path)
            if where.kind == "cwd":
                raise _cwd_refusal(r.session_id, r.path, "changing")
            await op(where.relative)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return _fs_error(exc)
        return None

    # -- the requests -----------------------------------------------------------------------------------------

    async def _read_file(self, r: Request) -> Result:
        try:
            where = self._resolve(r.session_id, r.path)
            if where.kind == "cwd":
                raise _cwd_refusal(r.session_id, r.path, "reading")
            content = await self.store.read_file(r.session_id, where.relative, r.path)
        except (PathRefused, StoreError) as exc:
            if not isinstance(exc, NotFound):  # the CLI probes for optional files: a miss is not a failure
                self._note(exc)
            return {"content": "", "error": _fs_error(exc)}
        return {"content": content}

    async def _write_file(self, r: Request) -> Result:
        return await self._state_write(r, lambda rel: self.store.write_file(r.session_id, rel, r.content, r.path))

    async def _append_file(self, r: Request) -> Result:
        return await self._state_write(r, lambda rel: self.store.append_file(r.session_id, rel, r.content, r.path))

    async def _mkdir(self, r: Request) -> Result:
        return await self._state_write(r, lambda rel: self.store.mkdir(r.session_id, rel, r.recursive, r.path))

    async def _rm(self, r: Request) -> Result:
        return await self._state_write(
            r, lambda rel: self.store.rm(r.session_id, rel, r.recursive, r.force, r.path)
        )

    async def _rename(self, r: Request) -> Result:
        try:
            dest = self._resolve(r.session_id, r.dest)
            if dest.kind == "cwd":
                raise _cwd_refusal(r.session_id, r.dest, "renaming onto")
        except PathRefused as exc:
            self._note(exc)
            return _fs_error(exc)
        return await self._state_write(
            r, lambda rel: self.store.rename(r.session_id, rel, dest.relative, r.path, r.dest)
        )

    async def _exists(self, r: Request) -> Result:
        try:
            where = self._resolve(r.session_id, r.path)
        except PathRefused as exc:
            self._note(exc)
            return {"exists": False}
        if where.kind == "cwd":
            return {"exists": True}
        try:
            found = await self.store.exists(r.session_id, where.relative, r.path)
        except StoreError as exc:
            self._note(exc)
            raise RpcError(-32603, str(exc)) from None
        return {"exists": found}

    async def _stat(self, r: Request) -> Result:
        try:
            where = self._resolve(r.session_id, r.path)
            if where.kind == "cwd":
                return _stat(True, 0, _EPOCH, _EPOCH)
            info = await self.store.stat(r.session_id, where.relative, r.path)
        except (PathRefused, StoreError) as exc:
            if not isinstance(exc, NotFound):
                self._note(exc)
            now = datetime.now(UTC).isoformat()
            return {"isFile": False, "isDirectory": False, "size": 0, "mtime": now, "birthtime": now,
                    "error": _fs_error(exc)}
        return _stat(info.is_directory, info.size, info.mtime, info.birthtime)

    async def _list(self, r: Request) -> list[tuple[str, bool]]:
        where = self._resolve(r.session_id, r.path)
        if where.kind == "cwd":
            raise _cwd_refusal(r.session_id, r.path, "listing")
        return [(e.name, e.is_directory) for e in await self.store.readdir(r.session_id, where.relative, r.path)]

    async def _readdir(self, r: Request) -> Result:
        try:
            entries = await self._list(r)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return {"entries": [], "error": _fs_error(exc)}
        return {"entries": [name for name, _ in entries]}

    async def _readdir_with_types(self, r: Request) -> Result:
        try:
            entries = await self._list(r)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return {"entries": [], "error": _fs_error(exc)}
        return {"entries": [{"name": name, "type": "directory" if is_dir else "file"} for name, is_dir in entries]}
