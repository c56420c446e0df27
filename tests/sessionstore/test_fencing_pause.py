"""A lease holder frozen mid-turn past its TTL, a second client taking over and writing, then the first thawed:
the store refuses the late writes (0 diverged histories); a shared directory cannot (the control diverges).

Each round: a session with one turn; an application process (lease_holder.py, its own process) takes the lease
(TTL 2 s), attaches the session on server A and starts a turn the test model answers after 8 s. As soon as the CLI
starts the turn, the application and server A are frozen with SIGSTOP. When Redis reports the lease key expired,
a second client takes the lease, attaches on server B and takes a turn. Then A and the application are thawed:
A finishes its turn and writes. A history diverged if its events.jsonl is not one chain (faults/history.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis
from copilot import PermissionHandler

from copilot_fleet.client.ids import new_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.nodelay import cli_client
from copilot_fleet.sessionstore.fencing import bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from faults.history import History, check_history
from tests.helpers.store_processes import (
    BareCli,
    ProviderProcess,
    RedisServer,
    require_cli,
    start_bare_cli,
    start_provider,
)

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]
HOLDER = Path(__file__).with_name("lease_holder.py")
HOLDER_TTL = 2.0
BOUND = 120.0  # how long a broken round may take to fail; each wait returns on its event


class Server(Protocol):
    name: str

    @property
    def address(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@dataclass
class Mode:
    name: str
    a: Server
    b: Server
    bind: bool  # store mode: the client binds its lease to the server it attaches on
    events: Any  # async (sid) -> bytes | None: the session's events.jsonl


@dataclass
class Fleet:
    redis: RedisServer
    token: str
    model: Any
    store: Mode
    volume: Mode


@pytest.fixture(scope="module")
def fleet(workdir: Path, redis_server: RedisServer, model: Any) -> Iterator[Fleet]:
    require_cli()
    token = secrets.token_hex(16)
    shared = workdir / "shared-session-state"
    shared.mkdir()
    started: list[ProviderProcess | BareCli] = []
    try:
        p1 = start_provider(workdir, "p1", redis_server.url, token)
        started.append(p1)
        p2 = start_provider(workdir, "p2", redis_server.url, token)
        started.append(p2)
        b1 = start_bare_cli(workdir, "b1", shared, token)
        started.append(b1)
        b2 = start_bare_cli(workdir, "b2", shared, token)
        started.append(b2)
        keys = StoreKeys("shared")

        async def store_events(sid: str) -> bytes | None:
            client = aioredis.from_url(redis_server.url)
            try:
                value = await client.get(keys.content(sid, "events.jsonl"))
                return value.encode() if isinstance(value, str) else value
            finally:
                await client.aclose()

        async def volume_events(sid: str) -> bytes | None:
            path = shared / sid / "events.jsonl"
            return path.read_bytes() if path.exists() else None

        yield Fleet(redis_server, token, model, Mode("store", p1, p2, True, store_events),
                    Mode("volume", b1, b2, False, volume_events))
    finally:
        for process in reversed(started):
            process.stop()


@dataclass
class Outcome:
    session_id: str
    holder: list[dict[str, Any]]
    history: History
    takeover_reply: str
    final_recall: str | None


class Lines:
    """The holder's JSON lines, read in a thread; `next(event)` waits for the next line of that kind."""

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
    """One application client of the test: a lease (bound to the server in store mode) and one SDK client."""

    def __init__(self, fleet: Fleet, mode: Mode, server: Server, sid: str) -> None:
        self.fleet, self.mode, self.server, self.sid = fleet, mode, server, sid
        self.redis = aioredis.from_url(fleet.redis.url)
        self.sdk = cli_client(server.address, fleet.token)
        self.options = {"provider": fleet.model.provider(), "model": "copilot-fleet-test",
                        "on_permission_request": PermissionHandler.approve_all}

    async def __aenter__(self) -> Client:
        self.lease = await LeaseManager(self.redis, ttl=30).acquire(self.sid, wait=BOUND)
        self.lease.start_renewing()
        if self.mode.bind:
            await bind_lease(self.redis, StoreKeys("shared"), self.sid, self.lease.token, self.server.name)
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


async def paused_holder_round(fleet: Fleet, mode: Mode) -> Outcome:
    sid = new_session_id("alice", f"pause-{mode.name}")
    async with Client(fleet, mode, mode.a, sid) as first:
        await first.turn("remember: apple", create=True)

    watcher = aioredis.from_url(fleet.redis.url)
    expiries = watcher.pubsub()
    await expiries.subscribe("__keyevent@0__:expired")
    env = {**os.environ, "STORE_TEST_REDIS_URL": fleet.redis.url, "COPILOT_CONNECTION_TOKEN": fleet.token}
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), "--session", sid, "--address", mode.a.address, "--server-id", mode.a.name,
         "--ttl", str(HOLDER_TTL), "--prompt", "sleep: 8 remember: banana", "--base-url", fleet.model.base_url,
         "--api-key", fleet.model.api_key, *(["--bind"] if mode.bind else [])],
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
            assert time.monotonic() < deadline, "the lease never expired"
            message = await expiries.get_message(ignore_subscribe_messages=True, timeout=BOUND)
            if message is not None and message["data"].decode() == lease_key:
                break
        # A second client takes over on server B and stays attached while the first one thaws and finishes.
        async with Client(fleet, mode, mode.b, sid) as second:
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
        async with Client(fleet, mode, mode.b, sid) as last:
            final = await last.turn("recall")
    return Outcome(sid, lines.seen, history, takeover, final)


async def test_a_thawed_holder_cannot_write_to_the_store(fleet: Fleet) -> None:
    outcome = await paused_holder_round(fleet, fleet.store)
    assert "remembered: cherry" in outcome.takeover_reply
    error = next((i for i in outcome.holder if i["event"] == "error"), None)
    # The late write was attempted and refused, and the thawed application was told why.
    assert error is not None, outcome.holder
    assert f"fenced: session {outcome.session_id}: its lease holder attached it on server p2" in error["error"]
    assert next(i for i in outcome.holder if i["event"] == "lease")["lost"] is True
    assert outcome.history.coherent, outcome.history.describe()  # 0 diverged histories
    assert outcome.final_recall is not None and "apple" in outcome.final_recall and "cherry" in outcome.final_recall


async def test_the_same_freeze_on_a_shared_directory_diverges(fleet: Fleet) -> None:
    # The control: without fencing the thawed server appends its answer after the other server's turn. This is
    # what the store prevents, and it shows the history check sees a divergence when there is one.
    outcome = await paused_holder_round(fleet, fleet.volume)
    assert "remembered: cherry" in outcome.takeover_reply
    assert any(i["event"] == "reply" for i in outcome.holder), outcome.holder  # nothing told it to stop
    assert not outcome.history.coherent and outcome.history.forks > 0, outcome.history.describe()
