"""Post-deploy smoke tests: options, the target, and the shared machinery every check uses.

Run: `pytest smoke_tests --target FILE [--fleet-state DIR]` (or `copilot-fleet verify --stack NAME`, which writes
the target file and passes both). The target JSON is the only thing the checks know about the deployment; the
optional state directory of a local fleet adds host checks (files, modes, processes) on this machine.

Checks are plain (synchronous) tests that drive coroutines on one event loop for the whole run (`aio.run`), so
one SDK client per CLI server is opened once (`pool`) and stopped once at the end: every `CopilotClient.stop()`
costs about a second. Every wait is bounded by `--smoke-timeout` (by default 30 s times the machine's time scale,
copilot_fleet/timescale.py: longer on a busy machine).

Helpers live here (not in an importable module) so that the suite works under any pytest import mode and when
copied into someone else's CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from copilot_fleet import timescale
from copilot_fleet.target import Target, TargetError, load_target
from copilot_fleet.verify import DEFAULT_SMOKE_TIMEOUT_SECONDS

T = TypeVar("T")

TARGET_KEY = pytest.StashKey[Target]()
TIMEOUT_KEY = pytest.StashKey[float]()

# Users for fleets whose servers are shared (per-user fleets bring their own). The second contains '-', the case
# that breaks an ownership check that splits the id on '-'.
SHARED_FLEET_USERS = ("verify-alice", "verify-bob-smith")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("copilot-fleet", "copilot-fleet post-deploy smoke tests")
    group.addoption("--target", metavar="FILE", default=None,
                    help="the target JSON of the deployment (copilot-fleet target --stack NAME --show-secrets, or "
                         "pulumi stack output --json --show-secrets)")
    group.addoption("--fleet-state", metavar="DIR", default=None,
                    help="a local fleet's state directory (<project>/.fleet/<stack>): enables host checks on "
                         "this machine (process list, ports, file modes, logs)")
    group.addoption("--smoke-timeout", metavar="SECONDS", type=float, default=None,
                    help=f"upper bound for any single wait: a model turn, a connect, a lease (default "
                         f"{DEFAULT_SMOKE_TIMEOUT_SECONDS:g} s times the machine's time scale: the load average per "
                         f"core, or {timescale.ENV_VAR})")
    group.addoption("--kube-context", metavar="NAME", default=None,
                    help="kubectl context for the in-pod checks (default: the current context)")
    group.addoption("--kube-namespace", metavar="NS", default=None,
                    help="namespace of the CLI pods (default: the target's namespace, else the one in its cluster "
                         "DNS names, else copilot-fleet)")
    group.addoption("--kube-selector", metavar="LABELS", default=None,
                    help="label selector of the CLI pods (default app.kubernetes.io/name=copilot-cli,"
                         "app.kubernetes.io/instance=<the target's stack>)")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--target")
    if path is None:
        raise pytest.UsageError(
            "the smoke tests need --target FILE: the deployment's target JSON (for a local stack: "
            "copilot-fleet target --stack NAME --show-secrets > target.json; for Pulumi: "
            "pulumi stack output --json --show-secrets > target.json)"
        )
    try:
        config.stash[TARGET_KEY] = load_target(path)
    except TargetError as exc:
        raise pytest.UsageError(f"--target: {exc}") from exc
    state = config.getoption("--fleet-state")
    if state is not None and not Path(state).is_dir():
        raise pytest.UsageError(f"--fleet-state: {state} is not a directory (expected <project>/.fleet/<stack>)")
    config.addinivalue_line("markers", "applies(isolation=(...), platform=(...)): where a check applies")
    given = config.getoption("--smoke-timeout")
    if given is not None and not given > 0:
        raise pytest.UsageError("--smoke-timeout must be a positive number of seconds")
    try:
        config.stash[TIMEOUT_KEY] = given if given is not None else timescale.scaled(DEFAULT_SMOKE_TIMEOUT_SECONDS)
    except timescale.TimeScaleError as exc:
        raise pytest.UsageError(str(exc)) from exc


@dataclass(frozen=True)
class Server:
    """One CLI server address of the target and the token that should open it."""

    role: str  # "endpoint", "replica", or the user id of a per-user server
    address: str
    token: str | None

    @property
    def id(self) -> str:
        return f"{self.role} {self.address}"


def target_servers(target: Target) -> list[Server]:
    """Every CLI server address the target lists: the load-balanced entry, each replica, each user's server."""
    out: list[Server] = []
    if target.endpoint is not None:
        out.append(Server("endpoint", target.endpoint, target.token_for(None)))
    out += [Server("replica", a, target.token_for(None)) for a in target.replicas]
    out += [Server(user, a, target.token_for(user)) for user, a in target.users.items()]
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One check per server, so the report names the server that misbehaves.
    if "server" in metafunc.fixturenames:
        servers = target_servers(metafunc.config.stash[TARGET_KEY])
        metafunc.parametrize("server", servers, ids=[s.id for s in servers])


# The report reads top-down like the life of a deployment: sessions work, users are kept apart, the servers
# demand their tokens, then the host (or pods) underneath.
MODULE_ORDER = ("test_sessions", "test_session_store", "test_isolation", "test_shared_session", "test_tool_policy",
                "test_connection_tokens", "test_host_local", "test_host_kubernetes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: definition order within a module


# --- the target and options ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def target(pytestconfig: pytest.Config) -> Target:
    return pytestconfig.stash[TARGET_KEY]


@pytest.fixture(scope="session")
def target_file(pytestconfig: pytest.Config) -> Path:
    """The target file's path for child processes; `/dev/fd/N` (what `copilot-fleet verify` passes: a memory file
    with no name) stays as it is, and a child needs `pass_fds=target_fds`."""
    given = Path(pytestconfig.getoption("--target"))
    return given if _descriptor(given) else given.resolve()


@pytest.fixture(scope="session")
def target_fds(target_file: Path) -> tuple[int, ...]:
    """The descriptors a child process must inherit to read `target_file`: `(N,)` for `/dev/fd/N`, else none."""
    return _descriptor(target_file)


def _descriptor(path: Path) -> tuple[int, ...]:
    return (int(path.name),) if path.parent == Path("/dev/fd") and path.name.isdigit() else ()


@pytest.fixture(scope="session")
def timeout(pytestconfig: pytest.Config) -> float:
    """The bound for any single wait (--smoke-timeout, or its default scaled to this machine's load)."""
    return pytestconfig.stash[TIMEOUT_KEY]


@pytest.fixture(scope="session")
def fleet_state(pytestconfig: pytest.Config) -> Path | None:
    """The local fleet's state directory, when given (verify passes it for local stacks)."""
    value = pytestconfig.getoption("--fleet-state")
    return Path(value).resolve() if value else None


@pytest.fixture(scope="session")
def user(target: Target) -> str:
    """The user to act as: the first of a per-user fleet's own users, a made-up one elsewhere."""
    if target.isolation == "per-user":
        if not target.users:
            pytest.fail(f"per-user fleet {target.stack!r} lists no users (target.users is empty)")
        return next(iter(target.users))
    return SHARED_FLEET_USERS[0]


@pytest.fixture(scope="session")
def users(target: Target) -> tuple[str, str]:
    """Two distinct users to act as: the target's own users in a per-user fleet, made-up ones elsewhere."""
    if target.isolation == "per-user":
        listed = list(target.users)
        if len(listed) < 2:
            pytest.skip(f"per-user fleet {target.stack!r} has {len(listed)} user(s); these checks need two")
        return listed[0], listed[1]
    return SHARED_FLEET_USERS


def _unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """`unique("w")`: a name no earlier run used (runs repeat cleanly against a long-lived fleet); as a word for
    `remember:`, an answer that contains it can only come from this run's turns."""
    return _unique


# --- the event loop and SDK clients -------------------------------------------------------------------------------

class Aio:
    """One event loop for the whole run; `run` drives a coroutine to completion within a deadline."""

    def __init__(self, default_timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.default_timeout = default_timeout

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        task = self.loop.create_task(asyncio.wait_for(coro, timeout or self.default_timeout))
        # SIGINT (verify's deadline) cancels the task, as asyncio.run does: a KeyboardInterrupt raised at an
        # arbitrary bytecode could land between a create's answer and the check recording the session for cleanup,
        # or inside the create request's own task; a cancellation lands only at an await, where the fleet client
        # undoes a create in flight and releases its lease.
        interrupted = False

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        try:
            self.loop.add_signal_handler(signal.SIGINT, interrupt)
            watching = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            watching = False
        try:
            result = self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        except BaseException:
            # Interrupted otherwise: stop the coroutine now, or it would carry on inside the cleanup that runs
            # next on this loop.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self.loop.run_until_complete(task)
            raise
        finally:
            if watching:
                self.loop.remove_signal_handler(signal.SIGINT)
        if interrupted:  # the coroutine finished anyway: the run is still being stopped
            raise KeyboardInterrupt
        return result

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="session")
def aio(timeout: float) -> Iterator[Aio]:
    runner = Aio(default_timeout=timeout)
    yield runner
    runner.close()


class ForceStoppedClients:
    """The SDK client factory of the run's pools. It keeps what it made so that teardown can `force_stop()` them:
    a graceful `stop()` joins a thread for about a second per client, and by then every session of the check is
    detached and deleted anyway."""

    def __init__(self) -> None:
        self.made: list[Any] = []

    def __call__(self, address: str, token: str | None) -> Any:
        from copilot_fleet.nodelay import cli_client

        client = cli_client(address, token)
        self.made.append(client)
        return client

    async def close(self, pool: Any) -> None:
        for client in self.made:
            with contextlib.suppress(Exception):
                await client.force_stop()
        await pool.aclose()  # nothing left to stop gracefully: returns at once


def make_pool(timeout: float) -> tuple[Any, ForceStoppedClients]:
    from copilot_fleet.client import ClientPool

    factory = ForceStoppedClients()
    return ClientPool(connect_timeout=min(timeout, 10.0), client_factory=factory), factory


@pytest.fixture(scope="session")
def pool(aio: Aio, timeout: float) -> Iterator[Any]:
    """One SDK client per (server, token) for the whole run, shared by every FleetClient of the checks."""
    shared, clients = make_pool(timeout)
    yield shared
    aio.run(clients.close(shared), timeout=60)


class Fleet:
    """Makes FleetClients (closed when the check ends) and remembers sessions to delete whatever happens."""

    def __init__(self, target: Target, aio: Aio, pool: Any, timeout: float) -> None:
        self.target = target
        self.aio = aio
        self.pool = pool
        self.timeout = timeout
        self.clients: list[Any] = []
        self.pools: list[tuple[Any, ForceStoppedClients | None]] = []
        self.to_delete: list[tuple[Any, str]] = []

    def client(self, user: str, *, target: Target | None = None, pool: Any = None, **kwargs: Any) -> Any:
        """A FleetClient for `user` (on `target`, default the fleet's), sharing the run's SDK clients."""
        from copilot_fleet.client import FleetClient

        kwargs.setdefault("call_timeout", self.timeout)
        made = FleetClient(target or self.target, user=user, pool=pool or self.pool, **kwargs)
        self.clients.append(made)
        return made

    def fresh_pool(self) -> Any:
        """A pool of its own (new connections), stopped when the check ends."""
        made, clients = make_pool(self.timeout)
        self.pools.append((made, clients))
        return made

    def on_replica(self, user: str, address: str, **kwargs: Any) -> Any:
        """A FleetClient that can only reach `address` (to prove where a session is created or resumed)."""
        pinned = self.target.model_copy(update={"replicas": [address], "endpoint": None})
        return self.client(user, target=pinned, **kwargs)

    def delete_later(self, client: Any, session_id: str) -> None:
        self.to_delete.append((client, session_id))

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        return self.aio.run(coro, timeout)

    def forget(self, session_id: str) -> None:
        """The check has shown this session is gone; nothing to delete."""
        self.to_delete = [(c, s) for c, s in self.to_delete if s != session_id]

    async def _delete(self, client: Any, session_id: str) -> None:
        from copilot_fleet.client import is_fleet_session_id

        if is_fleet_session_id(session_id):
            await client.delete_session(session_id, wait=self.timeout)
            return
        # Ephemeral sessions carry the CLI's own ids, which the fleet client (rightly) will not authorize.
        route = client.router.route(client.user)
        sdk = await client.pool.get(route.primary, route.token)
        await sdk.delete_session(session_id)

    async def _cleanup(self) -> list[str]:
        from copilot_fleet.client import SessionNotFound
        from copilot_fleet.client.handle import translate_sdk_error

        problems = []
        for client in self.clients:
            for handle in client.open_sessions:
                await handle.close()
        for client, session_id in reversed(self.to_delete):
            try:
                await self._delete(client, session_id)
            except SessionNotFound:
                pass  # the check deleted it itself
            except Exception as exc:
                if not isinstance(translate_sdk_error(exc, session_id), SessionNotFound):
                    problems.append(f"{session_id}: {type(exc).__name__}: {exc}")
        for client in self.clients:
            await client.aclose()
        for made, clients in self.pools:
            await (clients.close(made) if clients is not None else made.aclose())
        return problems


@pytest.fixture
def fleet(target: Target, aio: Aio, pool: Any, timeout: float) -> Iterator[Fleet]:
    made = Fleet(target, aio, pool, timeout)
    yield made
    problems = aio.run(made._cleanup(), timeout=timeout * 2)
    if problems:
        pytest.fail("cleanup could not delete sessions this check created: " + "; ".join(problems))


# --- where a check applies ----------------------------------------------------------------------------------------

def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.applies(isolation=(...), platform=(...))`: skip, naming the pattern, where a check does not."""
    target = item.config.stash[TARGET_KEY]
    for mark in item.iter_markers("applies"):
        isolation = mark.kwargs.get("isolation")
        if isolation and target.isolation not in isolation:
            pytest.skip(f"applies to {' and '.join(isolation)} only; this target is {target.isolation}")
        platform = mark.kwargs.get("platform")
        if platform and target.platform not in platform:
            pytest.skip(f"applies to the {' and '.join(platform)} platform only; this target is {target.platform}")


# --- raw SDK access (checks about the servers themselves, with no fleet client in between) -------------------------

AUTH_FAILED = -32002  # JSON-RPC error code of a missing or wrong connection token


class RawSdk:
    """Bare `CopilotClient`s connected straight to one server with a given token; all force-stopped at the end."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.clients: list[Any] = []

    async def connect(self, address: str, token: str | None) -> Any:
        """A started client, or the exception the server answered the handshake with."""
        from copilot_fleet.nodelay import cli_client

        client = cli_client(address, token)
        self.clients.append(client)
        await asyncio.wait_for(client.start(), min(self.timeout, 10.0))
        return client

    async def refusal(self, address: str, token: str | None) -> BaseException | None:
        """None if the server accepted `token` and answered a ping; else what refused it."""
        try:
            client = await self.connect(address, token)
            await asyncio.wait_for(client.ping(), min(self.timeout, 10.0))
        except Exception as exc:
            return exc
        return None

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.force_stop()  # force_stop: no 1 s thread join per client


@pytest.fixture
def raw_sdk(aio: Aio, timeout: float) -> Iterator[RawSdk]:
    made = RawSdk(timeout)
    yield made
    aio.run(made.close(), timeout=30)


def is_auth_failure(exc: BaseException | None) -> bool:
    return exc is not None and getattr(exc, "code", None) == AUTH_FAILED


def why_refused(address: str, exc: BaseException) -> str:
    """What turned a client away, in words that tell a refused token from a server that cannot be reached."""
    if is_auth_failure(exc):
        return f"the server at {address} refused the token (AUTHENTICATION_FAILED, -32002)"
    text = str(exc)
    if isinstance(exc, OSError) or "failed to connect to cli server" in text.lower():
        hint = ""
        if "name or service not known" in text.lower() or "name resolution" in text.lower():
            hint = (" (a cluster DNS name seen from outside the cluster? `copilot-fleet verify --stack NAME` "
                    "reaches Kubernetes fleets through port-forwards)")
        return f"no connection to {address}: {text}{hint}; the token was never checked"
    return f"{type(exc).__name__}: {text}"


@pytest.fixture(scope="session")
def refusal_text() -> Callable[[str, BaseException], str]:
    """`refusal_text(address, exc)`: a refused token and an unreachable server, told apart."""
    return why_refused


@pytest.fixture(scope="session")
def auth_failure() -> Callable[[BaseException | None], bool]:
    """`auth_failure(exc)`: True for the server's AUTHENTICATION_FAILED (-32002) answer and nothing else."""
    return is_auth_failure
