"""End to end: the real Copilot CLI (headless) and SDK use the test model as their BYOK provider.

A session remembers a word, is disconnected, is resumed with the provider re-supplied, and `recall` answers with
the word: the CLI sent the earlier turn again, so the resumed session kept its history. The test model's request
log shows what the CLI sent (path, stream flag, user turns).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from copilot import PermissionHandler, ProviderConfig

from copilot_fleet.nodelay import cli_client
from copilot_fleet.testmodel import MARKER

ROOT = Path(__file__).resolve().parents[2]
CLI_BINARY = ROOT / ".tools/npm/node_modules/@github/copilot-linux-x64/copilot"
CLI_CACHE = ROOT / ".tools/copilot-cache"  # persists across runs: the first launch unpacks ~235 MB here
API_KEY = "tm-key-0123456789abcdef"  # what conftest's key_file holds
CLI_READY = re.compile(r"CLI server listening on port (\d+)")

pytestmark = pytest.mark.fleet


@dataclass
class CliServer:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    home: Path


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    if not CLI_BINARY.exists():
        pytest.skip(f"Copilot CLI binary not installed at {CLI_BINARY}")
    home = tmp_path_factory.mktemp("copilot-home")
    CLI_CACHE.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "COPILOT_HOME": str(home),
        "COPILOT_CACHE_HOME": str(CLI_CACHE),
        "COPILOT_CONNECTION_TOKEN": token,
        "COPILOT_AUTO_UPDATE": "false",
    }
    out_path = home / "cli-stdout.log"
    with open(out_path, "wb") as out:  # a file, not a pipe: an unread pipe would stall the CLI
        proc = subprocess.Popen(
            [str(CLI_BINARY), "--headless", "--no-auto-update", "--no-auto-login", "--log-level", "info",
             "--host", "127.0.0.1", "--port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home,
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            if match := CLI_READY.search(out_path.read_text(errors="replace")):
                port = int(match.group(1))
            else:
                time.sleep(0.05)
        assert port is not None, f"CLI not ready; output: {out_path.read_text(errors='replace')[-2000:]}"
        yield CliServer(proc, port, token, home)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def model_server(start_testmodel: Any, key_file: Path) -> Any:
    return start_testmodel("--api-key-file", str(key_file))


def _event_type(event: Any) -> str:
    return str(getattr(event.type, "value", event.type))


async def remember_then_recall(
    cli: CliServer, provider: ProviderConfig, session_id: str, streaming: bool
) -> dict[str, Any]:
    client = cli_client(f"127.0.0.1:{cli.port}", cli.token)
    await client.start()
    events: list[Any] = []
    try:
        session = await client.create_session(
            on_permission_request=PermissionHandler.approve_all,
            session_id=session_id, provider=provider, model="gpt-4.1", streaming=streaming,
        )
        session.on(events.append)
        first = await session.send_and_wait("remember: apple", timeout=30)
        await session.disconnect()

        resumed = await client.resume_session(
            session_id, on_permission_request=PermissionHandler.approve_all,
            provider=provider, model="gpt-4.1", streaming=streaming,
        )
        resumed.on(events.append)
        second = await resumed.send_and_wait("recall", timeout=30)
        await resumed.disconnect()
        await client.delete_session(session_id)
        return {
            "first": getattr(first.data, "content", None) if first else None,
            "second": getattr(second.data, "content", None) if second else None,
            "events": events,
        }
    finally:
        await client.stop()


@pytest.mark.parametrize(
    ("wire_api", "streaming", "path"),
    [
        (None, False, "/v1/chat/completions"),
        (None, True, "/v1/chat/completions"),
        ("responses", False, "/v1/responses"),
        ("responses", True, "/v1/responses"),
    ],
    ids=["completions", "completions-streaming", "responses", "responses-streaming"],
)
def test_resumed_session_recalls_through_the_test_model(
    cli_server: CliServer, model_server: Any, wire_api: Literal["completions", "responses"] | None, streaming: bool,
    path: str
) -> None:
    provider: ProviderConfig = {"type": "openai", "base_url": f"http://127.0.0.1:{model_server.port}/v1",
                                "api_key": API_KEY}
    if wire_api:
        provider["wire_api"] = wire_api
    log_before = model_server.log().count("\n")
    session_id = f"tm-e2e-{wire_api or 'completions'}-{'stream' if streaming else 'plain'}"

    result = asyncio.run(remember_then_recall(cli_server, provider, session_id, streaming))

    assert result["first"] == f"{MARKER} remembered: apple"
    assert result["second"] == f"{MARKER} recalled: apple"

    # What the CLI sent: one request per turn to the wire API's path, the second carrying both user turns.
    lines = [ln for ln in model_server.log().splitlines()[log_before:] if " POST " in ln]
    assert len(lines) == 2, lines
    stream_flag = f"stream={'true' if streaming else 'false'}"
    for line, turns, command in zip(lines, (1, 2), ("remember", "recall"), strict=True):
        assert f"POST {path} 200" in line and stream_flag in line, line
        assert f"turns={turns}" in line and f"command={command}" in line, line

    kinds = [_event_type(e) for e in result["events"]]
    deltas = [e.data.delta_content for e in result["events"] if _event_type(e) == "assistant.message_delta"]
    if streaming:
        assert "".join(deltas).endswith(f"{MARKER} recalled: apple"), deltas
        assert len(deltas) > 2
    else:
        assert deltas == []
    usage = [e.data for e in result["events"] if _event_type(e) == "assistant.usage"]
    assert usage and all((u.input_tokens or 0) > 0 and (u.output_tokens or 0) > 0 for u in usage), kinds


def test_wrong_api_key_fails_the_turn_with_401(cli_server: CliServer, model_server: Any) -> None:
    provider: ProviderConfig = {"type": "openai", "base_url": f"http://127.0.0.1:{model_server.port}/v1",
                                "api_key": "not-the-key"}
    log_before = model_server.log().count("\n")

    async def send() -> str:
        client = cli_client(f"127.0.0.1:{cli_server.port}", cli_server.token)
        await client.start()
        try:
            session = await client.create_session(
                on_permission_request=PermissionHandler.approve_all, provider=provider, model="gpt-4.1"
            )
            with pytest.raises(Exception) as failure:
                await session.send_and_wait("hello", timeout=30)
            await session.disconnect()
            return str(failure.value)
        finally:
            await client.stop()

    message = asyncio.run(send())
    assert "HTTP 401" in message
    lines = [ln for ln in model_server.log().splitlines()[log_before:] if " POST " in ln]
    assert lines and all("POST /v1/chat/completions 401" in ln for ln in lines), lines


# ---- run: the model calls the CLI's shell tool ------------------------------------------------------------------

async def _run_turn(cli: CliServer, provider: dict[str, str], prompt: str, streaming: bool = False,
                    **options: Any) -> tuple[str | None, list[Any], list[Any]]:
    """One turn on a new session; returns the reply, the permission requests the handler saw and the events."""
    client = cli_client(f"127.0.0.1:{cli.port}", cli.token)
    await client.start()
    asked: list[Any] = []
    events: list[Any] = []
    decide = options.pop("decide", PermissionHandler.approve_all)

    def handler(request: Any, invocation: Any) -> Any:
        asked.append(request)
        return decide(request, invocation)

    try:
        session = await client.create_session(on_permission_request=handler, provider=cast(ProviderConfig, provider),
                                              model="gpt-4.1",
                                              streaming=streaming, **options)
        session.on(events.append)
        reply = await session.send_and_wait(prompt, timeout=60)
        await session.disconnect()
        await client.delete_session(session.session_id)
        content = getattr(reply.data, "content", None) if reply else None
        return (content if isinstance(content, str) else None), asked, events
    finally:
        await client.stop()


@pytest.mark.parametrize(
    ("wire_api", "streaming"), [(None, False), (None, True), ("responses", False), ("responses", True)],
    ids=["completions", "completions-streaming", "responses", "responses-streaming"],
)
def test_run_makes_the_cli_call_its_shell_tool(cli_server: CliServer, model_server: Any, wire_api: str | None,
                                               streaming: bool) -> None:
    provider = {"type": "openai", "base_url": f"http://127.0.0.1:{model_server.port}/v1", "api_key": API_KEY}
    if wire_api:
        provider["wire_api"] = wire_api
    log_before = model_server.log().count("\n")

    reply, asked, events = asyncio.run(_run_turn(cli_server, provider, "run: echo $((6*7)) from-${0##*/}", streaming))

    # The shell ran the command (the arithmetic happened there) and the model repeated its output.
    assert reply is not None and reply.startswith(f"{MARKER} ran: 42 from-bash"), reply
    assert [type(r).__name__ for r in asked] == ["PermissionRequestShell"]
    assert asked[0].full_command_text == "echo $((6*7)) from-${0##*/}"
    started = [e for e in events if _event_type(e) == "tool.execution_start"]
    assert [e.data.tool_name for e in started] == ["bash"]
    lines = [ln for ln in model_server.log().splitlines()[log_before:] if " POST " in ln]
    assert ["command=run" in lines[0] and "tool=bash" in lines[0], "command=ran" in lines[1]] == [True, True], lines


def test_a_denied_tool_call_runs_nothing(cli_server: CliServer, model_server: Any, tmp_path: Path) -> None:
    from copilot.generated.rpc import PermissionDecisionReject

    provider = {"type": "openai", "base_url": f"http://127.0.0.1:{model_server.port}/v1", "api_key": API_KEY}
    marker = tmp_path / "ran"
    reply, asked, events = asyncio.run(_run_turn(
        cli_server, provider, f"run: touch {marker}",
        decide=lambda request, invocation: PermissionDecisionReject(feedback="no tools here")))

    assert not marker.exists()
    assert len(asked) == 1
    # The model gets the refusal as the tool's result; the turn ends normally.
    assert reply == f"{MARKER} ran: The user rejected this tool call. User feedback: no tools here"
    [done] = [e for e in events if _event_type(e) == "tool.execution_complete"]
    assert done.data.success is False and done.data.error.code == "denied"


def test_without_tools_there_is_nothing_to_call(cli_server: CliServer, model_server: Any) -> None:
    provider = {"type": "openai", "base_url": f"http://127.0.0.1:{model_server.port}/v1", "api_key": API_KEY}
    reply, asked, _ = asyncio.run(_run_turn(cli_server, provider, "run: id", available_tools=[]))
    assert reply == f"{MARKER} run: the client offered no shell tool" and asked == []
