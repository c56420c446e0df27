"""What an attacker does in the probes: a prompt-injected model (the test model's `run:`) makes the CLI run a
command in a session, and the probe reads what came back.

A tool run prints little on purpose (the CLI and the test model cut long outputs): sweeps that may find many
files write their findings into a file in the session's working directory and print its path; the probe, running
as root, reads that file.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from copilot_fleet.target import Target
from copilot_fleet.testmodel import MARKER

RAN = f"{MARKER} ran: "


@dataclass(frozen=True)
class ToolRun:
    """The outcome of one `run:` turn: what the model repeated of the tool's output."""

    reply: str

    @property
    def ran(self) -> bool:
        return self.reply.startswith(RAN)

    @property
    def output(self) -> str:
        assert self.ran, f"the tool did not run: {self.reply!r}"
        return self.reply[len(RAN):]


async def _turn(address: str, token: str | None, target: Target, prompt: str, timeout: float = 90,
                **options: Any) -> str:
    from copilot import ProviderConfig
    from copilot.session import PermissionHandler

    from copilot_fleet.nodelay import cli_client

    assert target.provider is not None
    client = cli_client(address, token)
    await client.start()
    try:
        provider = cast("ProviderConfig", target.provider.to_sdk())
        session = await client.create_session(provider=provider, model=target.model,
                                              on_permission_request=PermissionHandler.approve_all, **options)
        try:
            event = await session.send_and_wait(prompt, timeout=timeout)
            assert event is not None, f"no reply to {prompt!r}"
            return str(getattr(event.data, "content", None))
        finally:
            await session.disconnect()
            await client.delete_session(session.session_id)
    finally:
        await client.force_stop()


def tool_run(address: str, token: str | None, target: Target, command: str, timeout: float = 90,
             **options: Any) -> ToolRun:
    """One session on `address` whose model asks for `command` in the shell tool; the application approves every
    tool call (what an application that trusts its model does)."""
    return ToolRun(asyncio.run(_turn(address, token, target, f"run: {command}", timeout, **options)))


def say_with(address: str, token: str | None, target: Target, prompt: str, **options: Any) -> str:
    """One plain turn on a new session created with `options` (e.g. `mcp_servers`); returns the reply. The
    session is deleted afterwards."""
    return asyncio.run(_turn(address, token, target, prompt, **options))


def environ_sweep() -> str:
    """A command writing the environment of every process it can read into a findings file (one line per file
    read: the file's path), and printing that file's path."""
    name = f"environs-{secrets.token_hex(4)}"
    return (f"mkdir {name}; for f in /proc/[0-9]*/environ; do p=${{f#/proc/}}; p=${{p%/environ}}; "
            f"cat \"$f\" > {name}/$p 2>/dev/null || rm -f {name}/$p; done; "
            f"ls -d \"$(pwd -P)\"/{name}/* > {name}.txt; echo \"$(pwd -P)/{name}.txt\"")


def readable_files_sweep(roots: list[Path]) -> tuple[str, str]:
    """(command, findings file name): the command lists every regular file under `roots` the tool run can read
    into a file in its working directory, and prints that file's absolute path."""
    name = f"findings-{secrets.token_hex(4)}.txt"
    where = " ".join(shlex.quote(str(r)) for r in roots)
    return (f"find {where} -type f -readable 2>/dev/null > {name}; echo \"$(pwd -P)/{name}\"", name)


def findings(run: ToolRun) -> list[Path]:
    """The files a sweep listed (read as root, from the path the tool run printed). The listing itself is left
    in the session's working directory; the fleet's teardown removes it."""
    listing = Path(run.output.splitlines()[0].strip())
    return [Path(line) for line in listing.read_text().splitlines() if line]


def files_holding(paths: list[Path], secret_values: dict[str, str]) -> dict[str, list[str]]:
    """For each file that contains a secret value: which secrets (by name)."""
    hits: dict[str, list[str]] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        names = [name for name, value in secret_values.items() if value.encode() in data]
        if names:
            hits[str(path)] = names
    return hits
