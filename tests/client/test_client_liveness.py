"""A connection that ends under the fleet client: the pool reconnects, a waiting turn ends at once (no fleet needed).

The turn tests run the SDK's real JsonRpcClient over a socket pair, so they prove the hook on the SDK's reader
thread (client/liveness.py) and not a stand-in for it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from copilot._jsonrpc import JsonRpcClient, JsonRpcError

from copilot_fleet.client import ClientPool, FleetSession, ReplicaUnavailable, SessionDisconnected
from copilot_fleet.client.pool import is_transport_failure

pytestmark = pytest.mark.anyio


# -- the pool -----------------------------------------------------------------------------------------------------


class FakeSdkClient:
    """What the pool needs of a CopilotClient, with the SDK's connection state (`_state`)."""

    def __init__(self) -> None:
        self._state = "disconnected"
        self.force_stopped = False

    async def start(self) -> None:
        self._state = "connected"

    async def force_stop(self) -> None:
        self.force_stopped = True
        self._state = "disconnected"


@pytest.fixture
async def listening() -> AsyncIterator[str]:
    """An address that accepts TCP connections (the pool probes before the SDK connects)."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def fake_pool() -> tuple[ClientPool, list[FakeSdkClient]]:
    made: list[FakeSdkClient] = []

    def factory(address: str, token: str | None) -> Any:
        made.append(FakeSdkClient())
        return made[-1]

    return ClientPool(client_factory=factory), made


async def test_the_pool_reconnects_a_client_whose_connection_ended(listening: str) -> None:
    pool, made = fake_pool()
    async with pool:
        first = await pool.get(listening, "tok")
        assert await pool.get(listening, "tok") is first and len(made) == 1  # a live connection is shared
        made[0]._state = "disconnected"  # what the SDK's reader thread does when the server goes away
        second = await pool.get(listening, "tok")
        assert second is not first and len(made) == 2
        assert made[0].force_stopped and not made[1].force_stopped
        assert await pool.get(listening, "tok") is second


async def test_a_dead_pooled_connection_to_a_server_that_stays_down_is_replica_unavailable() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool, made = fake_pool()
    async with pool:
        await pool.get(address, None)
        server.close()
        await server.wait_closed()
        made[0]._state = "disconnected"
        with pytest.raises(ReplicaUnavailable, match=address):
            await pool.get(address, None)
        assert made[0].force_stopped and len(pool) == 0  # retired, not handed out again


async def test_discard_leaves_a_replacement_alone(listening: str) -> None:
    pool, made = fake_pool()
    async with pool:
        stale = await pool.get(listening, None)
        made[0]._state = "disconnected"
        fresh = await pool.get(listening, None)  # another call replaced it meanwhile
        await pool.discard(listening, None, stale)  # the late discard of the call that used the stale one
        assert await pool.get(listening, None) is fresh and not made[1].force_stopped
        await pool.discard(listening, None, fresh)
        assert len(pool) == 0 and made[1].force_stopped


def test_transport_failures_are_the_ones_where_the_server_cannot_have_acted() -> None:
    assert is_transport_failure(RuntimeError("Failed to connect to CLI server at 127.0.0.1:1: [Errno 111] refused"))
    assert is_transport_failure(RuntimeError("CLI process exited unexpectedly"))  # start() re-raises it so
    assert is_transport_failure(JsonRpcError(-32000, "SERVER_SHUTTING_DOWN"))
    assert not is_transport_failure(JsonRpcError(-32603, "Request session.resume failed: invalid model"))
    assert not is_transport_failure(RuntimeError("Session aborted before response completed"))
    assert not is_transport_failure(TimeoutError("slow"))


# -- a turn whose connection ends ---------------------------------------------------------------------------------


class _Connection:
    """The SDK's JsonRpcClient on one end of a socket pair; closing the other end is the server going away."""

    def __init__(self) -> None:
        ours, self.peer = socket.socketpair()
        self._file = ours.makefile("rwb", buffering=0)
        self._sock = ours
        self.rpc = JsonRpcClient(SimpleNamespace(stdin=self._file, stdout=self._file, stderr=None))
        self.rpc.start(asyncio.get_running_loop())

    def drop(self) -> None:
        self.peer.close()

    async def close(self) -> None:
        self.peer.close()
        self._sock.shutdown(socket.SHUT_RDWR)
        self._file.close()
        self._sock.close()
        await self.rpc.stop()


class _HangingSdkSession:
    """Like SDK 1.0.25's send_and_wait on a server that died: never woken."""

    session_id = "u-3-kim-crash-1795280000-0badcafe"

    def __init__(self, rpc: JsonRpcClient, answer: str | None = None) -> None:
        self._client = rpc
        self.answer = answer
        self.cancelled = False
        self.detached = False

    async def send_and_wait(self, prompt: str, **kwargs: Any) -> Any:
        if self.answer is not None:
            return SimpleNamespace(data=SimpleNamespace(content=self.answer))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def disconnect(self) -> None:
        self.detached = True


def handle(sdk: _HangingSdkSession) -> FleetSession:
    client = SimpleNamespace(_state="connected")
    return FleetSession(sdk=sdk, client=client, address="127.0.0.1:4401", lease=None)  # type: ignore[arg-type]


async def test_a_turn_ends_with_a_typed_error_as_soon_as_the_connection_drops() -> None:
    conn = _Connection()
    try:
        sdk = _HangingSdkSession(conn.rpc)
        session = handle(sdk)
        turn = asyncio.ensure_future(session.reply("sleep: 20 remember: x", timeout=30))
        await asyncio.sleep(0.1)
        assert not turn.done() and not session.disconnected
        conn.drop()
        dropped = time.monotonic()
        with pytest.raises(SessionDisconnected) as err:
            await asyncio.wait_for(turn, 5)
        assert time.monotonic() - dropped < 1.0
        assert "127.0.0.1:4401" in str(err.value) and sdk.session_id in str(err.value) and "resume" in str(err.value)
        await asyncio.sleep(0)
        assert sdk.cancelled, "the SDK's wait must not outlive the call"
        assert session.disconnected
        with pytest.raises(SessionDisconnected):  # refused before anything is sent
            await session.reply("again")
        await session.close()
        assert session.closed and not sdk.detached  # nothing to detach on a connection that ended
    finally:
        await conn.close()


async def test_a_turn_on_a_live_connection_returns_its_answer_and_can_be_cancelled() -> None:
    conn = _Connection()
    try:
        answered = handle(_HangingSdkSession(conn.rpc, answer="remembered: x"))
        assert await answered.reply("remember: x") == "remembered: x"
        sdk = _HangingSdkSession(conn.rpc)
        waiting = handle(sdk)
        turn = asyncio.ensure_future(waiting.reply("sleep: 20"))
        await asyncio.sleep(0.05)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        await asyncio.sleep(0)
        assert sdk.cancelled and not waiting.disconnected
    finally:
        await conn.close()
