"""Real processes for the store-mode fault scenarios, with the volume mode beside them for contrast.

The local fleet does not run store mode yet, so the store scenarios start their own processes, the same ones the
session store's tests and benchmark use (tests/helpers/store_processes.py): one redis-server (AOF on,
`appendfsync everysec`, `maxmemory-policy noeviction`), the test model, `providers` provider processes
(`python -m copilot_fleet.sessionstore`, each starting its own real CLI), and as many bare CLIs whose
session-state/ is one shared directory (the volume mode). Every server keeps its port across restarts, so a server
that was killed comes back under the same address and server id. Everything listens on 127.0.0.1; every process
is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from redis import Redis

from copilot_fleet.errors import FleetError
from copilot_fleet.testmodel import serve
from tests.helpers.processes import start_cli, wait_exit
from tests.helpers.store_processes import (
    CLI_BINARY,
    REDIS_SERVER,
    STOP_BOUND,
    ProviderProcess,
    RedisServer,
    free_port,
    start_provider,
    stop_process,
)

Mode = Literal["store", "volume"]
START_BOUND = 90.0  # how long a broken start may take to fail; a start returns on its ready line
REDIS_SETTINGS = ("--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")


class StoreFleetError(FleetError, RuntimeError):
    """A process of the store fault fleet could not be started or stopped."""


def why_not_runnable() -> str | None:
    """None if the store scenarios can run here, else why not."""
    if not CLI_BINARY.exists():
        return f"the Copilot CLI is missing at {CLI_BINARY} (bash scripts/setup.sh)"
    if not Path(REDIS_SERVER).exists():
        return f"{REDIS_SERVER} is not installed (apt-get install redis-server)"
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Server:
    """One CLI server of either mode: its name (the store's server id), its fixed port and what runs it."""

    name: str
    mode: Mode
    port: int
    provider: ProviderProcess | None = None  # store mode
    cli: subprocess.Popen[str] | None = None  # volume mode

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cli_pid(self) -> int | None:
        if self.provider is not None:
            return self.provider.cli_pid
        return self.cli.pid if self.cli is not None else None

    @property
    def provider_pid(self) -> int | None:
        return self.provider.proc.pid if self.provider is not None else None

    def running(self) -> bool:
        if self.mode == "store":
            return (self.provider is not None and self.provider.proc.poll() is None
                    and alive(self.provider.cli_pid))
        return self.cli is not None and self.cli.poll() is None

    def pause(self) -> None:
        """SIGSTOP the server (the provider and its CLI in store mode)."""
        for pid in (self.provider_pid, self.cli_pid):
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT whatever of the server still runs (a paused server, or one a broken run left paused)."""
        if self.provider is not None and self.provider.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the CLI may have ended meanwhile
                os.kill(self.provider.cli_pid, signal.SIGCONT)
            self.provider.proc.send_signal(signal.SIGCONT)
        if self.cli is not None and self.cli.poll() is None:
            self.cli.send_signal(signal.SIGCONT)


@dataclass
class StoreFleet:
    """`providers` store-mode servers and `volume_clis` volume-mode servers, one Redis, the test model."""

    root: Path
    providers: int = 3
    volume_clis: int = 3
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    servers: list[Server] = field(default_factory=list)
    model: Any = None
    redis_server: RedisServer | None = None
    started_at: float = 0.0
    up_seconds: float = 0.0

    @property
    def redis(self) -> RedisServer:
        if self.redis_server is None:
            raise StoreFleetError("the store fleet is not started")
        return self.redis_server

    @property
    def shared_state(self) -> Path:
        return self.root / "shared-session-state"

    def start(self) -> None:
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.shared_state.mkdir(exist_ok=True)
        self.redis_server = RedisServer(self.root / "redis", extra=REDIS_SETTINGS)
        try:
            self.redis_server.start()
            self.model = serve("127.0.0.1", 0, api_key=secrets.token_hex(8))
            for i in range(self.providers):
                self.servers.append(Server(f"s{i}", "store", free_port()))
            for i in range(self.volume_clis):
                self.servers.append(Server(f"v{i}", "volume", free_port()))
            for server in self.servers:
                self.start_server(server)
        except BaseException:
            self.stop()
            raise
        self.up_seconds = time.monotonic() - began

    def of(self, mode: Mode) -> list[Server]:
        return [s for s in self.servers if s.mode == mode]

    def start_server(self, server: Server) -> None:
        """Start (or start again) a server on its own port; returns once it is ready (the provider registered)."""
        if server.running():
            return
        try:
            if server.mode == "store":
                server.provider = start_provider(self.root, server.name, self.redis.url, self.token,
                                                 port=server.port)
            else:
                server.cli = start_cli(server.name, self.root, self.shared_state, self.token, port=server.port,
                                       timeout=START_BOUND).proc
        except RuntimeError as exc:
            raise StoreFleetError(f"{server.mode} server {server.name} did not start again: {exc}") from exc

    def kill(self, server: Server, what: Literal["cli", "provider"] = "cli") -> int:
        """SIGKILL the server's CLI (either mode) or its provider (store mode); the PID killed."""
        pid = server.provider_pid if what == "provider" else server.cli_pid
        if pid is None:
            raise StoreFleetError(f"{server.name} has no {what} to kill")
        os.kill(pid, signal.SIGKILL)
        return pid

    def reap(self, server: Server, timeout: float = STOP_BOUND) -> None:
        """After a kill: wait until every process of the server has ended (the provider exits when its CLI
        does, the CLI dies with its provider), so that it can be started again on its port."""
        for pid in (server.cli_pid, server.provider_pid):
            if pid is not None and not wait_exit(pid, timeout):
                raise StoreFleetError(f"{server.name}: process {pid} did not end within {timeout:.0f} s")
        for proc in (server.provider.proc if server.provider else None, server.cli):
            if proc is not None:
                proc.wait(timeout=timeout)

    # -- Redis ----------------------------------------------------------------------------------------------------

    def admin(self) -> Redis:
        return self.redis.client()

    def kill_redis(self, sig: int = signal.SIGKILL) -> None:
        proc = self.redis.proc
        if proc is None or proc.poll() is not None:
            raise StoreFleetError("redis-server is not running")
        proc.send_signal(sig)
        proc.wait(timeout=STOP_BOUND)

    def start_redis(self) -> None:
        """Start redis-server again on its port and directory: it loads its AOF."""
        self.redis.start()

    # -- the end --------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process by its PID (SIGTERM, SIGKILL after a bound); a provider takes its CLI with it."""
        for server in reversed(self.servers):
            server.resume()  # a frozen process cannot act on SIGTERM
            if server.provider is not None and server.provider.proc.poll() is None:
                stop_process(server.provider.proc, STOP_BOUND)
            if server.cli is not None and server.cli.poll() is None:
                stop_process(server.cli, STOP_BOUND)
        if self.redis_server is not None and self.redis_server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.redis_server.proc.send_signal(signal.SIGCONT)
            self.redis_server.stop()
        if self.model is not None:
            self.model.stop()
