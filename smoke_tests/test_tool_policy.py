"""Check: a session's tool call is refused unless the application allows it (the fleet client's default policy).

The model is asked (the test model's `run:` command, standing in for a prompt-injected model) to run a shell
command. The fleet client's default permission policy refuses it: the CLI runs nothing and the model gets the
refusal as the tool's result, which it repeats.
"""

from __future__ import annotations

import pytest

from copilot_fleet.client.permissions import DENIED_FEEDBACK
from copilot_fleet.testmodel import MARKER


def test_a_tool_call_is_denied_by_default(fleet, user, unique) -> None:
    """tools: the fleet client's default policy refuses a session's tool call"""
    client = fleet.client(user)
    word = unique("t")

    async def ask_for_a_command() -> str | None:
        session = await client.create_session("verify-tools")
        fleet.delete_later(client, session.session_id)
        answer = await session.reply(f"run: echo ran-{word}", timeout=fleet.timeout)
        await session.close()
        return answer

    answer = fleet.run(ask_for_a_command()) or ""
    if not answer.startswith(MARKER):
        pytest.skip("the fleet's model is not copilot-fleet's test model: `run:` cannot make it call a tool")
    assert f"ran-{word}" not in answer, f"the shell command ran: {answer!r}"
    assert answer == f"{MARKER} ran: The user rejected this tool call. User feedback: {DENIED_FEEDBACK}", answer
