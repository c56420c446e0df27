"""A lease holder frozen mid-turn past its TTL, a second client taking over and writing, then the first thawed:
diverged histories, store mode against volume mode (the store refuses the late writes; a shared directory cannot).

Each round: a session with one turn; an application process (faults/lease_holder.py, its own process) takes the
lease (TTL 2 s; bound to server A in store mode), attaches the session on server A and starts a turn the test model
answers after 8 s. As soon as the CLI starts the turn, the application and server A are frozen with SIGSTOP. When
Redis reports the lease key expired (a keyspace notification), a second client takes the lease (bound to server B in
store mode), attaches on B and takes a turn. Then A and the application are thawed: A finishes its turn and writes.
A history diverged if its events.jsonl is not one chain (faults/history.py). The thawed application's outcome is
counted too: refused with `fenced: session ...` in store mode, an ordinary reply in volume mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis
from copilot import PermissionHandler

from copilot_fleet.client.ids import new_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.nodelay import cli_client
from copilot_fleet.sessionstore.fencing import bind_lease
from copilot_fleet.sessionstore.keys import SHARED_SCOPE, StoreKeys
from faults.history import History, check_history
from faults.measure import ScenarioResult
from faults.store_app import StoreApp
from faults.store_fleet import StoreFleet

HOLDER = Path(__file__).with_name("lease_holder.py")
HOLDER_TTL = 2.0
BOUND = 120.0  # how long a broken round may take to fail; each wait returns on its event
Progress = Callable[[str], None]


class PausableServer(Protocol):
    name: str

    @property
    def address(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@dataclass
class PauseMode:
    name: str  # store | volume
    a: PausableServer
    b: PausableServer
    bind: bool  # store mode: the client binds its lease to the server it attaches on
    events: Callable[[str], Awaitable[bytes | None]]  # the session's events.jsonl


@dataclass
class World:
    redis_url: str  # Redis with keyspace notifications (`notify-keyspace-events` including Ex)
    token: str
    model: Any  # the test model (copilot_fleet.testmodel.serve)


@dataclass
class Outcome:
    session_id: str
    holder: list[dict[str, Any]]  # what the thawed application printed
    history: History
    takeover_reply: str
    final_recall: str | None

    @property
    def holder_error(self) -> str | None:
        return next((str(i["error"]) for i in self.holder if i["event"] == "error"), None)

    @property
    def holder_replied(self) -> bool:
        return any(i["event"] == "reply" for i in self.holder)


class Lines:
    """The holder's JSON lines, read in a thread; `wait_for(event)` waits for the first line of that kind."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.seen.append(item)
                self._cond.notify_all()
        with self._cond:
            self.seen.append({"event": "exit"})
            self._cond.notify_all()

    def wait_for(self, event: str) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((i for i in self.seen if i["event"] in (event, "exit")), None), timeout=BOUND
            )
        if not found or found["event"] != event:
            raise AssertionError(f"the lease holder never said {event!r}; it said {self.seen}")
        return found


class Client:
    """One application client: a lease (bound to the server in store mode) and one SDK client."""

    def __init__(self, world: World, mode: PauseMode, server: PausableServer, sid: str) -> None:
        self.world, self.mode, self.server, self.sid = world, mode, server, sid
        self.redis = aioredis.from_url(world.redis_url)
        self.sdk = cli_client(server.address, world.token)
        self.options = {"provider": world.model.provider(), "model": "copilot-fleet-test",
                        "on_permission_request": PermissionHandler.approve_all}

    async def __aenter__(self) -> Client:
        self.lease = await LeaseManager(self.redis, ttl=30).acquire(self.sid, wait=BOUND)
        self.lease.start_renewing()
        if self.mode.bind:
            await bind_lease(self.redis, StoreKeys(SHARED_SCOPE), self.sid, self.lease.token, self.server.name)
        await self.sdk.start()
        return self

    async def turn(self, prompt: str, *, create: bool = False) -> str:
        if create:
            self.session = await self.sdk.create_session(session_id=self.sid, name="pause", **self.options)
        else:
            self.session = await self.sdk.resume_session(self.sid, **self.options)
        reply = await self.session.send_and_wait(prompt, timeout=BOUND)
        return str(getattr(reply.data, "content", "")) if reply is not None else ""

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.session.disconnect()
        finally:
            await self.sdk.force_stop()
            await self.lease.release()
            await self.redis.aclose()


async def paused_holder_round(world: World, mode: PauseMode) -> Outcome:
    sid = new_session_id("alice", f"pause-{mode.name}")
    async with Client(world, mode, mode.a, sid) as first:
        await first.turn("remember: apple", create=True)

    watcher = aioredis.from_url(world.redis_url)
    expiries = watcher.pubsub()
    await expiries.subscribe("__keyevent@0__:expired")
    env = {**os.environ, "STORE_TEST_REDIS_URL": world.redis_url, "COPILOT_CONNECTION_TOKEN": world.token}
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), "--session", sid, "--address", mode.a.address, "--server-id", mode.a.name,
         "--ttl", str(HOLDER_TTL), "--prompt", "sleep: 8 remember: banana", "--base-url", world.model.base_url,
         "--api-key", world.model.api_key, *(["--bind"] if mode.bind else [])],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    lines = Lines(holder)
    frozen = False
    try:
        lines.wait_for("turn_started")
        os.kill(holder.pid, signal.SIGSTOP)  # the application, and with it its lease renewal
        mode.a.pause()  # the server of the turn
        frozen = True
        lease_key = f"copilot-fleet:lease:{sid}"
        deadline = time.monotonic() + BOUND
        while True:  # each get_message returns on a message (None for the subscription's confirmation)
            if time.monotonic() > deadline:
                raise AssertionError("the lease never expired")
            message = await expiries.get_message(ignore_subscribe_messages=True, timeout=BOUND)
            if message is not None and message["data"].decode() == lease_key:
                break
        # A second client takes over on server B and stays attached while the first one thaws and finishes.
        async with Client(world, mode, mode.b, sid) as second:
            takeover = await second.turn("remember: cherry")
            mode.a.resume()
            os.kill(holder.pid, signal.SIGCONT)
            frozen = False
            lines.wait_for("lease")  # the thawed turn ended, one way or the other
    finally:
        if frozen:
            mode.a.resume()
            os.kill(holder.pid, signal.SIGCONT)
        await expiries.aclose()
        await watcher.aclose()
        holder.wait(timeout=BOUND)
    lines.wait_for("exit")

    raw = await mode.events(sid)
    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "events.jsonl"
        if raw is not None:
            events_file.write_bytes(raw)
        history = check_history(events_file, sid)
    final = None
    if mode.bind:
        async with Client(world, mode, mode.b, sid) as last:
            final = await last.turn("recall")
    return Outcome(sid, lines.seen, history, takeover, final)


async def paused_holders(fleet: StoreFleet, *, rounds: int, budget: float,
                         progress: Progress = lambda _: None) -> ScenarioResult:
    """`rounds` paused-holder rounds per mode, interleaved."""
    r = ScenarioResult("store-fencing", "Fenced writes: a lease holder frozen past its TTL, then thawed",
                       run_unit="rounds")
    r.target("diverged (store)", max=0, meaning="store-mode sessions whose events.jsonl forked after the thaw")
    r.target("diverged (volume)", min=1, meaning="volume-mode sessions that forked: the same freeze, no fencing "
             "(at least 1 shows the check sees it)")
    r.target("thawed_write_accepted (store)", max=0,
             meaning="thawed holders whose turn ended without the store's `fenced:` refusal")
    r.target("lost_turns (store)", max=0, meaning="completed turns (the first client's and the takeover's) "
             "missing from the store-mode history after the thaw")
    r.target("takeover_failed", max=0, meaning="second clients whose turn on the other server was not answered")
    world = World(fleet.redis.url, fleet.token, fleet.model)
    app = StoreApp(fleet)
    store, volume = fleet.of("store"), fleet.of("volume")
    modes = [PauseMode("store", store[0], store[1], True, lambda sid: app.events(sid, "store")),
             PauseMode("volume", volume[0], volume[1], False, lambda sid: app.events(sid, "volume"))]
    deadline = time.monotonic() + budget
    try:
        for k in range(rounds):
            if time.monotonic() > deadline:
                r.notes.append(f"stopped after {k} rounds per mode: the time budget of {budget:.0f} s ran out")
                break
            for mode in modes:
                r.runs += 1
                began = time.monotonic()
                try:
                    outcome = await paused_holder_round(world, mode)
                except Exception as exc:  # noqa: BLE001 - a broken round is a failed run, not a crash of the suite
                    r.error(exc)
                    r.failures += 1
                    r.check(f"{mode.name} round {k} ran", False, repr(exc))
                    continue
                r.time(f"round ({mode.name})", time.monotonic() - began, "one round, freeze to final check")
                if "remembered: cherry" not in outcome.takeover_reply:
                    r.bump("takeover_failed")
                if not outcome.history.coherent:
                    r.bump(f"diverged ({mode.name})")
                    r.bump(f"forks ({mode.name})", outcome.history.forks)
                error = outcome.holder_error or ""
                if mode.bind:
                    fenced = f"fenced: session {outcome.session_id}" in error
                    if fenced:
                        r.bump("thawed_write_refused (store)")
                    else:
                        r.bump("thawed_write_accepted (store)")
                        r.check(f"store round {k}: the thawed holder is refused", False, str(outcome.holder))
                    recall = outcome.final_recall or ""
                    if not ("apple" in recall and "cherry" in recall):
                        r.bump("lost_turns (store)")
                        r.check(f"store round {k}: the history keeps both completed turns", False, recall)
                elif outcome.holder_replied:
                    r.bump("thawed_holder_got_a_reply (volume)")
            progress(f"store-fencing: round {k + 1}/{rounds} per mode")
    finally:
        await app.aclose()
    if r.missed_targets:
        r.failures = max(r.failures, 1)
    return r.finish()
