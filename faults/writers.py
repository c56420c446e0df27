"""Two writers on one session: with the fleet client's lease never two attached at once, and one coherent
`events.jsonl`; without it (the control) the histories fork, which proves the check can see a divergence.

The writers are two application servers (each its own ClientPool and FleetClient) whose targets list one
different replica each, the worst case: two CLIs on one shared `session-state/`. Each round, both race to resume
the same session (with a random wait for the lease), take a `remember:` turn and close. Attachment intervals are
measured on one clock; while attached, the CLI's own in-use locks (`inuse.<pid>.hold`, flocked by the CLI that has
the session open) are counted, so "never two attached at once" is checked on the servers as well as the clients.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from copilot_fleet.client import ClientPool, FleetClient, SessionInUse
from copilot_fleet.sessiondir import EVENTS, INUSE_HOLD_GLOB
from copilot_fleet.target import Target
from faults.fleet_under_test import FleetUnderTest
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import SMALL, call_timeout, close_quietly, recalled_words, reply_watching

Progress = Callable[[str], None]


def cli_holders(session_dir: Path) -> int:
    """How many CLI processes hold the session open right now (flocked `inuse.*.hold` files)."""
    held = 0
    for hold in session_dir.glob(INUSE_HOLD_GLOB):
        try:
            fd = os.open(hold, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                held += 1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return held


def pinned(target: Target, replica: str) -> Target:
    """The target as an application server that only knows one replica sees it (no endpoint to fail over to)."""
    return target.model_copy(update={"replicas": [replica], "endpoint": None})


async def two_writers(fleet: FleetUnderTest, *, rounds: int, sessions: int, budget: float,
                      progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("writers", "Two writers on one session through the fleet client", run_unit="attach attempts")
    r.target("double_attach", max=0, meaning="moments two writers were attached to one session at once")
    r.target("diverged_sessions", max=0, meaning="sessions whose events.jsonl is not one chain")
    r.target("lost_turns", max=0, meaning="completed turns missing from the final recall")
    target = fleet.target
    replicas = list(target.replicas[:2])
    rng = random.Random(7)
    deadline = time.monotonic() + budget
    users = [f"writer{i}" for i in range(sessions)]
    intervals: dict[str, list[tuple[float, float, str]]] = {u: [] for u in users}
    completed: dict[str, list[str]] = {u: [] for u in users}
    sids: dict[str, str] = {}

    async with ClientPool() as pool_a, ClientPool() as pool_b:
        bound = call_timeout()
        apps = {
            "A": {u: FleetClient(pinned(target, replicas[0]), user=u, pool=pool_a, call_timeout=bound) for u in users},
            "B": {u: FleetClient(pinned(target, replicas[1]), user=u, pool=pool_b, call_timeout=bound) for u in users},
        }
        try:
            for u in users:
                s = await apps["A"][u].create_session("writers", **SMALL)
                sids[u] = s.session_id
                await reply_watching(s, f"remember: {u}base")
                completed[u].append(f"{u}base")
                await s.close()

            async def attempt(app: str, user: str, rnd: int) -> None:
                r.runs += 1
                fc = apps[app][user]
                try:
                    handle = await fc.resume_session(sids[user], wait=rng.uniform(0, 2.5), **SMALL)
                except SessionInUse:
                    r.bump("refused_in_use")
                    return
                except Exception as exc:  # noqa: BLE001
                    r.error(exc)
                    r.failures += 1
                    r.check(f"{app} resumes {sids[user]}", False, repr(exc))
                    return
                start = time.monotonic()
                r.bump("attached")
                r.time("attach", start - began, "from the round's start until this writer was attached")
                try:
                    word = f"{app}{rnd}{user}"
                    await reply_watching(handle, f"remember: {word}", timeout=60)
                    completed[user].append(word)
                    holders = cli_holders(fleet.view(fleet.session_state / sids[user]))
                    if holders > 1:
                        r.bump("double_attach")
                        r.check(f"one CLI holds {sids[user]} while {app} writes", False, f"{holders} hold it")
                except Exception as exc:  # noqa: BLE001
                    r.error(exc)
                    r.failures += 1
                    r.check(f"{app} writes to {sids[user]}", False, repr(exc))
                finally:
                    await close_quietly(handle)
                    intervals[user].append((start, time.monotonic(), app))

            for rnd in range(rounds):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {rnd} rounds: the time budget of {budget:.0f} s ran out")
                    break
                began = time.monotonic()
                await asyncio.gather(*(attempt(app, u, rnd) for u in users for app in ("A", "B")))
                if (rnd + 1) % 10 == 0:
                    progress(f"writers: round {rnd + 1}/{rounds}")

            for u in users:
                spans = sorted(intervals[u])
                overlaps = sum(1 for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1])
                if overlaps:
                    r.bump("double_attach", overlaps)
                r.check(f"attachments of {sids[u]} never overlap", not overlaps, f"{overlaps} overlap(s)")
                history = check_history(fleet.view(fleet.session_state / sids[u] / EVENTS), sids[u])
                if not r.check(f"{sids[u]} is one history", history.coherent, history.describe()):
                    r.bump("diverged_sessions")
                s = await apps["A"][u].resume_session(sids[u], wait=10, **SMALL)
                words = recalled_words(await reply_watching(s, "recall")) or []
                await s.close()
                missing = [w for w in completed[u] if w not in words]
                r.bump("lost_turns", len(missing))
                r.check(f"{sids[u]} recalls all {len(completed[u])} completed turns", not missing, f"missing {missing}")
        finally:
            for clients in apps.values():
                for c in clients.values():
                    await c.aclose()
    return r.finish()


async def writers_without_lease(fleet: FleetUnderTest, *, attempts: int, budget: float) -> ScenarioResult:
    """The control: raw SDK clients on two replicas, no lease, both writing one session at once."""
    from copilot import PermissionHandler

    from copilot_fleet.nodelay import cli_client

    r = ScenarioResult("writers-control", "Control: two writers WITHOUT the lease (raw SDK)", run_unit="attempts")
    r.target("diverged_sessions", min=1, meaning="sessions whose events.jsonl forked: the check sees divergence")
    target = fleet.target
    assert target.provider is not None
    token = target.token_for()
    kw = dict(provider=target.provider.to_sdk(), on_permission_request=PermissionHandler.approve_all, **SMALL)
    clients = [cli_client(a, token) for a in target.replicas[:2]]
    deadline = time.monotonic() + budget
    try:
        for c in clients:
            await c.start()
        for k in range(attempts):
            if time.monotonic() > deadline:
                r.notes.append(f"stopped after {k} attempts: the time budget ran out")
                break
            r.runs += 1
            created = await clients[0].create_session(name="control", model=target.model, **kw)
            await created.send_and_wait("remember: base", timeout=60)
            await created.disconnect()
            sid = created.session_id
            a, b = await asyncio.gather(clients[0].resume_session(sid, **kw), clients[1].resume_session(sid, **kw))
            answers = await asyncio.gather(a.send_and_wait(f"remember: a{k}", timeout=60),
                                           b.send_and_wait(f"remember: b{k}", timeout=60))
            recalls = await asyncio.gather(a.send_and_wait("recall", timeout=60), b.send_and_wait("recall", timeout=60))
            await asyncio.gather(a.disconnect(), b.disconnect())
            seen = [recalled_words(getattr(x.data, "content", None) if x else None) for x in recalls]
            if seen[0] != seen[1]:
                r.bump("clients_saw_different_histories")
            history = check_history(fleet.view(fleet.session_state / sid / EVENTS), sid)
            if not history.coherent:
                r.bump("diverged_sessions")
            r.bump("forks", history.forks)
            r.check(f"attempt {k}: both writers were answered", all(answers), "")
            await clients[0].delete_session(sid)
    finally:
        for c in clients:
            await c.force_stop()
    return r.finish()
