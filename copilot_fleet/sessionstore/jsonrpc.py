"""A JSON-RPC 2.0 peer over one TCP connection with Content-Length framing, on asyncio: what the provider speaks
to its CLI server.

Why not the SDK's `JsonRpcClient`: it lives in a private module (`copilot._jsonrpc`), reads in a thread and hops
to an executor thread for every write, and only its private `SocketWrapper._socket` holds the socket, so
TCP_NODELAY could only be set through private state. The provider's whole job is answering many small requests
fast; here it owns its socket (TCP_NODELAY set and read back with `copilot_fleet.nodelay.set_nodelay`, where the
project sets it on every connection to a CLI server), and the protocol it needs is small: Content-Length framed
messages, requests in both directions, responses, and notifications it may ignore.

Requests from the server are handed to `handler(method, params)`; the handler decides ordering (the provider keeps
each session's requests in arrival order). A handler that raises `RpcError` answers with that code and message;
any other exception answers -32603 with its text, so a bug never leaves the server waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from copilot_fleet.errors import FleetError
from copilot_fleet.nodelay import set_nodelay

logger = logging.getLogger(__name__)

# A message larger than this is refused and the connection closed: the CLI reads events.jsonl whole in one
# readFile, and a Redis string holds at most 512 MiB, so 600 MiB leaves room for JSON escaping of such a file.
MAX_MESSAGE_BYTES = 600 * 1024 * 1024
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603

RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class RpcError(FleetError):
    """A JSON-RPC error answer (from the peer, or to send to it)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ConnectionClosed(FleetError):
    """The connection ended before an answer came."""


class JsonRpcPeer:
    """One connection. `await JsonRpcPeer.connect(host, port, handler)`, then `request()`; `closed` is set at EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: RequestHandler) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        sock = writer.get_extra_info("socket")
        self.nodelay = set_nodelay(sock) if sock is not None else False
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop(), name="jsonrpc-reader")

    @classmethod
    async def connect(cls, host: str, port: int, handler: RequestHandler) -> JsonRpcPeer:
        reader, writer = await asyncio.open_connection(host, port, limit=2**20)
        return cls(reader, writer, handler)

    # -- sending -----------------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer.is_closing():
            raise ConnectionClosed(self.close_reason or "the connection is closed")
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        # One write of header and body: with TCP_NODELAY two writes would be two segments.
        self._writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and wait for its result; RpcError for an error answer, ConnectionClosed at EOF."""
        if self.closed.is_set():
            raise ConnectionClosed(self.close_reason or "the connection is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
            await self._writer.drain()
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        try:
            result = await self._handler(method, params)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except RpcError as exc:
            reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # answer every request: the server must not wait forever on our bug
            logger.exception("handler for %s failed", method)
            reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": INTERNAL_ERROR, "message": str(exc)}}
        try:
            self._send(reply)
            await self._writer.drain()
        except (ConnectionClosed, ConnectionError) as exc:
            logger.debug("could not answer %s: %s", method, exc)

    # -- receiving ---------------------------------------------------------------------------------------------

    async def _read_message(self) -> dict[str, Any] | None:
        length: int | None = None
        while True:
            line = await self._reader.readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("ascii", "replace").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None or not 0 <= length <= MAX_MESSAGE_BYTES:
            raise ValueError(f"bad or missing Content-Length ({length}); at most {MAX_MESSAGE_BYTES} bytes")
        message = json.loads(await self._reader.readexactly(length))
        if not isinstance(message, dict):
            raise ValueError(f"a JSON-RPC message must be an object, got {type(message).__name__}")
        return message

    async def _read_loop(self) -> None:
        reason = "the server closed the connection"
        try:
            while (message := await self._read_message()) is not None:
                self._dispatch(message)
        except asyncio.IncompleteReadError:
            reason = "the server closed the connection mid-message"
        except (ConnectionError, ValueError, json.JSONDecodeError) as exc:
            reason = f"the connection failed: {exc}"
        except asyncio.CancelledError:
            reason = "the connection was closed by us"
            raise
        finally:
            self._finish(reason)

    def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # a response to one of our requests
            future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if "error" in message:
                error = message["error"] or {}
                future.set_exception(RpcError(error.get("code", -1), error.get("message", "?"), error.get("data")))
            else:
                future.set_result(message.get("result"))
            return
        if "id" not in message:
            return  # notifications (session events, $/cancelRequest): nothing the provider acts on
        params = message.get("params") or {}
        task = asyncio.get_running_loop().create_task(self._answer(message["id"], str(method), params))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(reason))
        self._writer.close()
        self.closed.set()

    async def aclose(self) -> None:
        self._read_task.cancel()
        await asyncio.gather(self._read_task, return_exceptions=True)
        self._finish("the connection was closed by us")
