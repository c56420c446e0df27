"""`run: COMMAND`: the test model answers with a call to the client's shell tool, then repeats the tool's result.

Unit level (the command, the tool lookup) and over HTTP in-process, in the four wire shapes (Chat Completions and
Responses, streaming and not). The real CLI runs the call in test_testmodel_cli_e2e.py.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from copilot_fleet.testmodel import MARKER, TestModelServer, answer, serve
from copilot_fleet.testmodel.commands import RESULT_LIMIT
from copilot_fleet.testmodel.tools import chat_tool_results, responses_tool_results, shell_tool

# The shell tool as CLI 1.0.102 offers it (trimmed descriptions), in both wire shapes.
BASH_PARAMS = {"type": "object", "required": ["command", "description"],
               "properties": {"command": {"type": "string"}, "description": {"type": "string"},
                              "mode": {"type": "string", "enum": ["sync", "async"]}}}
VIEW_PARAMS = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "view", "parameters": VIEW_PARAMS}},
              {"type": "function", "function": {"name": "bash", "parameters": BASH_PARAMS}}]
RESPONSES_TOOLS = [{"type": "function", "name": "view", "parameters": VIEW_PARAMS, "strict": False},
                   {"type": "function", "name": "bash", "parameters": BASH_PARAMS, "strict": False}]


# ---- the command -----------------------------------------------------------------------------------------------

def test_run_asks_for_the_command_then_repeats_its_result() -> None:
    first = answer(["run: id -u; echo hi"])
    assert first.command == "run" and first.run == "id -u; echo hi"
    second = answer(["run: id -u; echo hi"], ["0\nhi\n<exited with exit code 0>"])
    assert second.run is None and second.command == "ran"
    assert second.text == f"{MARKER} ran: 0\nhi\n<exited with exit code 0>"


def test_run_counts_only_at_the_start_of_a_line() -> None:
    assert answer(["please\n  run: ls /"]).run == "ls /"
    assert answer(["echo: run: ls /"]).command == "echo"  # quoted, not asked for
    assert answer(["I will not run: anything"]).run is None
    assert answer(["run:   "]).run is None  # nothing to run


def test_a_later_turn_runs_again_and_results_of_earlier_turns_do_not_count() -> None:
    assert answer(["run: a", "run: b"]).run == "b"


def test_a_huge_tool_result_is_cut() -> None:
    text = answer(["run: yes"], ["y\n" * RESULT_LIMIT]).text
    assert text.endswith("...") and len(text) < RESULT_LIMIT + 100


def test_sleep_still_applies_to_run() -> None:
    reply = answer(["sleep: 2\nrun: true"])
    assert reply.sleep_seconds == 2 and reply.run == "true"


# ---- what the client offers and sends back ---------------------------------------------------------------------

@pytest.mark.parametrize("tools", [CHAT_TOOLS, RESPONSES_TOOLS], ids=["chat", "responses"])
def test_the_shell_tool_is_found_in_either_shape(tools: list[dict[str, Any]]) -> None:
    tool = shell_tool({"tools": tools})
    assert tool is not None and tool.name == "bash"
    assert json.loads(tool.arguments("ls")) == {"command": "ls", "description": "copilot-fleet test model run: command"}


def test_no_shell_tool_when_none_is_offered() -> None:
    assert shell_tool({"tools": []}) is None
    assert shell_tool({}) is None
    assert shell_tool({"tools": [CHAT_TOOLS[0], {"type": "web_search"}, "junk"]}) is None


def test_only_results_after_the_last_user_message_count() -> None:
    chat = {"messages": [{"role": "user", "content": "run: a"}, {"role": "tool", "content": "old"},
                         {"role": "user", "content": "run: b"},
                         {"role": "assistant", "content": None, "tool_calls": []},
                         {"role": "tool", "content": [{"type": "text", "text": "new"}]}]}
    assert chat_tool_results(chat) == ["new"]
    responses = {"input": [{"type": "message", "role": "user", "content": "run: a"},
                           {"type": "function_call_output", "call_id": "c1", "output": "old"},
                           {"type": "message", "role": "user", "content": "run: b"},
                           {"type": "function_call", "call_id": "c2", "name": "bash", "arguments": "{}"},
                           {"type": "function_call_output", "call_id": "c2", "output": "new"}]}
    assert responses_tool_results(responses) == ["new"]


# ---- over HTTP -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> Iterator[TestModelServer]:
    server = serve("127.0.0.1", 0, "k")
    yield server
    server.stop()


def _post(server: TestModelServer, path: str, body: dict[str, Any]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"Authorization": "Bearer k", "Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status == 200, payload
    return payload


def _events(payload: bytes) -> list[dict[str, Any]]:
    datas = [line[6:] for line in payload.decode().split("\n") if line.startswith("data: ")]
    return [json.loads(d) for d in datas if d != "[DONE]"]


def test_chat_answers_with_a_tool_call(model: TestModelServer) -> None:
    body = {"model": "m", "tools": CHAT_TOOLS, "messages": [{"role": "user", "content": "run: cat /etc/hostname"}]}
    choice = json.loads(_post(model, "/v1/chat/completions", body))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "bash" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"])["command"] == "cat /etc/hostname"

    chunks = _events(_post(model, "/v1/chat/completions", {**body, "stream": True}))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    head = deltas[0]["tool_calls"][0]
    assert head["function"]["name"] == "bash" and head["id"].startswith("call_")
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
    assert json.loads(arguments)["command"] == "cat /etc/hostname"
    assert len([d for d in deltas if d.get("tool_calls")]) > 2  # the arguments arrive in pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_repeats_the_tool_result(model: TestModelServer) -> None:
    body = {"model": "m", "tools": CHAT_TOOLS, "messages": [
        {"role": "user", "content": "run: cat /etc/hostname"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "box-7"}]}
    choice = json.loads(_post(model, "/v1/chat/completions", body))["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == f"{MARKER} ran: box-7"


def test_responses_answers_with_a_function_call(model: TestModelServer) -> None:
    body = {"model": "m", "tools": RESPONSES_TOOLS,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run: uname"}]}]}
    response = json.loads(_post(model, "/v1/responses", body))
    [item] = response["output"]
    assert item["type"] == "function_call" and item["name"] == "bash" and item["status"] == "completed"
    assert item["call_id"].startswith("call_") and json.loads(item["arguments"])["command"] == "uname"
    assert response["output_text"] == ""

    events = _events(_post(model, "/v1/responses", {**body, "stream": True}))
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    pieces = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert json.loads(pieces)["command"] == "uname"
    assert events[-1]["response"]["output"][0]["arguments"] == pieces


def test_responses_repeats_the_function_call_output(model: TestModelServer) -> None:
    body = {"model": "m", "tools": RESPONSES_TOOLS, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run: uname"}]},
        {"type": "function_call", "call_id": "c", "name": "bash", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "Linux"}]}
    assert json.loads(_post(model, "/v1/responses", body))["output_text"] == f"{MARKER} ran: Linux"


def test_run_without_a_shell_tool_says_so(model: TestModelServer) -> None:
    body = {"model": "m", "tools": [CHAT_TOOLS[0]], "messages": [{"role": "user", "content": "run: ls"}]}
    choice = json.loads(_post(model, "/v1/chat/completions", body))["choices"][0]
    assert choice["message"]["content"] == f"{MARKER} run: the client offered no shell tool"
    assert "tool_calls" not in choice["message"]
