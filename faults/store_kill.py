"""SIGKILL a server in the middle of a turn, store mode beside volume mode; the turn is retried on another server
and no completed turn is lost.

`what="cli"`: the CLI process is killed (in store mode its provider then exits too: it never runs without its
CLI). `what="provider"` (store mode only): the provider is killed, and its CLI must die with it (PR_SET_PDEATHSIG),
measured by waiting on the CLI's PID.

One session per mode lives through all the kills. Per kill and mode, interleaved: the session is attached on the
victim (rotating over the mode's servers), takes one turn (`remember: <word>`, completed), starts a long one
(`sleep: 2 remember: <word>`); the moment the CLI starts that turn the victim is killed. The application sees its
connection end, releases its lease, takes a new one (bound to the next server in store mode), resumes there and
sends the interrupted turn again; then `recall` lists every word the CLI replays. A lost turn is a completed word
missing from it. The victim is started again on its own port meanwhile. At the end each mode's events.jsonl must be
one chain (faults/history.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from copilot_fleet.client.ids import new_session_id
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import recalled_words
from faults.store_app import Attached, ServerGone, StoreApp, TurnFailed
from faults.store_fleet import Mode, Server, StoreFleet
from tests.helpers.processes import wait_exit

Progress = Callable[[str], None]
STEP_BOUND = 90.0  # how long one broken step may take to fail; each step returns on its event


@dataclass
class Tracked:
    mode: Mode
    session_id: str
    required: list[str] = field(default_factory=list)  # words of completed turns: must be recalled
    allowed: set[str] = field(default_factory=set)  # words of interrupted turns: may be recalled
    rotation: int = 0


class Restarts:
    """Killed servers coming back in the background, so that the next kill need not wait for them."""

    def __init__(self, fleet: StoreFleet) -> None:
        self.fleet = fleet
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def begin(self, server: Server) -> None:
        def again() -> None:
            self.fleet.reap(server)
            self.fleet.start_server(server)

        self.tasks[server.name] = asyncio.ensure_future(asyncio.to_thread(again))

    async def ready(self, server: Server) -> None:
        task = self.tasks.pop(server.name, None)
        if task is not None:
            await asyncio.wait_for(task, STEP_BOUND)
        if not server.running():
            await asyncio.to_thread(self.fleet.start_server, server)

    async def drain(self) -> list[str]:
        failed = []
        for name, task in list(self.tasks.items()):
            try:
                await asyncio.wait_for(task, STEP_BOUND)
            except Exception as exc:  # noqa: BLE001 - reported by the caller
                failed.append(f"{name}: {exc}")
        self.tasks.clear()
        return failed


def _exit_time(pid: int, timeout: float) -> float | None:
    """When the process ended (monotonic clock), or None if it still ran after `timeout` seconds."""
    return time.monotonic() if wait_exit(pid, timeout) else None


def _title(what: str) -> str:
    if what == "provider":
        return "Store mode: SIGKILL the provider in the middle of a turn"
    return "Store and volume mode: SIGKILL a CLI in the middle of a turn"


async def store_sigkill(fleet: StoreFleet, *, kills: int, budget: float, what: Literal["cli", "provider"] = "cli",
                        progress: Progress = lambda _: None) -> ScenarioResult:
    modes: tuple[Mode, ...] = ("store",) if what == "provider" else ("store", "volume")
    r = ScenarioResult("store-provider" if what == "provider" else "store-sigkill", _title(what), run_unit="kills")
    for mode in modes:
        r.target(f"kills ({mode})", min=kills, meaning=f"{what} processes SIGKILLed while a turn ran ({mode} mode)")
        r.target(f"lost_turns ({mode})", max=0, meaning="completed turns (their `remember:` word) missing after "
                 "the resume on another server")
        r.target(f"turns_not_retried ({mode})", max=0,
                 meaning="interrupted turns that did not complete when sent again on another server (one retry)")
        r.target(f"foreign_words ({mode})", max=0, meaning="recalled words that no turn of this session sent")
        r.target(f"incoherent_histories ({mode})", max=0, meaning="events.jsonl that is not one chain at the end")
    if what == "provider":
        r.target("cli_survived", max=0, meaning="CLIs still running 10 s after their provider was SIGKILLed")
    r.target("not_restarted", max=0, meaning="killed servers that did not start again on their port")
    deadline = time.monotonic() + budget
    restarts = Restarts(fleet)

    async with StoreApp(fleet) as app:
        tracked = {m: Tracked(m, new_session_id("faults", f"kill-{m}")) for m in modes}
        try:
            for t in tracked.values():
                a = await app.attach(t.session_id, fleet.of(t.mode)[0], create=True)
                try:
                    await a.turn(f"remember: {t.mode}start")
                    t.required.append(f"{t.mode}start")
                finally:
                    await a.detach()
            for k in range(kills):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {k} kills per mode: the time budget of {budget:.0f} s ran out")
                    break
                for t in tracked.values():
                    if not await _one_kill(fleet, app, restarts, t, k, what, r):
                        r.failures += 1
                if (k + 1) % 5 == 0 or k + 1 == kills:
                    progress(f"{r.name}: {k + 1}/{kills} kills per mode done")
        finally:
            for failure in await restarts.drain():
                r.bump("not_restarted")
                r.check("a killed server starts again on its port", False, failure)
            for t in tracked.values():
                events = Path(fleet.root) / f"{t.session_id}.events.jsonl"
                events.write_bytes(await app.events(t.session_id, t.mode))
                history = check_history(events, t.session_id)
                if not r.check(f"{t.mode}: history of {t.session_id} is one chain", history.coherent,
                               history.describe()):
                    r.bump(f"incoherent_histories ({t.mode})")
    r.runs = sum(r.targets[f"kills ({m})"].value for m in modes)
    return r.finish()


async def _attach_running(app: StoreApp, restarts: Restarts, servers: list[Server], start: int, sid: str,
                          avoid: Server | None = None) -> Attached:
    """Attach on the first server from `start` in rotation that runs (waiting for a restart if it must)."""
    last: Exception | None = None
    for i in range(len(servers)):
        server = servers[(start + i) % len(servers)]
        if server is avoid:
            continue
        try:
            await restarts.ready(server)
            return await app.attach(sid, server)
        except Exception as exc:  # noqa: BLE001 - try the next server, as an application fails over
            last = exc
    raise RuntimeError(f"no server took session {sid}: {last!r}")


async def _one_kill(fleet: StoreFleet, app: StoreApp, restarts: Restarts, t: Tracked, k: int, what: str,
                    r: ScenarioResult) -> bool:
    mode = t.mode
    servers = fleet.of(mode)
    inflight = f"{mode}i{k}"
    try:
        a = await _attach_running(app, restarts, servers, t.rotation, t.session_id)
    except Exception as exc:  # noqa: BLE001
        r.error(exc)
        r.check(f"{mode} kill {k}: the session attaches before the kill", False, repr(exc))
        return False
    victim = a.server
    t.rotation = servers.index(victim) + 1
    try:
        word = f"{mode}c{k}"
        await a.turn(f"remember: {word}")
        t.required.append(word)
        t.allowed.add(inflight)
        turn = asyncio.ensure_future(a.turn(f"sleep: 2 remember: {inflight}"))
        started = asyncio.ensure_future(a.turn_started.wait())
        await asyncio.wait({turn, started}, timeout=STEP_BOUND, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        cli_pid = victim.cli_pid
        killed_at = time.monotonic()
        fleet.kill(victim, "provider" if what == "provider" else "cli")
        r.bump(f"kills ({mode})")
        cli_exit = None
        if what == "provider" and cli_pid is not None:  # watched from the kill on, so its time is the CLI's own
            cli_exit = asyncio.ensure_future(asyncio.to_thread(_exit_time, cli_pid, 10.0))
        try:
            await asyncio.wait_for(turn, STEP_BOUND)
            t.required.append(inflight)  # it finished before the kill landed: a completed turn
            r.bump(f"turns_finished_before_kill ({mode})")
        except ServerGone:
            r.time(f"detect ({mode})", time.monotonic() - killed_at, "SIGKILL until the application saw the "
                   "connection end")
        except (TurnFailed, TimeoutError) as exc:
            r.error(exc)
            r.bump(f"interrupted_other_error ({mode})")
        if cli_exit is not None:
            gone_at = await cli_exit
            if gone_at is not None:
                r.time("cli_gone", gone_at - killed_at, "provider SIGKILL until its CLI had exited")
            else:
                r.bump("cli_survived")
                r.check(f"kill {k}: the CLI (pid {cli_pid}) dies with its provider", False, "still running")
    except Exception as exc:  # noqa: BLE001 - a failure before the kill is a failed run, not a crash of the suite
        r.error(exc)
        r.check(f"{mode} kill {k}: a turn on {victim.name} and the kill", False, repr(exc))
        await a.detach()
        return False
    await a.detach()
    restarts.begin(victim)
    return await _retry_elsewhere(app, restarts, servers, victim, t, inflight, killed_at, k, r)


async def _retry_elsewhere(app: StoreApp, restarts: Restarts, servers: list[Server], victim: Server, t: Tracked,
                           inflight: str, killed_at: float, k: int, r: ScenarioResult) -> bool:
    mode = t.mode
    b: Attached | None = None
    failure = ""
    for attempt in (1, 2):  # an application retries a failed resume once
        try:
            b = await _attach_running(app, restarts, servers, servers.index(victim) + 1, t.session_id, avoid=victim)
            break
        except Exception as exc:  # noqa: BLE001
            r.error(exc)
            failure = repr(exc)
            if attempt == 1:
                r.bump(f"resume_retried ({mode})")
    if b is None:
        r.bump(f"turns_not_retried ({mode})")
        r.check(f"{mode} kill {k}: {t.session_id} resumes on another server", False, failure)
        return False
    r.time(f"resume ({mode})", time.monotonic() - killed_at, "SIGKILL until the session was attached on another "
           "server")
    try:
        try:
            await b.turn(f"remember: {inflight}")
            t.required.append(inflight)
            r.time(f"retried ({mode})", time.monotonic() - killed_at,
                   "SIGKILL until the interrupted turn, sent again on another server, was answered")
        except Exception as exc:  # noqa: BLE001
            r.error(exc)
            r.bump(f"turns_not_retried ({mode})")
            r.check(f"{mode} kill {k}: the interrupted turn completes on {b.server.name}", False, repr(exc))
            return False
        words = recalled_words(await b.turn("recall")) or []
    except Exception as exc:  # noqa: BLE001
        r.error(exc)
        r.check(f"{mode} kill {k}: {t.session_id} answers after the resume", False, repr(exc))
        return False
    finally:
        await b.detach()
    missing = [w for w in t.required if w not in words]
    foreign = [w for w in words if w not in t.required and w not in t.allowed]
    r.bump(f"lost_turns ({mode})", len(missing))
    r.bump(f"foreign_words ({mode})", len(foreign))
    if words.count(inflight) > 1:
        r.bump(f"interrupted_turn_kept_and_retried ({mode})")  # the CLI wrote the first user message too
    return r.check(f"{mode} kill {k}: {t.session_id} recalls every completed turn", not missing and not foreign,
                   f"missing {missing}, foreign {foreign}")
