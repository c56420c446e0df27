"""The provider's answers to sessionFs requests (shapes, error codes, ordering) and its JSON-RPC connection,
against a real redis-server; the CLI itself is in test_provider_cli.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.fencing import ServerIdentity, ServerRegistration, bind_lease
from copilot_fleet.sessionstore.jsonrpc import ConnectionClosed, JsonRpcPeer, RpcError
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.paths import SessionPaths
from copilot_fleet.sessionstore.provider import SessionFsProvider
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from tests.helpers.store_processes import RedisServer

pytestmark = pytest.mark.anyio
HOME = "/srv/s1/home"


class Setup:
    def __init__(self, client: aioredis.Redis, keys: StoreKeys, provider: SessionFsProvider) -> None:
        self.redis = client
        self.keys = keys
        self.provider = provider
        self.leases = LeaseManager(client, ttl=30)

    async def leased_session(self) -> str:
        sid = f"u-5-alice-req-1700000000-{secrets.token_hex(4)}"
        lease = await self.leases.acquire(sid)
        await bind_lease(self.redis, self.keys, sid, lease.token, "s1")
        return sid

    async def call(self, method: str, **params: Any) -> Any:
        return await self.provider.handle(f"sessionFs.{method}", params)


@pytest.fixture
async def setup(redis_server: RedisServer) -> AsyncIterator[Setup]:
    client = aioredis.from_url(redis_server.url)
    keys = StoreKeys("p" + secrets.token_hex(4))
    identity = ServerIdentity("s1")
    registration = ServerRegistration(client, keys, identity)
    await registration.take()
    store = RedisSessionStore(client, keys, writer=identity)
    provider = SessionFsProvider(store, SessionPaths("/session-state", HOME, "/srv/s1/work"))
    try:
        yield Setup(client, keys, provider)
    finally:
        await registration.release()
        await client.aclose()


async def test_answers_in_the_protocol_shapes(setup: Setup) -> None:
    sid = await setup.leased_session()
    assert await setup.call("mkdir", sessionId=sid, path="/session-state/files", recursive=True) is None
    assert await setup.call("appendFile", sessionId=sid, path="/session-state/events.jsonl", content="e1\n") is None
    assert await setup.call("writeFile", sessionId=sid, path=f"{HOME}/session-state/{sid}/workspace.yaml",
                            content="id: x\n") is None
    read = await setup.call("readFile", sessionId=sid, path="/session-state/workspace.yaml")
    assert read == {"content": "id: x\n"}
    stat = await setup.call("stat", sessionId=sid, path="/session-state/events.jsonl")
    assert stat["isFile"] is True and stat["isDirectory"] is False and stat["size"] == 3 and "error" not in stat
    assert await setup.call("exists", sessionId=sid, path="/session-state/files") == {"exists": True}
    typed = await setup.call("readdirWithTypes", sessionId=sid, path="/session-state")
    assert typed == {"entries": [{"name": "events.jsonl", "type": "file"}, {"name": "files", "type": "directory"},
                                 {"name": "workspace.yaml", "type": "file"}]}
    assert await setup.call("readdir", sessionId=sid, path="/session-state/files") == {"entries": []}
    cwd = await setup.call("stat", sessionId=sid, path="/srv/s1/work")
    assert cwd["isDirectory"] is True and "error" not in cwd
    forms = setup.provider.counters.path_forms
    assert forms["home"] == 1 and forms["cwd"] == 1 and forms["registered"] >= 6


async def test_requests_and_answers_match_the_sdks_own_types(setup: Setup) -> None:
    """The shapes are written out by hand (see provider.py); the SDK's generated classes are the reference."""
    from copilot import rpc

    sid = await setup.leased_session()
    state = "/session-state"
    calls: list[tuple[str, Any, Any]] = [
        ("mkdir", rpc.SessionFSMkdirRequest(path=f"{state}/d", session_id=sid, recursive=True), None),
        ("writeFile", rpc.SessionFSWriteFileRequest(content="é\n", path=f"{state}/d/f", session_id=sid), None),
        ("appendFile", rpc.SessionFSAppendFileRequest(content="x", path=f"{state}/d/f", session_id=sid), None),
        ("readFile", rpc.SessionFSReadFileRequest(path=f"{state}/d/f", session_id=sid), rpc.SessionFSReadFileResult),
        ("readFile", rpc.SessionFSReadFileRequest(path=f"{state}/nope", session_id=sid),
         rpc.SessionFSReadFileResult),
        ("stat", rpc.SessionFSStatRequest(path=f"{state}/d/f", session_id=sid), rpc.SessionFSStatResult),
        ("stat", rpc.SessionFSStatRequest(path=f"{state}/nope", session_id=sid), rpc.SessionFSStatResult),
        ("exists", rpc.SessionFSExistsRequest(path=f"{state}/d", session_id=sid), rpc.SessionFSExistsResult),
        ("readdir", rpc.SessionFSReaddirRequest(path=f"{state}/d", session_id=sid), rpc.SessionFSReaddirResult),
        ("readdirWithTypes", rpc.SessionFSReaddirWithTypesRequest(path=state, session_id=sid),
         rpc.SessionFSReaddirWithTypesResult),
        ("rename", rpc.SessionFSRenameRequest(dest=f"{state}/g", session_id=sid, src=f"{state}/d/f"), None),
        ("rm", rpc.SessionFSRmRequest(path=f"{state}/d", session_id=sid, force=False, recursive=True), None),
        ("rm", rpc.SessionFSRmRequest(path=f"{state}/nope", session_id=sid), None),
    ]
    parsed: list[Any] = []
    for method, request, result_type in calls:
        answer = await setup.call(method, **request.to_dict())
        if result_type is None:  # a write answers nothing, or an error object
            if answer is not None:
                parsed.append(rpc.SessionFSError.from_dict(answer))
            continue
        parsed.append(result_type.from_dict(answer))
    read, missing, stat, missing_stat, exists, listing, typed, rm_missing = parsed
    assert read.content == "é\nx" and read.error is None
    assert missing.error.code == rpc.SessionFSErrorCode.ENOENT
    assert stat.is_file and stat.size == len("é\nx".encode()) and stat.mtime >= stat.birthtime
    assert missing_stat.error.code == rpc.SessionFSErrorCode.ENOENT
    assert exists.exists and listing.entries == ["f"]
    assert [(e.name, e.type.value) for e in typed.entries] == [("d", "directory")]
    assert rm_missing.code == rpc.SessionFSErrorCode.ENOENT


async def test_missing_files_are_enoent_and_other_errors_unknown(setup: Setup) -> None:
    sid = await setup.leased_session()
    missing = await setup.call("readFile", sessionId=sid, path="/session-state/plan.md")
    assert missing["content"] == "" and missing["error"]["code"] == "ENOENT"
    stat = await setup.call("stat", sessionId=sid, path="/session-state/plan.md")
    assert stat["error"]["code"] == "ENOENT"
    no_parent = await setup.call("mkdir", sessionId=sid, path="/session-state/d", recursive=False)
    assert no_parent["code"] == "ENOENT"  # the session's own directory does not exist yet
    await setup.call("mkdir", sessionId=sid, path="/session-state/d", recursive=True)
    again = await setup.call("mkdir", sessionId=sid, path="/session-state/d", recursive=False)
    assert again["code"] == "UNKNOWN" and "already exists" in again["message"]


async def test_escaping_paths_are_refused_and_nothing_is_written(setup: Setup) -> None:
    sid = await setup.leased_session()
    other = "u-3-bob-x-1700000000-0123abcd"
    for path in ("/session-state/../x", f"{HOME}/session-state/{other}/events.jsonl", "/etc/passwd",
                 "/srv/s1/work/src.py"):
        error = await setup.call("writeFile", sessionId=sid, path=path, content="evil")
        assert error["code"] == "UNKNOWN" and sid in error["message"], error
        read = await setup.call("readFile", sessionId=sid, path=path)
        assert read["error"]["code"] == "UNKNOWN"
        assert await setup.call("exists", sessionId=sid, path=path) == {"exists": False}
    renamed = await setup.call("rename", sessionId=sid, src="/session-state/a", dest="/tmp/b")
    assert "outside the session's state" in renamed["message"]
    assert setup.provider.counters.refused_paths == 13
    stored = [k.decode() async for k in setup.redis.scan_iter(match=setup.keys.session(sid) + "*")]
    assert stored == [setup.keys.bind(sid)]  # the client's binding, and nothing the requests wrote


async def test_a_fenced_write_answers_the_reason(setup: Setup) -> None:
    sid = f"u-5-alice-req-1700000000-{secrets.token_hex(4)}"  # nobody leased it
    error = await setup.call("appendFile", sessionId=sid, path="/session-state/events.jsonl", content="x")
    assert error["code"] == "UNKNOWN"
    assert error["message"].startswith(f"fenced: session {sid}: no client holds its lease")
    assert setup.provider.counters.fenced == 1


async def test_store_failure_in_exists_is_an_rpc_error_not_false() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    store = RedisSessionStore(dead, StoreKeys("down"), writer=ServerIdentity("s1"))
    provider = SessionFsProvider(store, SessionPaths("/session-state", HOME, "/srv/s1/work"))
    sid = "u-5-alice-req-1700000000-0123abcd"
    try:
        with pytest.raises(RpcError, match=r"Redis at 127\.0\.0\.1:1"):
            await provider.handle("sessionFs.exists", {"sessionId": sid, "path": "/session-state/events.jsonl"})
        read = await provider.handle("sessionFs.readFile", {"sessionId": sid, "path": "/session-state/x"})
        assert read["error"]["code"] == "UNKNOWN" and "failed" in read["error"]["message"]
    finally:
        await dead.aclose()


async def test_bad_requests_get_json_rpc_errors(setup: Setup) -> None:
    with pytest.raises(RpcError) as unknown:
        await setup.provider.handle("sessionFs.sqliteQuery", {"sessionId": "x"})
    assert unknown.value.code == -32601
    with pytest.raises(RpcError) as invalid:
        await setup.call("readFile", sessionId="u-1-a-b-1-0123abcd")  # no path
    assert invalid.value.code == -32602 and "'path' must be a string" in invalid.value.message
    with pytest.raises(RpcError, match="'recursive' must be true or false"):
        await setup.call("mkdir", sessionId="u-1-a-b-1-0123abcd", path="/session-state/x", recursive="yes")
    with pytest.raises(RpcError, match="'content' must be a string"):
        await setup.call("appendFile", sessionId="u-1-a-b-1-0123abcd", path="/session-state/x")


async def test_one_sessions_requests_keep_their_order(setup: Setup) -> None:
    sid = await setup.leased_session()
    lines = [f"{i}\n" for i in range(200)]
    tasks = [
        asyncio.ensure_future(setup.call("appendFile", sessionId=sid, path="/session-state/events.jsonl", content=c))
        for c in lines
    ]
    assert await asyncio.gather(*tasks) == [None] * len(lines)
    read = await setup.call("readFile", sessionId=sid, path="/session-state/events.jsonl")
    assert read["content"] == "".join(lines)


# -- the JSON-RPC connection ------------------------------------------------------------------------------------


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    header = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" % len(body)
    return header + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(await reader.readexactly(length))


async def test_json_rpc_peer_both_directions_nodelay_and_close() -> None:
    server_side: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: server_side.put_nowait((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def handler(method: str, params: dict[str, Any]) -> Any:
        if method == "boom":
            raise RuntimeError("handler broke")
        return {"echo": params}

    peer = await JsonRpcPeer.connect("127.0.0.1", port, handler)
    reader, writer = await server_side.get()
    try:
        sock = peer._writer.get_extra_info("socket")
        assert peer.nodelay and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        pending = asyncio.ensure_future(peer.request("connect", {"token": "t"}))
        request = await read_frame(reader)
        assert request["method"] == "connect" and request["params"] == {"token": "t"}
        writer.write(frame({"jsonrpc": "2.0", "id": request["id"], "result": {"ok": True}}))
        assert await pending == {"ok": True}
        writer.write(frame({"jsonrpc": "2.0", "method": "session.event", "params": {}}))  # ignored
        writer.write(frame({"jsonrpc": "2.0", "id": 7, "method": "x", "params": {"a": 1}}))
        writer.write(frame({"jsonrpc": "2.0", "id": 8, "method": "boom", "params": {}}))
        answers = {m["id"]: m for m in [await read_frame(reader), await read_frame(reader)]}
        assert answers[7]["result"] == {"echo": {"a": 1}}
        assert answers[8]["error"] == {"code": -32603, "message": "handler broke"}
        failing = asyncio.ensure_future(peer.request("never", {}))
        await read_frame(reader)
        writer.close()
        await asyncio.wait_for(peer.closed.wait(), 30)
        with pytest.raises(ConnectionClosed):
            await failing
    finally:
        await peer.aclose()
        server.close()
