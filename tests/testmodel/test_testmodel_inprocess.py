"""The in-process API: serve() in a background thread, request records for observers, clean stop."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from copilot_fleet.testmodel import MARKER, RequestRecord, TestModelServer, serve


def post(url: str, body: dict[str, object], key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serve_records_requests_with_secrets_redacted() -> None:
    records: list[RequestRecord] = []
    server = serve("127.0.0.1", 0, "inproc-key", on_request=records.append)
    try:
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        provider = server.provider("responses")
        assert provider == {
            "type": "openai", "base_url": server.base_url, "api_key": "inproc-key", "wire_api": "responses"
        }
        status, doc = post(f"{server.base_url}/responses", {"input": "remember: plum"}, "inproc-key")
        assert status == 200 and doc["output_text"] == f"{MARKER} remembered: plum"
        status, doc = post(f"{server.base_url}/chat/completions", {"messages": []}, "wrong")
        assert status == 401
    finally:
        server.stop()
    # A request is recorded once its answer is written, so the client may already have sent the next one (on a
    # new connection, handled by another thread) and that one may be recorded first: compare by path.
    by_path = {r.path: r for r in records}
    assert len(records) == 2 and set(by_path) == {"/v1/responses", "/v1/chat/completions"}
    ok, refused = by_path["/v1/responses"], by_path["/v1/chat/completions"]
    assert (ok.status, ok.command, ok.user_turns) == (200, "remember", 1)
    assert (refused.status, refused.command, refused.user_turns) == (401, None, None)
    assert ok.body == {"input": "remember: plum"}
    assert refused.body is None  # not read: the key was wrong
    assert all(r.headers["authorization"] == "<redacted>" for r in records)


def test_context_manager_stops_and_frees_the_port() -> None:
    with TestModelServer("127.0.0.1", 0) as server:
        port = server.port
        status, doc = post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "echo: ctx"}]}, None)
        assert status == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="api_key must be a non-empty string or None"):
        TestModelServer("127.0.0.1", 0, "  ")


def test_server_survives_a_client_that_leaves_mid_turn() -> None:
    records: list[RequestRecord] = []
    with serve("127.0.0.1", 0, on_request=records.append) as server:
        body = json.dumps({"stream": True, "messages": [{"role": "user", "content": "sleep: 0.3 echo: late"}]})
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
            )
        deadline = time.monotonic() + 5
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
        assert records and records[0].command == "echo"
        status, doc = post(f"{server.base_url}/chat/completions",
                           {"messages": [{"role": "user", "content": "count turns"}]}, None)
        assert status == 200 and doc["choices"][0]["message"]["content"] == f"{MARKER} user turns: 1"
