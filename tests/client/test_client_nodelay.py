"""TCP_NODELAY on every connection the project opens to a CLI server (copilot_fleet/nodelay.py).

Each kind of connection is checked twice against real CLI servers: through the seam's own read-back
(`client_nodelay`, getsockopt on the SDK client's socket) and independently of the SDK, by finding this process's
TCP sockets connected to the server in /proc/self/fd and reading the option from each. The SDK as shipped is the
control (Nagle on), so the checks can tell the two apart. The fallback is tested by changing the SDK's private state
the way a later SDK might: the client must keep working with the SDK's behaviour, and say why.
"""

from __future__ import annotations

import ast
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from copilot import CopilotClient, PermissionHandler, RuntimeConnection

from copilot_fleet import nodelay
from copilot_fleet.client import ClientPool, FleetClient
from copilot_fleet.client.admin import FleetAdmin
from copilot_fleet.pod import health
from copilot_fleet.target import Target

if TYPE_CHECKING:
    from tests.helpers.processes import CliFleet

ROOT = Path(__file__).resolve().parents[2]
OPTS: dict[str, Any] = {
    "available_tools": [],
    "system_message": {"mode": "replace", "content": "You are the copilot-fleet test assistant."},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def connections_to(address: str) -> list[int]:
    """TCP_NODELAY (0 or 1) of every TCP socket of this process connected to `host:port`, read without the SDK."""
    host, _, port = address.rpartition(":")
    peer = (host, int(port))
    values = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed meanwhile
        with sock:  # closes the duplicate only
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                if sock.getpeername() != peer:
                    continue
            except OSError:
                continue  # a listening socket
            values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return values


def target_for(fleet: CliFleet) -> Target:
    return Target.model_validate({
        "stack": "nodelay-it", "platform": "local", "isolation": "shared-cli",
        "replicas": [fleet.a.address, fleet.b.address], "connection_token": fleet.token,
        "redis_url": fleet.redis.url, "model": "copilot-fleet-test",
        "provider": {"type": "openai", "base_url": fleet.model.base_url, "api_key": fleet.model.api_key},
    })


# -- the seam ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.fleet
async def test_cli_client_has_nodelay_and_the_sdk_as_shipped_has_not(cli_fleet: CliFleet) -> None:
    address = cli_fleet.a.address
    ours = nodelay.cli_client(address, cli_fleet.token)
    shipped = CopilotClient(connection=RuntimeConnection.for_uri(address, connection_token=cli_fleet.token))
    try:
        await ours.start()
        assert nodelay.client_nodelay(ours) is True
        assert connections_to(address) == [1]
        await shipped.start()
        assert nodelay.client_nodelay(shipped) is False  # the control: SDK 1.0.25 leaves Nagle on
        assert sorted(connections_to(address)) == [0, 1]
    finally:
        await ours.force_stop()
        await shipped.force_stop()
    assert connections_to(address) == []
    assert nodelay.nodelay_problem() is None


@pytest.mark.anyio
@pytest.mark.fleet
async def test_a_client_the_sdk_starts_on_first_use_has_nodelay_too(cli_fleet: CliFleet) -> None:
    """No explicit start(): the SDK connects inside create_session, through the same hook."""
    client = nodelay.cli_client(cli_fleet.b.address, cli_fleet.token)
    try:
        session = await client.create_session(on_permission_request=PermissionHandler.approve_all, **OPTS,
                                               provider={"type": "openai", "base_url": cli_fleet.model.base_url,
                                                         "api_key": cli_fleet.model.api_key},
                                               model="copilot-fleet-test")
        assert nodelay.client_nodelay(client) is True
        assert connections_to(cli_fleet.b.address) == [1]
        await session.disconnect()
        await client.delete_session(session.session_id)
    finally:
        await client.force_stop()


def test_open_tcp_sets_nodelay_before_returning() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            nodelay.open_tcp("127.0.0.1", server.getsockname()[1], timeout=5) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    with pytest.raises(OSError):  # the same errors as socket.create_connection: nothing listens there any more
        nodelay.open_tcp("127.0.0.1", server.getsockname()[1], timeout=5)


def test_set_nodelay_refuses_what_is_not_tcp() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert nodelay.set_nodelay(a) is False
    assert nodelay.client_nodelay(object()) is None  # not an SDK client: unknown, never an error


# -- the fallback: a later SDK that changed its private state -----------------------------------------------------


@pytest.fixture
def fresh_seam(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The seam's class and its problem list rebuilt for the SDK the test installs, and rebuilt again after."""
    monkeypatch.setattr(nodelay, "_problems", [])
    nodelay._client_class.cache_clear()
    yield
    nodelay._client_class.cache_clear()


class _SocketMoved:
    """The SDK's socket wrapper as a later SDK might have it: everything there but `_socket`."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "_socket":
            raise AttributeError(name)
        return getattr(self._inner, name)


class SdkWithSocketElsewhere(CopilotClient):
    async def _connect_via_tcp(self) -> None:
        await super()._connect_via_tcp()
        self._process = _SocketMoved(self._process)


class SdkWithRenamedConnect(CopilotClient):
    _connect_via_tcp = None  # type: ignore[assignment]  # renamed in this imagined SDK

    async def _connect_to_server(self) -> None:
        await CopilotClient._connect_via_tcp(self)


async def _works_with_the_sdks_behaviour(client: Any, fleet: CliFleet) -> None:
    """The client connects and serves a session turn; its connection has Nagle on, as the SDK made it."""
    try:
        session = await client.create_session(on_permission_request=PermissionHandler.approve_all, **OPTS,
                                              provider={"type": "openai", "base_url": fleet.model.base_url,
                                                        "api_key": fleet.model.api_key},
                                              model="copilot-fleet-test")
        reply = await session.send_and_wait("echo: still works", timeout=60)
        assert reply is not None and "still works" in str(reply.data.content)
        assert connections_to(fleet.a.address) == [0]
        await session.disconnect()
        await client.delete_session(session.session_id)
    finally:
        await client.force_stop()


@pytest.mark.anyio
@pytest.mark.fleet
async def test_socket_moved_keeps_the_sdk_behaviour_and_says_why(
        cli_fleet: CliFleet, fresh_seam: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("copilot.CopilotClient", SdkWithSocketElsewhere)
    client = nodelay.cli_client(cli_fleet.a.address, cli_fleet.token)
    assert isinstance(client, SdkWithSocketElsewhere)
    with caplog.at_level(logging.WARNING, logger="copilot_fleet.nodelay"):
        await client.start()
    assert nodelay.client_nodelay(client) is None  # cannot be read: unknown, not a false "off"
    problem = nodelay.nodelay_problem()
    assert problem is not None and "_process._socket" in problem
    assert [r.getMessage() for r in caplog.records if "TCP_NODELAY not set" in r.getMessage()], caplog.text
    await _works_with_the_sdks_behaviour(client, cli_fleet)


@pytest.mark.anyio
@pytest.mark.fleet
async def test_connect_method_gone_keeps_the_sdk_behaviour_and_says_why(
        cli_fleet: CliFleet, fresh_seam: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("copilot.CopilotClient", SdkWithRenamedConnect)
    with caplog.at_level(logging.WARNING, logger="copilot_fleet.nodelay"):
        client = nodelay.cli_client(cli_fleet.a.address, cli_fleet.token)
    assert type(client) is SdkWithRenamedConnect  # the SDK's own class: nothing of ours in its way
    problem = nodelay.nodelay_problem()
    assert problem is not None and "_connect_via_tcp" in problem
    assert "TCP_NODELAY not set" in caplog.text
    await client.start()
    assert nodelay.client_nodelay(client) is False
    await _works_with_the_sdks_behaviour(client, cli_fleet)


# -- each kind of connection the project opens ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.fleet
async def test_fleet_client_pool_connections_have_nodelay(cli_fleet: CliFleet) -> None:
    """What every application on the fleet client gets: the pool's clients, on every replica it used."""
    target = target_for(cli_fleet)
    async with ClientPool() as pool:
        async with FleetClient(target, user="nagle", pool=pool) as fleet:
            session = await fleet.create_session("nodelay", **OPTS)
            assert "hi" in (await session.reply("echo: hi") or "")
            await session.close()
            await fleet.delete_session(session.session_id)
        assert len(pool) >= 1
        for address in pool.addresses():
            client = await pool.get(address, cli_fleet.token)
            assert nodelay.client_nodelay(client) is True, address
            assert connections_to(address) == [1], address


@pytest.mark.anyio
@pytest.mark.fleet
async def test_admin_connections_have_nodelay(cli_fleet: CliFleet) -> None:
    """`copilot-fleet sessions` and the operators' FleetAdmin reach every replica through their own pool."""
    async with FleetAdmin(target_for(cli_fleet)) as admin:
        await admin.list_sessions()
        assert sorted(admin.pool.addresses()) == sorted([cli_fleet.a.address, cli_fleet.b.address])
        for address in admin.pool.addresses():
            assert connections_to(address) == [1], address


def test_health_probe_connection_has_nodelay() -> None:
    """The probe (Kubernetes exec probe, HAProxy check, `up`, `status`): read from its socket while it waits for an
    answer from a server that accepted and stays silent."""
    seen: list[list[int]] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"

        def silent_server() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)  # the probe's `connect` request has arrived: its socket is open and waiting
                seen.append(connections_to(address))

        thread = threading.Thread(target=silent_server, daemon=True)
        thread.start()
        result = health.check(address, None, timeout=30)
        thread.join(timeout=30)
    assert not result.ok  # the server closed without an answer
    assert seen == [[1]]


# -- no connection path around the seam ------------------------------------------------------------------------------

# Where an SDK client may be constructed or a raw TCP connection opened other than through copilot_fleet/nodelay.py,
# and why. Anything else fails the test below: a new path must go through the seam.
ALLOWED = {
    ("benchmarks/common.py", "CopilotClient"): "the raw SDK as shipped (Nagle on): the benchmarks' baseline",
    ("benchmarks/common.py", "RuntimeConnection.for_uri"): "the baseline, as above",
    ("tests/client/test_client_nodelay.py", "CopilotClient"): "the SDK as shipped: this test's control",
    ("tests/client/test_client_nodelay.py", "RuntimeConnection.for_uri"): "the control, as above",
}
# Plain TCP connections to servers that are not CLI servers, where the seam has nothing to do, and why.
NOT_A_CLI_SERVER = {
    "tests/runtime/test_runtime_stacks.py": "a public address on 443 and 80 (what the egress policy lets through)",
    "tests/sessionstore/tool_run_probe.py": "Redis, from a tool run under the system's python3 (no project there)",
}
# Every Python file of the repository: each top-level directory except hidden ones (.venv, .tools) and build output.
NOT_SCANNED = {"build", "dist", "node_modules"}


def _python_files() -> Iterator[Path]:
    for top in sorted(ROOT.iterdir()):
        if top.name.startswith(".") or top.name in NOT_SCANNED or top.name.endswith(".egg-info"):
            continue
        if top.is_dir():
            yield from sorted(f for f in top.rglob("*.py")
                              if not any(part.startswith(".") for part in f.relative_to(ROOT).parts))
        elif top.suffix == ".py":
            yield top


def _calls(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id == "CopilotClient"
                or isinstance(func, ast.Attribute) and func.attr == "CopilotClient"):
            yield "CopilotClient"
        elif isinstance(func, ast.Attribute) and func.attr in ("for_uri", "for_tcp"):
            yield f"RuntimeConnection.{func.attr}"
        elif (isinstance(func, ast.Attribute) and func.attr == "create_connection"
              and isinstance(func.value, ast.Name) and func.value.id == "socket"):
            yield "socket.create_connection"


def test_no_connection_to_a_cli_server_bypasses_the_seam() -> None:
    found: dict[tuple[str, str], int] = {}
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "copilot_fleet/nodelay.py":
            continue
        for call in _calls(ast.parse(path.read_text(), rel)):
            found[(rel, call)] = found.get((rel, call), 0) + 1
    # Tests of the test model open TCP connections to the model, not to a CLI server; so do the files listed.
    not_cli = {k for k in found if k[1] == "socket.create_connection"
               and (k[0].startswith("tests/testmodel/") or k[0] in NOT_A_CLI_SERVER)}
    bypass = sorted(set(found) - set(ALLOWED) - not_cli)
    assert not bypass, ("SDK clients or TCP connections made outside copilot_fleet/nodelay.py (use cli_client / "
                        f"open_tcp): {bypass}")
    stale = sorted(set(ALLOWED) - set(found)) + sorted(
        {f for f in NOT_A_CLI_SERVER if (f, "socket.create_connection") not in found})
    assert not stale, f"allowed exceptions that no longer exist (remove them): {stale}"
