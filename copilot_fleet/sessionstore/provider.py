"""Answers the CLI server's `sessionFs.*` requests for every session on it, from a SessionStore.

The SDK's own dispatch routes these requests only to sessions its client created or resumed; a server-wide
provider must answer for sessions that other clients attach, so it dispatches on the request's `sessionId` itself.
Request and result shapes are the SDK's public typed classes (`copilot.rpc`), so a protocol change shows up as a
parse error here, not as a silently wrong answer.

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
from datetime import UTC, datetime
from typing import Any

from copilot.rpc import (
    SessionFSAppendFileRequest,
    SessionFSError,
    SessionFSErrorCode,
    SessionFSExistsRequest,
    SessionFSExistsResult,
    SessionFSMkdirRequest,
    SessionFSReaddirRequest,
    SessionFSReaddirResult,
    SessionFSReaddirWithTypesEntry,
    SessionFSReaddirWithTypesEntryType,
    SessionFSReaddirWithTypesRequest,
    SessionFSReaddirWithTypesResult,
    SessionFSReadFileRequest,
    SessionFSReadFileResult,
    SessionFSRenameRequest,
    SessionFSRmRequest,
    SessionFSStatRequest,
    SessionFSStatResult,
    SessionFSWriteFileRequest,
)

from .jsonrpc import METHOD_NOT_FOUND, RpcError
from .paths import PathRefused, Resolved, SessionPaths
from .store import FencedWrite, NotFound, SessionStore, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

INVALID_PARAMS = -32602
_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def _fs_error(exc: Exception) -> SessionFSError:
    code = SessionFSErrorCode.ENOENT if isinstance(exc, FileNotFoundError) else SessionFSErrorCode.UNKNOWN
    return SessionFSError(code=code, message=str(exc))


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
        self._methods: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[Any], Awaitable[Any]]]] = {
            "sessionFs.readFile": (SessionFSReadFileRequest.from_dict, self._read_file),
            "sessionFs.writeFile": (SessionFSWriteFileRequest.from_dict, self._write_file),
            "sessionFs.appendFile": (SessionFSAppendFileRequest.from_dict, self._append_file),
            "sessionFs.exists": (SessionFSExistsRequest.from_dict, self._exists),
            "sessionFs.stat": (SessionFSStatRequest.from_dict, self._stat),
            "sessionFs.mkdir": (SessionFSMkdirRequest.from_dict, self._mkdir),
            "sessionFs.readdir": (SessionFSReaddirRequest.from_dict, self._readdir),
            "sessionFs.readdirWithTypes": (SessionFSReaddirWithTypesRequest.from_dict, self._readdir_with_types),
            "sessionFs.rm": (SessionFSRmRequest.from_dict, self._rm),
            "sessionFs.rename": (SessionFSRenameRequest.from_dict, self._rename),
        }

    @staticmethod
    def capabilities() -> dict[str, bool]:
        """Declared at registration: no binary and no SQLite requests (the CLI then never sends them)."""
        return {"binary": False, "sqlite": False}

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        entry = self._methods.get(method)
        if entry is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} (this provider serves sessionFs.* only)")
        parse, run = entry
        try:
            request = parse(params)
        except (AssertionError, TypeError, ValueError, KeyError) as exc:
            raise RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc or type(exc).__name__}") from None
        session_id = request.session_id
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
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

    async def _state_write(self, session_id: str, path: str, op: Callable[[str], Awaitable[None]]) -> dict | None:
        """Run a mutating op on the session's file at `path`; the SessionFSError dict on failure, else None."""
        try:
            where = self._resolve(session_id, path)
            if where.kind == "cwd":
                raise _cwd_refusal(session_id, path, "changing")
            await op(where.relative)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return _fs_error(exc).to_dict()
        return None

    # -- the requests -----------------------------------------------------------------------------------------

    async def _read_file(self, r: SessionFSReadFileRequest) -> dict:
        try:
            where = self._resolve(r.session_id, r.path)
            if where.kind == "cwd":
                raise _cwd_refusal(r.session_id, r.path, "reading")
            content = await self.store.read_file(r.session_id, where.relative, r.path)
        except (PathRefused, StoreError) as exc:
            if not isinstance(exc, NotFound):  # the CLI probes for optional files: a miss is not a failure
                self._note(exc)
            return SessionFSReadFileResult(content="", error=_fs_error(exc)).to_dict()
        return SessionFSReadFileResult(content=content).to_dict()

    async def _write_file(self, r: SessionFSWriteFileRequest) -> dict | None:
        return await self._state_write(
            r.session_id, r.path, lambda rel: self.store.write_file(r.session_id, rel, r.content, r.path)
        )

    async def _append_file(self, r: SessionFSAppendFileRequest) -> dict | None:
        return await self._state_write(
            r.session_id, r.path, lambda rel: self.store.append_file(r.session_id, rel, r.content, r.path)
        )

    async def _mkdir(self, r: SessionFSMkdirRequest) -> dict | None:
        return await self._state_write(
            r.session_id, r.path, lambda rel: self.store.mkdir(r.session_id, rel, bool(r.recursive), r.path)
        )

    async def _rm(self, r: SessionFSRmRequest) -> dict | None:
        return await self._state_write(
            r.session_id,
            r.path,
            lambda rel: self.store.rm(r.session_id, rel, bool(r.recursive), bool(r.force), r.path),
        )

    async def _rename(self, r: SessionFSRenameRequest) -> dict | None:
        try:
            dest = self._resolve(r.session_id, r.dest)
            if dest.kind == "cwd":
                raise _cwd_refusal(r.session_id, r.dest, "renaming onto")
        except PathRefused as exc:
            self._note(exc)
            return _fs_error(exc).to_dict()
        return await self._state_write(
            r.session_id,
            r.src,
            lambda rel: self.store.rename(r.session_id, rel, dest.relative, r.src, r.dest),
        )

    async def _exists(self, r: SessionFSExistsRequest) -> dict:
        try:
            where = self._resolve(r.session_id, r.path)
        except PathRefused as exc:
            self._note(exc)
            return SessionFSExistsResult(exists=False).to_dict()
        if where.kind == "cwd":
            return SessionFSExistsResult(exists=True).to_dict()
        try:
            found = await self.store.exists(r.session_id, where.relative, r.path)
        except StoreError as exc:
            self._note(exc)
            raise RpcError(-32603, str(exc)) from None
        return SessionFSExistsResult(exists=found).to_dict()

    async def _stat(self, r: SessionFSStatRequest) -> dict:
        try:
            where = self._resolve(r.session_id, r.path)
            if where.kind == "cwd":
                return SessionFSStatResult(
                    birthtime=_EPOCH, is_directory=True, is_file=False, mtime=_EPOCH, size=0
                ).to_dict()
            info = await self.store.stat(r.session_id, where.relative, r.path)
        except (PathRefused, StoreError) as exc:
            if not isinstance(exc, NotFound):
                self._note(exc)
            now = datetime.now(UTC)
            return SessionFSStatResult(
                birthtime=now, is_directory=False, is_file=False, mtime=now, size=0, error=_fs_error(exc)
            ).to_dict()
        return SessionFSStatResult(
            birthtime=info.birthtime, is_directory=info.is_directory, is_file=info.is_file, mtime=info.mtime,
            size=info.size,
        ).to_dict()

    async def _list(self, session_id: str, path: str) -> list[tuple[str, bool]]:
        where = self._resolve(session_id, path)
        if where.kind == "cwd":
            raise _cwd_refusal(session_id, path, "listing")
        return [(e.name, e.is_directory) for e in await self.store.readdir(session_id, where.relative, path)]

    async def _readdir(self, r: SessionFSReaddirRequest) -> dict:
        try:
            entries = await self._list(r.session_id, r.path)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return SessionFSReaddirResult(entries=[], error=_fs_error(exc)).to_dict()
        return SessionFSReaddirResult(entries=[name for name, _ in entries]).to_dict()

    async def _readdir_with_types(self, r: SessionFSReaddirWithTypesRequest) -> dict:
        try:
            entries = await self._list(r.session_id, r.path)
        except (PathRefused, StoreError) as exc:
            self._note(exc)
            return SessionFSReaddirWithTypesResult(entries=[], error=_fs_error(exc)).to_dict()
        kinds = SessionFSReaddirWithTypesEntryType
        return SessionFSReaddirWithTypesResult(
            entries=[
                SessionFSReaddirWithTypesEntry(name=name, type=kinds.DIRECTORY if is_dir else kinds.FILE)
                for name, is_dir in entries
            ]
        ).to_dict()
