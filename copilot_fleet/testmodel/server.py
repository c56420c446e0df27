"""The HTTP server: OpenAI-compatible routes over the stdlib ThreadingHTTPServer.

Why the stdlib server: it is maintained with CPython, needs nothing installed (aiohttp is not in the venv), a
thread per connection is plenty for a test endpoint, and blocking `sleep:` turns then never stall other requests.
"""

from __future__ import annotations

import hmac
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from copilot_fleet.errors import FleetError
from copilot_fleet.testmodel.commands import MARKER, Answer, answer
from copilot_fleet.testmodel.conversation import RequestError, chat_user_turns, responses_user_turns
from copilot_fleet.testmodel.tools import chat_tool_results, responses_tool_results, shell_tool
from copilot_fleet.testmodel.wire import Completion, ToolCall, Usage

DEFAULT_MODEL = "copilot-fleet-test"
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_CONNECTION_TIMEOUT = 120.0  # seconds a keep-alive connection may sit idle before its thread ends
REDACTED_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "cookie"})


@dataclass(frozen=True)
class RequestRecord:
    """What one request looked like, for in-process observers (tests); secrets are redacted."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    command: str | None = None
    user_turns: int | None = None


class HttpError(FleetError):
    """An error answered as OpenAI-style JSON: {"error": {"message", "type", "code"}}."""

    def __init__(self, status: HTTPStatus, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class TestModelServer(ThreadingHTTPServer):
    """A running (or ready to run) test model. Use `serve()` to get one started in a background thread."""

    __test__ = False  # not a pytest test class, despite the name
    daemon_threads = True  # a `sleep:` turn or an idle keep-alive connection must never block shutdown

    def __init__(
        self,
        host: str,
        port: int,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        on_request: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise ValueError("api_key must be a non-empty string or None (no authentication)")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.api_key = api_key.strip() if api_key is not None else None
        self.model = model
        self.on_request = on_request
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """The `base_url` a provider config takes, e.g. http://127.0.0.1:18080/v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def provider(self, wire_api: str | None = None) -> dict[str, str]:
        """The SDK `provider=` dict pointing at this server."""
        out = {"type": "openai", "base_url": self.base_url, "api_key": self.api_key or "unused"}
        if wire_api is not None:
            out["wire_api"] = wire_api
        return out

    def start(self) -> TestModelServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="testmodel", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake sleeping turns, close the socket."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> TestModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    *,
    model: str = DEFAULT_MODEL,
    on_request: Callable[[RequestRecord], None] | None = None,
) -> TestModelServer:
    """Start a test model in a background thread of this process. `port=0` picks a free port (see `.port`)."""
    return TestModelServer(host, port, api_key, model, on_request).start()


def _log(line: str) -> None:
    print(f"testmodel {time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", file=sys.stderr, flush=True)


class _Handler(BaseHTTPRequestHandler):
    server: TestModelServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the CLI's HTTP client expects
    timeout = IDLE_CONNECTION_TIMEOUT
    server_version = "copilot-fleet-testmodel"

    # ---- plumbing ------------------------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _handle instead, with the fields we want and no bodies

    def log_message(self, format: str, *args: Any) -> None:
        _log(f"{self.client_address[0]} {format % args}")

    def _send_json(self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: HTTPStatus, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, events: Iterator[bytes]) -> None:
        """Server-sent events over chunked transfer encoding, so the connection can be kept alive after."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for data in events:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        if not raw_length.strip().isdigit():
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {raw_length!r} is not a number", "bad_length")
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
                "body_too_large",
            )
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunked request body", "bad_chunking") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                self.close_connection = True
                raise HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body exceeds the limit of {MAX_BODY_BYTES} bytes",
                    "body_too_large",
                )
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def _check_auth(self) -> None:
        expected = self.server.api_key
        if expected is None:
            return
        given = self.headers.get("api-key") or ""
        auth = self.headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            self.close_connection = True  # the body was not read; do not parse it as the next request
            reason = "no API key given" if not given else "the API key is not valid"
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                f"{reason}: send 'Authorization: Bearer <key>' or an 'api-key' header",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )

    def _json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        if not raw.strip():
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body is empty; expected a JSON object", "invalid_json")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            else:
                detail = f"not UTF-8 ({exc.reason} at byte {exc.start})"
            bad = HttpError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {detail}", "invalid_json")
            raise bad from None
        if not isinstance(body, dict):
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"request body must be a JSON object, got {type(body).__name__}", "invalid_json"
            )
        return body

    # ---- dispatch ------------------------------------------------------------------------------------------

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        # Accept base URLs configured with or without /v1, as OpenAI clients differ on that.
        return path[3:] if path.startswith("/v1/") else path

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        self._status: int = 0
        self._record_body: Any = None
        self._note: dict[str, Any] = {}
        route = self._route()
        try:
            try:
                self._dispatch(method, route)
            except HttpError as err:
                self._status = err.status
                error = {"message": err.message, "type": _error_type(err.status), "code": err.code, "param": None}
                self._send_json(err.status, {"error": error}, err.headers)
        except (BrokenPipeError, ConnectionResetError):
            self._note["client"] = "gone"  # e.g. a CLI killed mid-turn; nothing left to answer
            self.close_connection = True
        finally:
            ms = (time.monotonic() - started) * 1000
            extras = " ".join(f"{k}={v}" for k, v in self._note.items())
            self.log_message("%s %s %s %.0fms %s", method, self.path.split("?", 1)[0], self._status or "-", ms, extras)
            if self.server.on_request is not None:
                headers = {
                    k.lower(): ("<redacted>" if k.lower() in REDACTED_HEADERS else v) for k, v in self.headers.items()
                }
                record = RequestRecord(
                    method, self.path, headers, self._record_body, self._status,
                    self._note.get("command"), self._note.get("turns"),
                )
                self.server.on_request(record)

    def _dispatch(self, method: str, route: str) -> None:
        routes: dict[str, dict[str, Callable[[], None]]] = {
            "/healthz": {"GET": self._healthz},
            "/models": {"GET": self._models},
            "/chat/completions": {"POST": self._chat},
            "/responses": {"POST": self._responses},
        }
        if route.startswith("/models/"):
            routes[route] = {"GET": self._models}
        handlers = routes.get(route)
        if handlers is None:
            self.close_connection = method == "POST" or self.close_connection
            raise HttpError(
                HTTPStatus.NOT_FOUND,
                f"no route {method} {self.path.split('?', 1)[0]}; this test model serves GET /healthz, "
                "GET /v1/models, POST /v1/chat/completions, POST /v1/responses",
                "not_found",
            )
        handler = handlers.get(method)
        if handler is None:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method} is not allowed on {route}; use {', '.join(handlers)}",
                "method_not_allowed",
                {"Allow": ", ".join(handlers)},
            )
        handler()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    # ---- routes --------------------------------------------------------------------------------------------

    def _healthz(self) -> None:
        self._status = HTTPStatus.OK
        self._send_text(HTTPStatus.OK, "ok")

    def _models(self) -> None:
        self._check_auth()
        model = {"id": self.server.model, "object": "model", "created": 0, "owned_by": "copilot-fleet"}
        route = self._route()
        if route.startswith("/models/"):
            if route[len("/models/"):] != self.server.model:
                asked = route[len("/models/"):]
                raise HttpError(
                    HTTPStatus.NOT_FOUND,
                    f"model {asked!r} does not exist; this server has {self.server.model!r}",
                    "model_not_found",
                )
            payload: Any = model
        else:
            payload = {"object": "list", "data": [model]}
        self._status = HTTPStatus.OK
        self._send_json(HTTPStatus.OK, payload)

    def _prepare(self, turns_of: Callable[[dict[str, Any]], list[str]],
                 results_of: Callable[[dict[str, Any]], list[str]]) -> tuple[dict[str, Any], Completion, bool]:
        """Authenticate, parse, compute the answer, wait out `sleep:`; the parts both APIs share."""
        self._check_auth()
        body = self._json_body()
        self._record_body = body
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"'stream' must be true or false, got {stream!r}", "invalid_value")
        try:
            turns = turns_of(body)
        except RequestError as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(err), "invalid_request") from None
        reply: Answer = answer(turns, results_of(body))
        call = None
        if (command := reply.run) is not None:
            tool = shell_tool(body)
            if tool is None:  # e.g. a session with available_tools=[]: nothing to call, say so
                reply = Answer(f"{MARKER} run: the client offered no shell tool", reply.sleep_seconds, "run")
            else:
                call = ToolCall(tool.name, tool.arguments(command))
                self._note["tool"] = tool.name
        asked = body.get("model")
        model: str = asked if isinstance(asked, str) and asked else self.server.model
        self._note.update(model=model, stream=str(stream).lower(), turns=len(turns), command=reply.command)
        if reply.sleep_seconds > 0:
            self.server.stopping.wait(reply.sleep_seconds)  # woken early by shutdown
        prompt_chars = sum(len(t) for t in turns) + len(json.dumps(body.get("messages") or body.get("input") or ""))
        completion = Completion(model=model, text=reply.text, usage=Usage.estimate(prompt_chars, reply.text),
                                tool_call=call)
        return body, completion, stream

    def _chat(self) -> None:
        body, completion, stream = self._prepare(chat_user_turns, chat_tool_results)
        self._status = HTTPStatus.OK
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._send_stream(completion.chat_stream(include_usage))
        else:
            self._send_json(HTTPStatus.OK, completion.chat_completion())

    def _responses(self) -> None:
        body, completion, stream = self._prepare(responses_user_turns, responses_tool_results)
        self._status = HTTPStatus.OK
        if stream:
            self._send_stream(completion.responses_stream(body))
        else:
            self._send_json(HTTPStatus.OK, completion.response(body))


def _error_type(status: int) -> str:
    if status == HTTPStatus.UNAUTHORIZED:
        return "authentication_error"
    if status == HTTPStatus.NOT_FOUND:
        return "not_found_error"
    return "invalid_request_error"
