"""Check 6 (shared-session): many members, one writer at a time, one coherent history.

One named shared session goes through: two members racing for it (exactly one gets the lease, the other is told
it is in use), a hand-over after release, a holder process killed with SIGKILL while holding a short lease (the
lease outlives it only until it expires, then another member takes over), and finally a look at the history the
session kept: one `session.start`, the user turns in the order they were sent, each answered before the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from copilot_fleet.client import FleetSession, SessionInUse, SessionNotFound, shared_session_id
from copilot_fleet.sessiondir import EVENTS
from copilot_fleet.testmodel.commands import MARKER
from copilot_fleet.verify import DEFAULT_SMOKE_TIMEOUT_SECONDS

HOLDER_SCRIPT = Path(__file__).with_name("lease_holder.py")
HOLDER_TTL = 1.5  # seconds on an idle machine: short, so that the takeover is quick, but several renewals long


# What the lease holder process is doing until it prints each line (see lease_holder.py), for the failure message.
HOLDER_STEPS = {
    "READY": "start (Python, copilot_fleet, reading the target)",
    "JOINED": "join the shared session (connect to a CLI server, take the session's lease, create or resume it)",
    "HOLDING": "get its turn answered by the CLI server",
}


def _await_holder(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the lease holder process to hold the lease, step by step: each step (HOLDER_STEPS) is one event, and
    each gets `timeout`, the bound for any single wait, since each is one operation of the machine's. Ends early when
    the process reports a failure or exits; the error says which step did not come and what the process said."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def read(stream: IO[str]) -> None:  # a thread: a pipe's lines without select() on a buffered stream
        for line in stream:  # and it keeps draining the pipe after the wait, so the holder never blocks on it
            lines.put(line)
        lines.put("")  # end of output: the process exited

    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    seen: list[str] = []
    for step, doing in HOLDER_STEPS.items():
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"the lease holder process (a member of the shared session, run as a separate process) did not "
                    f"{doing} within {timeout:g} s, the bound for one wait (--smoke-timeout); it printed: "
                    f"{seen[-5:]}. If the machine is busy, raise the bound (COPILOT_FLEET_TIME_SCALE); else look at "
                    "the CLI servers' logs") from None
            if not line:
                code = proc.wait(timeout=timeout)
                raise AssertionError(f"the lease holder process exited (status {code}) before it could {doing}; "
                                     f"it printed: {seen[-5:]}")
            seen.append(line.strip())
            if line.startswith("FAILED"):
                raise AssertionError(f"the lease holder process could not {doing}: {line.strip()}")
            if line.startswith(step):
                break
    return seen[-1]


def history_problems(events: list[dict[str, Any]], sent: list[str]) -> list[str]:
    """What is wrong with a session's event log, given the user turns sent to it in order (empty: coherent)."""
    problems = []
    starts = [e for e in events if e.get("type") == "session.start"]
    if len(starts) != 1:
        problems.append(f"{len(starts)} session.start events (a second one means the session was re-created and "
                        "its history forked)")
    user_turns = [e["data"].get("content") for e in events if e.get("type") == "user.message"]
    if user_turns != sent:
        problems.append(f"user turns {user_turns} differ from those sent, in order: {sent}")
    open_turn: str | None = None
    for event in events:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "user.message":
            if open_turn is not None:
                problems.append(f"user turn {data.get('content')!r} arrived before the previous one was answered")
            open_turn = data.get("messageId")
        elif kind == "assistant.message":
            if data.get("originatingMessageId") != open_turn:
                problems.append(f"an answer ({str(data.get('content'))[:60]!r}) belongs to no open user turn: "
                                "two conversations are interleaved")
            open_turn = None
    return problems


def _event_dicts(sdk_events: list[Any]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in sdk_events]


@pytest.mark.applies(isolation=("shared-session",))
def test_shared_session_one_writer(target, target_file, target_fds, fleet, users, unique, fleet_state,
                                   timeout) -> None:
    """shared session: one writer, hand-over, takeover from a dead holder, one history"""
    alice, bob = users
    carol = "verify-carol"  # the member that dies holding the lease
    name = unique("verify-shared-")
    session_id = shared_session_id(name)
    a, b = fleet.client(alice), fleet.client(bob)
    sent: list[str] = []

    async def setup() -> None:
        await a.members.add_members(name, [alice, bob, carol])

    async def cleanup() -> None:
        # Delete while still members (membership is what authorizes it), then drop the membership.
        for handle in a.open_sessions + b.open_sessions:
            await handle.close()
        with contextlib.suppress(SessionNotFound):
            await a.delete_session(session_id, wait=timeout)
        fleet.forget(session_id)
        await a.members.remove_members(name, [alice, bob, carol])

    fleet.run(setup())
    fleet.delete_later(a, session_id)
    try:
        # 1. Two members write at once.
        words = {alice: unique("w"), bob: unique("w")}

        async def write(client: Any, user: str) -> FleetSession:
            session = await client.join_shared_session(name, wait=0)
            await session.reply(f"remember: {words[user]}", timeout=timeout)
            return session

        async def race() -> list[FleetSession | BaseException]:
            return list(await asyncio.gather(write(a, alice), write(b, bob), return_exceptions=True))

        results = fleet.run(race())
        winners = [(u, r) for u, r in zip((alice, bob), results, strict=True) if isinstance(r, FleetSession)]
        refused = [(u, r) for u, r in zip((alice, bob), results, strict=True) if isinstance(r, SessionInUse)]
        others = [r for r in results if not isinstance(r, FleetSession | SessionInUse)]
        assert not others, f"a member failed for another reason: {others}"
        assert len(winners) == 1 and len(refused) == 1, (
            f"expected exactly one writer: {len(winners)} got the session, {len(refused)} were told it is in use"
        )
        (winner, held), (loser, in_use) = winners[0], refused[0]
        assert "in use" in str(in_use), f"the refused member was not told the session is in use: {in_use}"
        sent.append(f"remember: {words[winner]}")

        # 2. After release the other member gets it.
        fleet.run(held.close())
        other = a if loser == alice else b

        async def hand_over() -> None:
            session = await other.join_shared_session(name, wait=timeout)
            await session.reply(f"remember: {words[loser]}", timeout=timeout)
            await session.close()

        fleet.run(hand_over())
        sent.append(f"remember: {words[loser]}")

        # 3. A holder dies with the lease; the lease expires; another member takes over. The ttl is scaled like every
        # bound of the run (--smoke-timeout over its default): renewing in time is the holder's machine's work.
        slow = max(1.0, timeout / DEFAULT_SMOKE_TIMEOUT_SECONDS)
        ttl = HOLDER_TTL * slow
        holder_word = unique("w")
        holder = subprocess.Popen(
            [sys.executable, str(HOLDER_SCRIPT), "--target", str(target_file), "--name", name, "--user", carol,
             "--prompt", f"remember: {holder_word}", "--ttl", str(ttl), "--timeout", str(timeout),
             "--hold", str(timeout * 2)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            pass_fds=target_fds,
        )
        try:
            _await_holder(holder, timeout)
            sent.append(f"remember: {holder_word}")
            time.sleep(ttl * 1.5)  # longer than the ttl: only renewal can have kept the lease
            with pytest.raises(SessionInUse):
                fleet.run(a.join_shared_session(name, wait=0))
        finally:
            holder.kill()  # SIGKILL: the holder releases nothing
            holder.wait(timeout=10)
        killed_at = time.monotonic()
        with pytest.raises(SessionInUse):
            fleet.run(a.join_shared_session(name, wait=0))  # the dead holder's lease is still running out

        async def take_over() -> tuple[FleetSession, float]:
            session = await a.join_shared_session(name, wait=ttl + timeout)
            return session, time.monotonic() - killed_at

        survivor, waited = fleet.run(take_over())
        # Bounded by the ttl (plus polling and a loaded machine), not by any client-side timeout.
        assert waited <= ttl + 2.0 * slow, (
            f"taking over a dead holder's lease took {waited:.1f} s: more than its ttl ({ttl:g} s) and "
            f"{2.0 * slow:g} s of polling; a lease must end when its holder stops renewing it")

        # 4. The history is one conversation.
        async def finish() -> tuple[str | None, str | None, list[dict[str, Any]]]:
            recalled = await survivor.reply("recall", timeout=timeout)
            counted = await survivor.reply("count turns", timeout=timeout)
            events = _event_dicts(await survivor.get_events())
            await survivor.close()
            return recalled, counted, events

        recalled, counted, api_events = fleet.run(finish())
        sent += ["recall", "count turns"]
        remembered = sent[:3]
        if recalled is not None and recalled.startswith(MARKER):
            expected = ", ".join(turn.removeprefix("remember: ") for turn in remembered)
            assert recalled == f"{MARKER} recalled: {expected}", f"the model saw another history: {recalled!r}"
            assert counted == f"{MARKER} user turns: {len(sent)}", f"the model counted otherwise: {counted!r}"

        if target.store_mode:  # the log the store holds: what every later resume reads
            events, where = _store_events(target, fleet, a, session_id), "the session's events.jsonl in the store"
        elif fleet_state is not None:
            log = fleet_state / "session-state" / session_id / EVENTS
            assert log.is_file(), f"no event log for the shared session at {log}"
            events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            where = str(log)
        else:
            events, where = api_events, "the session's events (through the SDK)"
        problems = history_problems(events, sent)
        assert not problems, f"{where} is not one coherent history: " + "; ".join(problems)
    finally:
        fleet.run(cleanup())


def _store_events(target, fleet, client, session_id: str) -> list[dict[str, Any]]:
    """Store mode: the session's events.jsonl as the store holds it."""
    from copilot_fleet.client.store import SessionStoreAccess
    from copilot_fleet.sessionstore import admin

    store = SessionStoreAccess(target, client.leases.redis)

    async def read() -> bytes | None:
        return await admin.read_file(store.redis, store.keys(None), session_id, EVENTS)

    data = fleet.run(read())
    assert data is not None, f"no events.jsonl for the shared session {session_id} in the store"
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
