"""Infinite sessions and resume options against a real CLI, checked by what the CLI sends the test model."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest

from copilot_fleet.client import ClientPool, FleetClient, InfiniteSessions, InvalidSessionOption
from copilot_fleet.spec import InfiniteSessionsSpec

if TYPE_CHECKING:
    from copilot.session_events import SessionEvent

    from tests.helpers.ops_fleet import OpsFleet

pytestmark = pytest.mark.anyio


# -- validation (no server) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"background_compaction_threshold": 1.5}, "below 1"),
        ({"background_compaction_threshold": 0}, "above 0"),
        ({"buffer_exhaustion_threshold": 1.2}, "at most 1"),
        ({"background_compaction_threshold": 0.9, "buffer_exhaustion_threshold": 0.5}, "must be below"),
        ({"enabled": "yes"}, "true or false"),
        ({"background_compaction_threshold": "0.8"}, "fraction"),
        ({"background_compaction_threshold": float("nan")}, "fraction"),
        ({"compaction": 0.5}, "unknown key"),
    ],
)
def test_bad_infinite_session_settings_are_refused(value: dict[str, Any], message: str) -> None:
    # The CLI itself takes every one of these silently (checked: 1.5, "yes" and inverted thresholds).
    with pytest.raises(InvalidSessionOption, match=message):
        InfiniteSessions.coerce(value)


def test_infinite_sessions_accept_camel_case_and_the_stack_spelling() -> None:
    camel = InfiniteSessions.coerce({"enabled": True, "backgroundCompactionThreshold": 0.8,
                                     "bufferExhaustionThreshold": 0.95})
    stack = InfiniteSessions.coerce(InfiniteSessionsSpec(background_compaction_threshold=0.8))
    assert camel == stack == InfiniteSessions()
    assert camel.to_sdk() == {"enabled": True, "background_compaction_threshold": 0.8,
                              "buffer_exhaustion_threshold": 0.95}
    with pytest.raises(InvalidSessionOption):
        InfiniteSessions.coerce(0.8)


async def test_bad_settings_stop_before_any_server_call() -> None:
    from copilot_fleet.target import Target

    nowhere = Target.model_validate({"stack": "x", "platform": "local", "isolation": "per-user",
                                     "users": {"alice": "127.0.0.1:1"}})
    with pytest.raises(InvalidSessionOption):
        FleetClient(nowhere, user="alice", infinite_sessions={"background_compaction_threshold": 2})
    async with FleetClient(nowhere, user="alice") as fleet:
        with pytest.raises(InvalidSessionOption):  # not ReplicaUnavailable: nothing was sent
            await fleet.create_session("x", infinite_sessions={"enabled": 1})


# -- against the CLI -------------------------------------------------------------------------------------------


async def _compactions(fleet: FleetClient, provider: dict[str, Any], small: dict[str, Any], turns: int,
                       settle: float = 1.0, **create: Any) -> list[str]:
    """Send `turns` long turns; return the triggers of the compactions the CLI started."""
    seen: list[SessionEvent] = []
    session = await fleet.create_session("compact", provider=provider, **small, **create)
    session.on(seen.append)
    try:
        for i in range(turns):
            await session.reply(f"remember: c{i} " + "lorem ipsum dolor sit amet " * 60)
        deadline = time.monotonic() + settle  # compaction runs in the background
        while time.monotonic() < deadline and not any(e.type.value == "session.compaction_start" for e in seen):
            await asyncio.sleep(0.1)
    finally:
        await session.close()
    triggers = [getattr(e.data, "trigger", None) for e in seen if e.type.value == "session.compaction_start"]
    return [str(getattr(trigger, "value", trigger)) for trigger in triggers]


@pytest.mark.fleet
async def test_infinite_session_thresholds_reach_the_cli(ops_fleet: OpsFleet) -> None:
    # A 3000-token prompt budget and turns of about 860 tokens each: 3 turns fill ~86 % of it.
    provider = {**ops_fleet.model.provider(), "max_prompt_tokens": 3000}
    target = ops_fleet.target()
    async with ClientPool() as pool:
        eager = InfiniteSessions(background_compaction_threshold=0.3, buffer_exhaustion_threshold=0.9)
        async with FleetClient(target, user="inf", pool=pool, infinite_sessions=eager) as fleet:
            triggers = await _compactions(fleet, provider, ops_fleet.small, turns=2, settle=3.0)
        assert triggers and set(triggers) == {"threshold"}, "compaction started by our background threshold"

        async with FleetClient(target, user="inf", pool=pool) as fleet:
            off = await _compactions(fleet, provider, ops_fleet.small, turns=3,
                                     infinite_sessions={"enabled": False})
            late = await _compactions(fleet, provider, ops_fleet.small, turns=2,
                                      infinite_sessions=InfiniteSessions(background_compaction_threshold=0.9,
                                                                         buffer_exhaustion_threshold=0.95))
        assert off == [], "disabled: the same traffic compacts nothing"
        assert late == [], "the same 2 turns (~57 % of the budget) stay under a 0.9 threshold"


@pytest.mark.fleet
async def test_resume_with_other_model_effort_system_message_and_tools(ops_fleet: OpsFleet) -> None:
    word = f"opt{secrets.token_hex(4)}"
    target = ops_fleet.target()
    async with ClientPool() as pool, FleetClient(target, user="opts", pool=pool) as fleet:
        # Created with the defaults: the target's model, the CLI's own system prompt and its tools.
        async with await fleet.create_session("options") as session:
            assert "remembered" in (await session.reply(f"remember: {word}") or "")
            sid = session.session_id
        first = ops_fleet.requests.containing(word)[-1].body
        assert first["model"] == "copilot-fleet-test"
        assert first.get("tools"), "the CLI's default tool set was offered"
        assert "reasoning_effort" not in first

        system = f"You are the resumed assistant {word}."
        async with await fleet.resume_session(
            sid, model="other-model", reasoning_effort="high", available_tools=[],
            system_message={"mode": "replace", "content": system},
        ) as again:
            assert f"recalled: {word}" in (await again.reply("recall") or ""), "history survived the changes"
        second = ops_fleet.requests.containing(word)[-1].body
        assert second["model"] == "other-model"
        assert second.get("reasoning_effort") == "high"
        assert not second.get("tools"), "available_tools=[] leaves no tools"
        system_prompts = [m["content"] for m in second["messages"] if m["role"] == "system"]
        assert system_prompts == [system], "the system message was replaced"

