"""The provider process: one per CLI server, which it starts as its child and serves for its whole life.

Start-up, in this order (each step must succeed or the process exits non-zero, taking the CLI with it):
1. Redis answers with our credentials; this instance registers its server id (fencing.ServerRegistration).
2. COPILOT_HOME/session-state becomes a dangling symlink into /proc, so the CLI can never keep a session's
   state on its own disk, even in the instant before the provider registers: a create then fails.
3. The CLI starts (cli_process.CliProcess) and prints its port; we connect (TCP_NODELAY), authenticate with the
   connection token and register with `sessionFs.setProvider`.
4. Only then: the ready file is written and the ready line printed. A health probe that requires the ready file
   keeps every app client away until the provider is registered.

Why a session cannot start before registration: the CLI itself refuses `sessionFs.setProvider` while any session
is active ("Cannot set session filesystem provider while sessions are active"), measured with CLI 1.0.102. So if a
client that connected in the milliseconds between the CLI's listen and our registration tried to create a
session, the create fails (step 2); and if a session were active anyway, registration would fail, this process
would exit and the CLI would die with it, so the server never becomes ready. Either the provider serves every
session of the server, or the server does not run.

Life: the process ends when the CLI exits (with its status), when the provider's connection to it closes (the CLI
must not run without its provider), when another instance takes over our server id, or on SIGTERM/SIGINT, which is
forwarded to the CLI; the provider keeps answering while the CLI finishes its turns and flushes its sessions, and
exits after it (SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from copilot_fleet import cli_logs
from copilot_fleet.errors import FleetError

from .cli_process import CliProcess, cli_environment
from .fencing import DEFAULT_REGISTRATION_TTL_SECONDS, ServerIdentity, ServerRegistration
from .jsonrpc import ConnectionClosed, JsonRpcPeer, RpcError
from .keys import DEFAULT_PREFIX, StoreKeys
from .paths import SessionPaths
from .provider import SessionFsProvider
from .redis_store import RedisSessionStore, describe_redis
from .store import Limits

logger = logging.getLogger(__name__)

# The sessionFs request and result shapes here are those of protocol 3 (SDK 1.0.25 with CLI 1.0.102).
SUPPORTED_PROTOCOL_VERSIONS = frozenset({3})
DEFAULT_SESSION_STATE_PATH = "/session-state"
READY_PREFIX = "session store provider ready"
CLOSE_TO_EXIT_SECONDS = 5.0


class ProviderStartError(FleetError, RuntimeError):
    """The provider could not start; the message says which step failed and why."""


@dataclass(frozen=True)
class ProviderConfig:
    cli: Path
    copilot_home: Path
    workdir: Path
    redis_url: str
    scope: str
    server_id: str
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    cli_args: tuple[str, ...] = ("--log-level", "info")
    session_state_path: str = DEFAULT_SESSION_STATE_PATH
    key_prefix: str = DEFAULT_PREFIX
    ready_file: Path | None = None
    registration_ttl: float = DEFAULT_REGISTRATION_TTL_SECONDS
    start_timeout: float = 60.0
    stop_grace: float = 30.0
    redis_timeout: float = 5.0
    require_lease: bool = True
    limits: Limits = field(default_factory=Limits)
    cli_user: int | None = None
    cli_group: int | None = None

    def cli_argv(self) -> list[str]:
        return [
            str(self.cli), "--headless", "--no-auto-update", "--no-auto-login", *self.cli_args,
            "--host", self.host, "--port", str(self.port),
        ]

    @property
    def connect_host(self) -> str:
        """Where the provider reaches the CLI: loopback when the CLI listens on every address."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)


# Where COPILOT_HOME/session-state and session-store.db point: paths under /proc, where nobody (root included)
# can create anything.
NO_LOCAL_STATE = Path("/proc/copilot-fleet-session-state-is-in-the-session-store")
NO_LOCAL_INDEX = Path("/proc/copilot-fleet-no-local-session-index")


def _block(path: Path, target: Path, leftover: str) -> None:
    if path.is_symlink():
        if Path(os.readlink(path)) == target:
            return
        raise ProviderStartError(f"{path} is a symlink to {os.readlink(path)}; in store mode it must not exist")
    if path.is_dir():
        try:
            path.rmdir()
        except OSError:
            raise ProviderStartError(f"{path} {leftover}: move it away and start again") from None
    elif path.exists():
        raise ProviderStartError(f"{path} {leftover}: move it away and start again")
    path.symlink_to(target)


def block_local_session_state(copilot_home: Path) -> None:
    """Keep every session's content off the server's own disk (see module doc, step 2).

    - COPILOT_HOME/session-state becomes a dangling symlink into /proc. Measured with CLI 1.0.102: a session create
      before the provider registered then fails (EEXIST) and writes nothing, `list_sessions` still answers `[]`,
      and resume works once the provider serves the session (a regular file there would make every list fail
      with "Not a directory").
    - COPILOT_HOME/session-store.db, the CLI's full-text index of every session's turns, likewise: the CLI then
      runs without it (measured: sessions, turns and resume unaffected, nothing logged), instead of keeping the
      text of provider-backed sessions on each replica's disk where deleting the session in the store would not
      reach it. (Sessions created with `enable_session_store=False` do not touch it either.)

    Leftovers are refused rather than deleted: they hold sessions someone may still want, and the store does not
    know about them. An empty session-state directory is replaced.
    """
    if not Path("/proc/self").exists():
        raise ProviderStartError("/proc is not mounted: the CLI's local session state cannot be blocked")
    copilot_home.mkdir(parents=True, exist_ok=True)
    _block(copilot_home / "session-state", NO_LOCAL_STATE,
           "holds sessions kept on this server's own disk, which the store does not know about")
    for leftover in ("session-store.db-wal", "session-store.db-shm"):
        if (copilot_home / leftover).exists():
            raise ProviderStartError(f"{copilot_home / leftover} is left from running without the store: move it "
                                     "away (with session-store.db) and start again")
    _block(copilot_home / "session-store.db", NO_LOCAL_INDEX,
           "is the CLI's index of sessions kept without the store (it holds their turns' text)")


def hand_over(copilot_home: Path, uid: int, gid: int | None) -> None:
    """Give COPILOT_HOME and the links this process made in it to the CLI's own user (it writes config and logs
    there). Nothing below it is walked: what is there was written by that user, maybe by a tool run, and a walk as
    root could be led through a link it swapped in meanwhile to hand root's files to that user."""
    group = -1 if gid is None else gid
    os.lchown(copilot_home, uid, group)
    for name in ("session-state", "session-store.db"):
        with contextlib.suppress(FileNotFoundError):
            os.lchown(copilot_home / name, uid, group)


def _write_ready_file(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)


class Provider:
    """One running provider; `await Provider(config).run()` returns the process's exit status."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.identity = ServerIdentity(config.server_id)
        self.keys = StoreKeys(config.scope, config.key_prefix)
        self.redis = aioredis.from_url(
            config.redis_url,
            socket_connect_timeout=config.redis_timeout,
            socket_timeout=config.redis_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self.store = RedisSessionStore(
            self.redis, self.keys, writer=self.identity, limits=config.limits, require_lease=config.require_lease
        )
        self.provider = SessionFsProvider(
            self.store, SessionPaths(config.session_state_path, str(config.copilot_home), str(config.workdir))
        )
        self.registration = ServerRegistration(self.redis, self.keys, self.identity, ttl=config.registration_ttl)
        self.cli: CliProcess | None = None
        self.peer: JsonRpcPeer | None = None
        self._stop_requested = asyncio.Event()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def start(self) -> None:
        config = self.config
        if config.ready_file is not None:
            # One left by an instance that was killed (in a pod: the container before a restart, on the same
            # emptyDir) must not make this one look registered before it is.
            config.ready_file.unlink(missing_ok=True)
        try:
            await self.redis.ping()
        except redis.exceptions.RedisError as exc:
            raise ProviderStartError(
                f"the session store (Redis at {describe_redis(self.redis)}) did not answer: {exc}"
            ) from exc
        try:
            await self.registration.take()
        except redis.exceptions.RedisError as exc:
            raise ProviderStartError(
                f"could not register server {self.identity.server_id} in the store: {exc}"
            ) from exc
        try:
            block_local_session_state(config.copilot_home)
            if config.cli_user is not None:
                hand_over(config.copilot_home, config.cli_user, config.cli_group)
            # The CLI writes a log per start and nothing removes them: a server that restarts often (a crash
            # loop, recycling) would fill its home. Keep room for the start about to happen; never through a link.
            cli_logs.prune(config.copilot_home / "logs", keep=cli_logs.KEEP - 1)
        except OSError as exc:
            raise ProviderStartError(f"could not prepare COPILOT_HOME {config.copilot_home}: {exc}") from exc
        env = cli_environment(os.environ, config.copilot_home, config.token)
        try:
            self.cli = await CliProcess.start(
                config.cli_argv(), env=env, cwd=config.workdir, timeout=config.start_timeout,
                user=config.cli_user, group=config.cli_group,
            )
        except (RuntimeError, OSError) as exc:
            raise ProviderStartError(str(exc)) from exc
        try:
            self.peer = await JsonRpcPeer.connect(config.connect_host, self.cli.port, self.provider.handle)
        except OSError as exc:
            raise ProviderStartError(f"could not connect to the CLI on port {self.cli.port}: {exc}") from exc
        if not self.peer.nodelay:
            logger.warning("TCP_NODELAY could not be set on the connection to the CLI")
        await self._register()
        if config.ready_file is not None:
            _write_ready_file(config.ready_file, self.ready_info())
        print(f"{READY_PREFIX}: server {self.identity.server_id} on port {self.cli.port} (cli pid {self.cli.pid})",
              flush=True)

    async def _register(self) -> None:
        assert self.peer is not None
        params: dict[str, Any] = {}
        if self.config.token is not None:
            params["token"] = self.config.token
        try:
            hello = await self.peer.request("connect", params)
            version = hello.get("protocolVersion") if isinstance(hello, dict) else None
            if version not in SUPPORTED_PROTOCOL_VERSIONS:
                raise ProviderStartError(
                    f"the CLI speaks protocol version {version}; this provider knows "
                    f"{sorted(SUPPORTED_PROTOCOL_VERSIONS)} (CLI 1.0.102 with SDK 1.0.25)"
                )
            await self.peer.request(
                "sessionFs.setProvider",
                {
                    "initialCwd": str(self.config.workdir),
                    "sessionStatePath": self.config.session_state_path,
                    "conventions": "posix",
                    "capabilities": SessionFsProvider.capabilities(),
                },
            )
        except (RpcError, ConnectionClosed) as exc:
            raise ProviderStartError(f"registering as the CLI's session filesystem provider failed: {exc}") from exc

    def ready_info(self) -> dict[str, Any]:
        assert self.cli is not None
        return {
            "server_id": self.identity.server_id,
            "instance": self.identity.instance,
            "scope": self.config.scope,
            "pid": os.getpid(),
            "cli_pid": self.cli.pid,
            "port": self.cli.port,
            "tcp_nodelay": bool(self.peer and self.peer.nodelay),
            "registered_at": time.time(),
        }

    async def serve(self) -> int:
        """Wait for the first of: CLI exit, connection end, registration lost, stop request. Return exit status."""
        assert self.cli is not None and self.peer is not None
        cli_exit = asyncio.ensure_future(self.cli.wait())
        closed = asyncio.ensure_future(self.peer.closed.wait())
        lost = asyncio.ensure_future(self.registration.lost.wait())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({cli_exit, closed, lost, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done() and not cli_exit.done():
                logger.info("stopping: the CLI finishes its turns first (grace %g s)", self.config.stop_grace)
                code = await self.cli.stop(self.config.stop_grace)
                # Ended by the SIGTERM we passed on: a clean stop. Any other signal: 128 + its number, as a shell says.
                return 0 if code == -signal.SIGTERM else (128 - code if code < 0 else code)
            if closed.done() and not cli_exit.done():
                # A CLI that dies closes our connection first; its exit status follows at once.
                await asyncio.wait({cli_exit}, timeout=CLOSE_TO_EXIT_SECONDS)
            if cli_exit.done():
                code = cli_exit.result()
                logger.error("the CLI exited with status %s; the provider exits with it", code)
                return code if code > 0 else 1  # it was not asked to stop: even a clean exit is a failure
            why = (f"the CLI closed the provider's connection ({self.peer.close_reason})" if closed.done()
                   else self.registration.lost_reason)
            logger.error("stopping the CLI: %s", why)
            await self.cli.stop(self.config.stop_grace)
            return 1
        finally:
            for task in (cli_exit, closed, lost, stop):
                task.cancel()

    def summary(self) -> str:
        c = self.provider.counters
        forms = c.path_forms
        return (
            f"served {c.requests} sessionFs requests (paths under {self.config.session_state_path}: "
            f"{forms['registered']}, under COPILOT_HOME/session-state: {forms['home']}, the working directory: "
            f"{forms['cwd']}); failed {c.failed}, of which fenced {c.fenced}; refused paths {c.refused_paths}"
        )

    async def close(self) -> None:
        logger.info("%s", self.summary())
        if self.config.ready_file is not None:
            self.config.ready_file.unlink(missing_ok=True)
        if self.cli is not None and self.cli.proc.returncode is None:
            await self.cli.stop(self.config.stop_grace)
        if self.peer is not None:
            await self.peer.aclose()
        await self.registration.release()
        await self.redis.aclose()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            try:
                await self.start()
            except ProviderStartError as exc:
                logger.error("%s", exc)
                print(f"copilot-fleet session store provider: {exc}", flush=True)
                return 1
            return await self.serve()
        finally:
            await self.close()
