"""The test model over HTTP, run as `python -m copilot_fleet.testmodel` on a free port."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.testmodel import MARKER

API_KEY = "tm-key-0123456789abcdef"  # same value conftest writes to key_file
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=40)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    if own:
        conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def sse_events(payload: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per server-sent event."""
    out: list[tuple[str | None, str]] = []
    for block in payload.decode().split("\n\n"):
        if not block.strip():
            continue
        event = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


def chat_body(*user_texts: str, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a model. remember: system-noise"}]
    for i, text in enumerate(user_texts):
        if i:
            messages.append({"role": "assistant", "content": "ok"})
        messages.append({"role": "user", "content": text})
    return {"model": "gpt-4.1", "messages": messages, **extra}


def responses_body(*user_texts: str, **extra: Any) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for i, text in enumerate(user_texts):
        if i:
            items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]})
        items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    return {"model": "gpt-4.1", "instructions": "remember: noise", "input": items, **extra}


@pytest.fixture(scope="module")
def server(start_testmodel: Any, key_file: Path) -> Any:
    return start_testmodel("--api-key-file", str(key_file))


# ---- process behaviour ---------------------------------------------------------------------------------------


def test_ready_line_names_the_real_port_and_binds_loopback_only(server: Any) -> None:
    assert server.first_line == f"test model listening on 127.0.0.1:{server.port}"
    assert server.port > 0
    # /proc/net/tcp lists LISTEN sockets (state 0A) as hex "ADDR:PORT"; 0100007F is 127.0.0.1.
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    ours = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == server.port]
    assert ours == [f"0100007F:{server.port:04X}"]


def test_healthz_needs_no_key(server: Any) -> None:
    status, headers, payload = call(server.port, "GET", "/healthz")
    assert (status, payload) == (200, b"ok")
    assert headers["content-type"].startswith("text/plain")


def test_models_lists_the_one_model(server: Any) -> None:
    status, _, payload = call(server.port, "GET", "/v1/models", headers=AUTH)
    assert status == 200
    listing = json.loads(payload)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["copilot-fleet-test"]
    status, _, payload = call(server.port, "GET", "/v1/models/copilot-fleet-test", headers=AUTH)
    assert status == 200 and json.loads(payload)["id"] == "copilot-fleet-test"
    status, _, payload = call(server.port, "GET", "/v1/models/gpt-5", headers=AUTH)
    assert status == 404 and json.loads(payload)["error"]["code"] == "model_not_found"


# ---- chat completions ----------------------------------------------------------------------------------------


def test_chat_completion_non_streaming(server: Any) -> None:
    status, headers, payload = call(
        server.port, "POST", "/v1/chat/completions", chat_body("remember: apple", "hi", "recall"), AUTH
    )
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(payload)
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    assert doc["model"] == "gpt-4.1"
    (choice,) = doc["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == f"{MARKER} recalled: apple"
    usage = doc["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_completion_streaming(server: Any, include_usage: bool) -> None:
    body = chat_body("a", "b", "count turns", stream=True, stream_options={"include_usage": include_usage})
    status, headers, payload = call(server.port, "POST", "/v1/chat/completions", body, AUTH)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_events(payload)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    with_choices = [c for c in chunks if c["choices"]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices)
    assert text == f"{MARKER} user turns: 3"
    assert len(with_choices) > 3, "the answer should arrive in several deltas"
    assert [c["choices"][0]["finish_reason"] for c in with_choices][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    usage_chunks = [c for c in chunks if "usage" in c]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
        assert usage_chunks[0]["usage"]["completion_tokens"] > 0
    else:
        assert usage_chunks == []


# ---- responses -----------------------------------------------------------------------------------------------


def test_responses_non_streaming(server: Any) -> None:
    body = responses_body("remember: kiwi", "remember: fig", "recall")
    status, _, payload = call(server.port, "POST", "/v1/responses", body, AUTH)
    assert status == 200
    doc = json.loads(payload)
    assert doc["object"] == "response" and doc["status"] == "completed" and doc["id"].startswith("resp_")
    (item,) = doc["output"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    (part,) = item["content"]
    assert part["type"] == "output_text"
    assert part["text"] == f"{MARKER} recalled: kiwi, fig"
    assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["output_tokens"] > 0


def test_responses_streaming_event_sequence(server: Any) -> None:
    body = responses_body("echo: streamed words here", stream=True)
    status, headers, payload = call(server.port, "POST", "/v1/responses", body, AUTH)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(payload)
    docs = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [d["type"] for d in docs], "event: line must match data.type"
    assert [d["sequence_number"] for d in docs] == list(range(len(docs)))
    kinds = [d["type"] for d in docs]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    expected = f"{MARKER} streamed words here"
    assert docs[0]["response"]["status"] == "in_progress"
    assert "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta") == expected
    by_kind = {d["type"]: d for d in docs}
    assert by_kind["response.output_text.done"]["text"] == expected
    assert by_kind["response.output_item.done"]["item"]["content"][0]["text"] == expected
    done = by_kind["response.completed"]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == expected
    assert done["usage"]["total_tokens"] > 0
    item_id = by_kind["response.output_item.added"]["item"]["id"]
    assert all(d["item_id"] == item_id for d in docs if "item_id" in d)


# ---- commands over HTTP --------------------------------------------------------------------------------------


def test_cli_style_prompt_is_read_without_the_datetime_block(server: Any) -> None:
    prompt = "<current_datetime>2026-11-21T16:05:03.470+00:00</current_datetime>\n\nwhat now?"
    _, _, payload = call(server.port, "POST", "/v1/chat/completions", chat_body(prompt), AUTH)
    text = json.loads(payload)["choices"][0]["message"]["content"]
    assert text == f'{MARKER} user turn 1: you said "what now?"'


def test_sleep_delays_the_answer(server: Any) -> None:
    started = time.monotonic()
    _, _, payload = call(server.port, "POST", "/v1/chat/completions", chat_body("sleep: 0.6"), AUTH)
    assert time.monotonic() - started >= 0.6
    assert json.loads(payload)["choices"][0]["message"]["content"] == f"{MARKER} slept 0.6 s; user turns: 1"


def test_concurrent_requests_do_not_wait_for_each_other(server: Any) -> None:
    results: list[str] = []

    def one(i: int) -> None:
        _, _, payload = call(server.port, "POST", "/v1/chat/completions", chat_body(f"sleep: 1 echo: n{i}"), AUTH)
        results.append(json.loads(payload)["choices"][0]["message"]["content"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    elapsed = time.monotonic() - started
    assert sorted(results) == sorted(f"{MARKER} n{i}" for i in range(8))
    # Taken one at a time they would take 8 s, two at a time 4 s, however fast or busy the machine is.
    assert elapsed < 4.0, f"8 one-second turns took {elapsed:.1f} s: requests wait for each other"


def test_keep_alive_serves_several_requests_on_one_connection(server: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for text in ("echo: one", "echo: two"):
            body = responses_body(text, stream=True)
            status, _, payload = call(server.port, "POST", "/v1/responses", body, AUTH, conn=conn)
            assert status == 200 and text[6:] in payload.decode()
        status, _, _ = call(server.port, "POST", "/v1/chat/completions", chat_body("x"), AUTH, conn=conn)
        assert status == 200
    finally:
        conn.close()


def test_large_and_chunked_bodies_are_accepted(server: Any) -> None:
    big = chat_body("remember: big", "recall")
    big["messages"][0]["content"] = "s" * (3 * 1024 * 1024)  # a 3 MB system prompt
    status, _, payload = call(server.port, "POST", "/v1/chat/completions", big, AUTH)
    assert status == 200 and json.loads(payload)["choices"][0]["message"]["content"] == f"{MARKER} recalled: big"

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    data = json.dumps(chat_body("echo: chunked")).encode()
    conn.request("POST", "/v1/chat/completions", body=iter([data[:10], data[10:]]),
                 headers={**AUTH, "Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["choices"][0]["message"]["content"] == f"{MARKER} chunked"
    conn.close()


# ---- auth ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": API_KEY}, 401),
        ({"api-key": "wrong"}, 401),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
        ({"api-key": API_KEY}, 200),
    ],
)
def test_auth_on_every_model_route(server: Any, headers: dict[str, str], status: int) -> None:
    for path, body in (("/v1/chat/completions", chat_body("x")), ("/v1/responses", responses_body("x"))):
        got, resp_headers, payload = call(server.port, "POST", path, body, headers)
        assert got == status, path
        if status == 401:
            error = json.loads(payload)["error"]
            assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
            assert resp_headers["www-authenticate"] == "Bearer"
    assert call(server.port, "GET", "/v1/models", headers=headers)[0] == status


def test_key_from_environment(start_testmodel: Any) -> None:
    proc = start_testmodel(env={"TESTMODEL_API_KEY": "env-key"})
    try:
        assert call(proc.port, "POST", "/v1/responses", responses_body("x"))[0] == 401
        ok = call(proc.port, "POST", "/v1/responses", responses_body("x"), {"Authorization": "Bearer env-key"})
        assert ok[0] == 200
    finally:
        assert proc.stop() == 0


def test_no_key_means_no_auth(start_testmodel: Any) -> None:
    proc = start_testmodel()
    try:
        assert call(proc.port, "POST", "/v1/chat/completions", chat_body("x"))[0] == 200
        assert "no authentication" in proc.log()
    finally:
        proc.stop()


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret")
    key.chmod(0o644)
    run = subprocess.run(
        [sys.executable, "-m", "copilot_fleet.testmodel", "--port", "0", "--api-key-file", str(key)],
        capture_output=True, text=True, timeout=20, cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 2
    assert "mode 0644" in run.stderr and "chmod 600" in run.stderr
    assert "secret" not in run.stderr


def test_bad_port_is_rejected() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "copilot_fleet.testmodel", "--port", "70000"],
        capture_output=True, text=True, timeout=20, cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 2 and "not a port number" in run.stderr


# ---- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "status", "fragment"),
    [
        ("/v1/chat/completions", b'{"model": "x",', 400, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object, got list"),
        ("/v1/chat/completions", b"", 400, "request body is empty"),
        ("/v1/chat/completions", b'{"model": "x"}', 400, "'messages' is required"),
        ("/v1/responses", b'{"model": "x"}', 400, "'input' is required"),
        ("/v1/responses", b'{"input": "x", "stream": "yes"}', 400, "'stream' must be true or false"),
        ("/v1/chat/completions", b"\xff\xfe", 400, "not valid JSON"),
        ("/v1/embeddings", b"{}", 404, "no route POST /v1/embeddings"),
    ],
)
def test_bad_requests_get_json_errors(server: Any, path: str, raw: bytes, status: int, fragment: str) -> None:
    got, headers, payload = call(server.port, "POST", path, raw=raw, headers=AUTH)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert fragment in json.loads(payload)["error"]["message"]


def test_unknown_get_path_and_wrong_method(server: Any) -> None:
    status, _, payload = call(server.port, "GET", "/nowhere")
    assert status == 404 and "GET /v1/models" in json.loads(payload)["error"]["message"]
    status, headers, payload = call(server.port, "GET", "/v1/chat/completions", headers=AUTH)
    assert status == 405 and headers["allow"] == "POST"


def test_oversized_body_is_refused_before_reading(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
            + b"\r\nContent-Length: 999999999\r\n\r\n{"
        )
        chunks = []
        while data := sock.recv(65536):  # the server closes the connection after answering
            chunks.append(data)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "exceeds the limit" in reply


def test_log_has_one_line_per_request_without_prompts_or_keys(server: Any) -> None:
    marker_word = "zebra-secret-prompt-42"
    before = server.log().count("\n")
    call(server.port, "POST", "/v1/chat/completions", chat_body(f"remember: {marker_word}"), AUTH)
    call(server.port, "POST", "/v1/responses", responses_body(f"echo: {marker_word}", stream=True), AUTH)
    deadline = time.monotonic() + 5
    while server.log().count("\n") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.log().splitlines()[before:]
    assert len(lines) == 2
    assert "POST /v1/chat/completions 200" in lines[0] and "command=remember" in lines[0]
    assert "POST /v1/responses 200" in lines[1] and "stream=true" in lines[1]
    whole = server.log()
    assert marker_word not in whole and API_KEY not in whole


# ---- shutdown ------------------------------------------------------------------------------------------------


def test_sigterm_stops_promptly_even_mid_turn(start_testmodel: Any) -> None:
    proc = start_testmodel()
    outcome: dict[str, Any] = {}

    def sleeper() -> None:
        try:
            outcome["reply"] = call(proc.port, "POST", "/v1/chat/completions", chat_body("sleep: 30"))
        except (OSError, http.client.HTTPException) as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.3)  # let the request reach the server and start its 30 s sleep
    started = time.monotonic()
    code = proc.stop()
    assert code == 0
    assert time.monotonic() - started < 3, "SIGTERM must not wait for a 30 s sleep"
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert "testmodel: stopped" in proc.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()
