"""Stands in for the Copilot CLI in front of a provider: runs the real CLI, and the moment it listens (before the
provider can register) lets an application client create a session on it, then hands the ready line on.

That is the worst case of the start-up race. $EARLY_RESULT names a file for the client's outcome (one JSON line);
with EARLY_MODE=dir the wrapper first puts a directory where the provider put its blocking file (a CLI that
ignored it), to show the second defence: the CLI refuses the provider while a session is active.
The real CLI gets PR_SET_PDEATHSIG like the provider's own child, so it never outlives this wrapper.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from copilot import CopilotClient, PermissionHandler

from copilot_fleet.nodelay import cli_client

REAL_CLI = os.environ["EARLY_REAL_CLI"]
KEEP: list[CopilotClient] = []  # the early client lives as long as this process


def die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


async def early_create(port: int) -> dict[str, object]:
    client = cli_client(f"127.0.0.1:{port}", os.environ["COPILOT_CONNECTION_TOKEN"])
    try:
        await client.start()
        await client.create_session(session_id="u-5-early-race-1700000000-0123abcd",
                                    on_permission_request=PermissionHandler.approve_all)
    except Exception as exc:
        await client.force_stop()
        return {"created": False, "error": str(exc)}
    # The client stays connected until this process exits: the CLI closes a session whose last client left, and
    # the point is a session that is active when the provider registers.
    KEEP.append(client)
    return {"created": True}


def main() -> int:
    state = Path(os.environ["COPILOT_HOME"]) / "session-state"
    if os.environ.get("EARLY_MODE") == "dir":
        state.unlink()
        state.mkdir()
    cli = subprocess.Popen([REAL_CLI, *sys.argv[1:]], stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    signal.signal(signal.SIGTERM, lambda *_: cli.send_signal(signal.SIGTERM))  # stop as the CLI itself would
    assert cli.stdout is not None
    for line in cli.stdout:
        match = re.search(r"CLI server listening on port (\d+)", line)
        if match:
            # Keep the client (and so its session) alive in dir mode: the session must be active at registration.
            loop = asyncio.new_event_loop()
            outcome = loop.run_until_complete(early_create(int(match.group(1))))
            outcome["cli_pid"] = cli.pid
            Path(os.environ["EARLY_RESULT"]).write_text(json.dumps(outcome) + "\n")
            sys.stdout.write(line)
            sys.stdout.flush()
            break
    for line in cli.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
    return cli.wait()


if __name__ == "__main__":
    sys.exit(main())
