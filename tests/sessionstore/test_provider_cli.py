"""The provider with the real Copilot CLI 1.0.102 and a real redis-server: two servers that share no directory.

- the walk-through: create on server 1 with a turn, resume with its history on server 2, list, delete;
- both path forms the CLI sends land in one key; nothing of a session reaches either server's disk;
- writes from a server the lease is not bound to, or without a lease, fail the caller's call with the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from copilot import CopilotClient, PermissionHandler

from copilot_fleet.client.ids import new_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.nodelay import cli_client, client_nodelay
from copilot_fleet.sessionstore.admin import delete_session, list_sessions, read_file
from copilot_fleet.sessionstore.fencing import bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from tests.helpers.store_processes import ProviderProcess, RedisServer, require_cli, start_provider

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]


@dataclass
class Servers:
    s1: ProviderProcess
    s2: ProviderProcess
    token: str
    redis: RedisServer
    model: Any
    root: Path


@pytest.fixture(scope="module")
def servers(workdir: Path, redis_server: RedisServer, model: Any) -> Iterator[Servers]:
    require_cli()
    token = secrets.token_hex(16)
    started: list[ProviderProcess] = []
    try:
        for name in ("s1", "s2"):
            started.append(start_provider(workdir, name, redis_server.url, token))
        yield Servers(started[0], started[1], token, redis_server, model, workdir)
    finally:
        for provider in started:
            provider.stop()


class App:
    """An application process: SDK clients (TCP_NODELAY set), the lease manager, the store's admin view."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.redis = aioredis.from_url(servers.redis.url)
        self.keys = StoreKeys("shared")
        self.leases = LeaseManager(self.redis, ttl=30)
        self._clients: dict[str, CopilotClient] = {}

    def options(self) -> dict[str, Any]:
        return {"provider": self.servers.model.provider(), "model": "copilot-fleet-test",
                "on_permission_request": PermissionHandler.approve_all}

    async def client(self, server: ProviderProcess) -> CopilotClient:
        if server.address not in self._clients:
            client = cli_client(server.address, self.servers.token)
            await client.start()
            assert client_nodelay(client) is True
            self._clients[server.address] = client
        return self._clients[server.address]

    @asynccontextmanager
    async def leased(self, sid: str, server: ProviderProcess) -> AsyncIterator[CopilotClient]:
        """Hold the session's lease bound to `server` (what the fleet client will do) and hand out its client."""
        async with self.leases.hold(sid) as lease:
            await bind_lease(self.redis, self.keys, sid, lease.token, server.name)
            yield await self.client(server)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.force_stop()
        await self.redis.aclose()


@pytest.fixture
async def app(servers: Servers) -> AsyncIterator[App]:
    a = App(servers)
    try:
        yield a
    finally:
        await a.aclose()


async def test_walkthrough_create_resume_elsewhere_list_delete(app: App, servers: Servers) -> None:
    sid = new_session_id("alice", "walk")
    word = "w" + secrets.token_hex(6)  # appears nowhere but in this session's turns
    async with app.leased(sid, servers.s1) as c1:
        session = await c1.create_session(session_id=sid, name="walk", **app.options())
        first = await session.send_and_wait(f"remember: {word}")
        assert first is not None and f"remembered: {word}" in str(getattr(first.data, "content", None))
        await session.disconnect()

    async with app.leased(sid, servers.s2) as c2:
        session = await c2.resume_session(sid, **app.options())
        second = await session.send_and_wait("recall")
        # the history came along
        assert second is not None and f"recalled: {word}" in str(getattr(second.data, "content", None))
        await session.disconnect()

    listed = {s.session_id: s for s in await list_sessions(app.redis, app.keys, owner="alice")}
    assert sid in listed
    entry = listed[sid]
    assert entry.writer == "s2" and entry.bytes > 1000 and not entry.leased
    assert entry.created is not None and entry.modified is not None and entry.created < entry.modified
    # The CLI itself neither lists nor deletes provider-backed sessions: the store does.
    assert sid not in [m.session_id for m in await (await app.client(servers.s2)).list_sessions()]

    async with app.leases.hold(sid) as lease:
        assert await delete_session(app.redis, app.keys, sid, lease.token)
    assert sid not in {s.session_id for s in await list_sessions(app.redis, app.keys)}
    async with app.leased(sid, servers.s1) as c1:
        with pytest.raises(Exception, match="(?i)not found"):
            await c1.resume_session(sid, **app.options())

    # No shared directory, and nothing of the session on either server's own disk: no file named after it, no
    # file holding its turns (the CLI's session-store.db index would, were it not blocked).
    for server in (servers.s1, servers.s2):
        assert (server.home / "session-state").is_symlink() and (server.home / "session-store.db").is_symlink()
        files = [p for p in server.root.rglob("*") if p.is_file() and not p.is_symlink()]
        assert not [p for p in files if sid in p.name]
        assert not [p for p in files if word.encode() in p.read_bytes()]


async def test_both_path_forms_are_one_file(app: App, servers: Servers) -> None:
    sid = new_session_id("alice", "forms")
    async with app.leased(sid, servers.s1) as c1:
        session = await c1.create_session(session_id=sid, name="forms", **app.options())
        await session.send_and_wait("hello")
        await session.disconnect()
    tree = {k.decode() if isinstance(k, bytes) else k for k in await app.redis.hkeys(app.keys.tree(sid))}
    # workspace.yaml and checkpoints/index.md come as <COPILOT_HOME>/session-state/<id>/... and as
    # /session-state/...: each is one entry, and no entry carries either prefix.
    assert {"workspace.yaml", "checkpoints/index.md", "events.jsonl"} <= tree
    assert not [p for p in tree if p.startswith("/") or "session-state" in p or sid in p]
    workspace = await read_file(app.redis, app.keys, sid, "workspace.yaml")
    assert workspace is not None and sid.encode() in workspace


async def test_path_forms_are_counted_by_the_provider(app: App, servers: Servers, workdir: Path) -> None:
    own = start_provider(workdir, "forms", servers.redis.url, servers.token)
    sid = new_session_id("alice", "counted")
    try:
        async with app.leased(sid, own) as client:
            session = await client.create_session(session_id=sid, name="counted", **app.options())
            await session.send_and_wait("hello")
            await session.disconnect()
    finally:
        assert own.stop() == 0
    summary = own.output()
    registered = int(summary.split("paths under /session-state: ")[1].split(",")[0])
    home = int(summary.split("under COPILOT_HOME/session-state: ")[1].split(",")[0])
    assert registered > 10 and home > 3, summary
    assert "refused paths 0" in summary and "fenced 0" in summary


async def test_unleased_and_foreign_writes_fail_the_call_with_the_reason(app: App, servers: Servers) -> None:
    loose = new_session_id("alice", "loose")
    with pytest.raises(Exception, match=rf"fenced: session {loose}: no client holds its lease") as info:
        await (await app.client(servers.s1)).create_session(session_id=loose, name="loose", **app.options())
    assert "server s1 may not write to it" in str(info.value)

    sid = new_session_id("alice", "foreign")
    async with app.leased(sid, servers.s1) as c1:
        session = await c1.create_session(session_id=sid, name="foreign", **app.options())
        await session.send_and_wait("remember: apple")
        # While the lease is bound to s1, attaching the session on s2 fails: resume itself writes.
        with pytest.raises(Exception, match=rf"fenced: session {sid}: its lease holder attached it on server s1"):
            await (await app.client(servers.s2)).resume_session(sid, **app.options())
        still = await session.send_and_wait("recall")
        assert still is not None and "recalled: apple" in str(getattr(still.data, "content", None))
        await session.disconnect()


async def test_sdk_connections_get_tcp_nodelay(app: App, servers: Servers) -> None:
    assert client_nodelay(await app.client(servers.s1)) is True  # the application's, through the project's seam
    assert servers.s1.ready_info()["tcp_nodelay"] is True  # the provider's own connection to its CLI
