"""SIGKILL a CLI replica in the middle of a turn, again and again; every session must resume elsewhere with every
completed turn.

Each session belongs to a user whose first-choice replica (rendezvous hashing, as the fleet client routes) is the
victim. Per kill: the sessions attach on the victim, take one quick turn (`remember: <word>`, completed), start a
long one (`sleep: N remember: <word>`), and the victim is SIGKILLed while those turns run. The clients notice the
dead connection, close (which releases their leases) and resume through the fleet client, which fails over to the
next replica; `recall` then lists every word the CLI replays. Lost turns are completed words missing from it.
The word of the interrupted turn may or may not be there (the CLI writes the user message before the model
answers); it is counted either way, and once seen it must stay. supervisord restarts the victim; its identity
(port, COPILOT_HOME, the storage behind its session-state link) must be the same afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from copilot_fleet.client import ClientPool, FleetClient, FleetClientError, FleetSession, rank_replicas
from copilot_fleet.sessiondir import EVENTS
from faults.fleet_under_test import FleetUnderTest, Identity
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import SMALL, ReplicaGone, call_timeout, close_quietly, recalled_words, reply_watching

Progress = Callable[[str], None]


@dataclass
class Tracked:
    user: str
    session_id: str = ""
    required: list[str] = field(default_factory=list)  # words of completed turns: must be recalled
    allowed: set[str] = field(default_factory=set)  # words of interrupted turns: may be recalled


def users_by_primary(replicas: list[str], per_replica: int, prefix: str) -> dict[str, list[str]]:
    """`per_replica` user ids whose first-choice replica is each address."""
    out: dict[str, list[str]] = {a: [] for a in replicas}
    for i in range(100_000):
        if all(len(v) >= per_replica for v in out.values()):
            return out
        user = f"{prefix}{i}"
        first = rank_replicas(user, replicas)[0]
        if len(out[first]) < per_replica:
            out[first].append(user)
    raise RuntimeError("could not spread users over the replicas")


async def _timed(coro: object) -> tuple[float, object]:
    """Await and return (finish time, result or exception)."""
    try:
        result = await coro  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - the caller classifies it
        result = exc
    return time.monotonic(), result


async def sigkill_mid_turn(fleet: FleetUnderTest, *, kills: int, budget: float, sessions_per_kill: int = 2,
                           turn_seconds: float = 1.5, kill_after: float = 0.5,
                           progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("sigkill", "SIGKILL a CLI replica in the middle of a turn", run_unit="kills")
    r.target("kills", min=kills, meaning="replicas killed while a turn was running")
    r.target("lost_turns", max=0, meaning="completed turns (their `remember:` word) missing after the resume")
    r.target("foreign_words", max=0, meaning="recalled words that no turn of this session ever sent")
    r.target("not_resumed", max=0, meaning="sessions that could not be resumed on another replica (one retry)")
    r.target("untyped_errors", max=0, meaning="raw SDK errors the fleet client let through instead of a typed one")
    r.target("incoherent_histories", max=0, meaning="events.jsonl that is not one chain after all the kills")
    r.target("identity_changes", max=0, meaning="restarted replicas with another port, COPILOT_HOME or storage")
    target = fleet.target
    deadline = time.monotonic() + budget
    buckets = users_by_primary(list(target.replicas), sessions_per_kill, "kill")
    tracked = {u: Tracked(u) for users in buckets.values() for u in users}
    pending_identity: list[tuple[str, int, Identity]] = []
    rotation = 0

    async with ClientPool(connect_timeout=5) as pool:
        clients = {u: FleetClient(target, user=u, pool=pool, call_timeout=call_timeout()) for u in tracked}
        try:
            for t in tracked.values():
                session = await clients[t.user].create_session("kill", **SMALL)
                t.session_id = session.session_id
                word = f"{t.user}start"
                await reply_watching(session, f"remember: {word}", timeout=60)
                t.required.append(word)
                await session.close()

            for k in range(kills):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {k} kills: the time budget of {budget:.0f} s ran out")
                    break
                _verify_identities(fleet, pending_identity, r, wait=0)
                victim = await _pick_victim(fleet, rotation, timeout=90)
                if victim is None:
                    r.check("a replica to kill and another to resume on were healthy", False,
                            "fewer than two replicas came back within 90 s")
                    break
                rotation = fleet.replica_names().index(victim) + 1
                await _one_kill(fleet, victim, [tracked[u] for u in buckets[fleet.address_of(victim)]], clients,
                                k, turn_seconds, kill_after, pending_identity, r)
                if (k + 1) % 10 == 0 or k + 1 == kills:
                    progress(f"sigkill: {k + 1}/{kills} kills done")
        finally:
            await asyncio.to_thread(fleet.wait_healthy, None, 120)
            _verify_identities(fleet, pending_identity, r, wait=60)
            for t in tracked.values():
                if not t.session_id:
                    continue
                history = check_history(fleet.view(fleet.session_state / t.session_id / EVENTS),
                                        t.session_id)
                if not r.check(f"history of {t.session_id} is one chain", history.coherent, history.describe()):
                    r.bump("incoherent_histories")
                if history.torn_tail:
                    r.bump("torn_tails_tolerated")
            for c in clients.values():
                await c.aclose()
    r.runs = r.targets["kills"].value
    return r.finish()


async def _pick_victim(fleet: FleetUnderTest, start: int, timeout: float) -> str | None:
    """The next replica in rotation that is healthy, while at least one other is healthy too."""
    names = fleet.replica_names()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        healthy = await asyncio.to_thread(fleet.healthy_replicas)
        if len(healthy) >= 2:
            for i in range(len(names)):
                name = names[(start + i) % len(names)]
                if name in healthy:
                    return name
        await asyncio.sleep(0.3)
    return None


async def _one_kill(fleet: FleetUnderTest, victim: str, sessions: list[Tracked], clients: dict[str, FleetClient],
                    k: int, turn_seconds: float, kill_after: float,
                    pending_identity: list[tuple[str, int, Identity]], r: ScenarioResult) -> None:
    address = fleet.address_of(victim)
    handles: dict[str, FleetSession] = {}
    inflight = {t.user: f"{t.user}i{k}" for t in sessions}

    async def attach(t: Tracked) -> None:
        handle = await clients[t.user].resume_session(t.session_id, wait=35, **SMALL)
        handles[t.user] = handle
        if handle.address != address:
            r.bump("attached_elsewhere_before_kill")
        word = f"{t.user}c{k}"
        await reply_watching(handle, f"remember: {word}", timeout=60)
        t.required.append(word)

    try:
        await asyncio.gather(*(attach(t) for t in sessions))
        tasks = {}
        for t in sessions:
            t.allowed.add(inflight[t.user])
            tasks[t.user] = asyncio.ensure_future(_timed(reply_watching(
                handles[t.user], f"sleep: {turn_seconds:g} remember: {inflight[t.user]}", timeout=60)))
        await asyncio.sleep(kill_after)
        before = fleet.identity(victim)
        mid_turn = sum(1 for task in tasks.values() if not task.done())
        killed_at = time.monotonic()
        pid = fleet.kill(victim)
        r.bump("kills")
        r.bump("turns_interrupted", mid_turn)
        pending_identity.append((victim, pid, before))
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks.values()), timeout=90)
    except Exception as exc:  # noqa: BLE001 - a failure before the kill is a failed run, not a crash of the suite
        r.error(exc)
        r.check(f"kill {k}: sessions attach and take a turn on {victim} before the kill", False, repr(exc))
        r.failures += 1
        await asyncio.gather(*(close_quietly(h) for h in handles.values()))
        return
    for user, (finished, outcome) in zip(tasks, outcomes, strict=True):
        t = next(s for s in sessions if s.user == user)
        if isinstance(outcome, ReplicaGone):
            r.time("detect", finished - killed_at, "SIGKILL until the client saw the connection end")
        elif isinstance(outcome, BaseException):
            r.error(outcome)
        else:  # the turn finished before the kill landed: it is a completed turn now
            t.required.append(inflight[user])
            r.bump("turns_finished_before_kill")
    await asyncio.gather(*(close_quietly(h) for h in handles.values()))

    async def resume(t: Tracked) -> bool:
        handle = None
        failure = ""
        for attempt in (1, 2):  # an application retries a failed resume once
            try:
                handle = await clients[t.user].resume_session(t.session_id, wait=35, **SMALL)
                break
            except FleetClientError as exc:
                r.error(exc)
                failure = repr(exc)
            except Exception as exc:  # noqa: BLE001 - an SDK error the fleet client let through untyped
                r.error(exc)
                r.bump("untyped_errors")
                r.check(f"kill {k}: resume errors are the fleet client's typed errors", False, repr(exc))
                failure = repr(exc)
            if attempt == 1:
                r.bump("resume_retried")
                await asyncio.sleep(1)
        if handle is None:
            r.bump("not_resumed")
            r.check(f"kill {k}: {t.session_id} resumes", False, failure)
            return False
        r.time("resume", time.monotonic() - killed_at, "SIGKILL until the session was attached on another replica")
        if handle.address == address:
            r.bump("resumed_on_restarted_victim")
        try:
            words = recalled_words(await reply_watching(handle, "recall", timeout=60)) or []
            r.time("first_answer", time.monotonic() - killed_at, "SIGKILL until the resumed session answered")
        except Exception as exc:  # noqa: BLE001
            r.error(exc)
            r.bump("not_resumed")
            r.check(f"kill {k}: {t.session_id} answers after the resume", False, repr(exc))
            return False
        finally:
            await close_quietly(handle)
        missing = [w for w in t.required if w not in words]
        foreign = [w for w in words if w not in t.required and w not in t.allowed]
        r.bump("lost_turns", len(missing))
        r.bump("foreign_words", len(foreign))
        ok = r.check(f"kill {k}: {t.session_id} recalls every completed turn", not missing and not foreign,
                     f"missing {missing}, foreign {foreign}")
        if inflight[t.user] in words:
            r.bump("interrupted_turn_kept")
            t.required.append(inflight[t.user])  # in the history now: it must stay
        else:
            r.bump("interrupted_turn_dropped")
        return ok

    if not all(await asyncio.gather(*(resume(t) for t in sessions))):
        r.failures += 1


def _verify_identities(fleet: FleetUnderTest, pending: list[tuple[str, int, Identity]], r: ScenarioResult,
                       wait: float) -> None:
    """Compare each restarted replica with what it was before its kill, once it runs again with a new PID."""
    deadline = time.monotonic() + wait
    while pending:
        still = []
        for name, old_pid, before in pending:
            pid = fleet.pid(name)
            if pid is None or pid == old_pid or not fleet.healthy(name):
                still.append((name, old_pid, before))
                continue
            diff = before.differences(fleet.identity(name))
            if diff:
                r.bump("identity_changes")
            r.check(f"{name} came back as itself", not diff, "; ".join(diff))
            r.bump("restarts_verified")
        pending[:] = still
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    if wait and pending:
        for name, _, _ in pending:
            r.check(f"{name} came back after its kill", False, f"not healthy again within {wait:.0f} s")
