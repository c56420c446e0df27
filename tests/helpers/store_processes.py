"""Real processes for the session store's tests and its benchmark (benchmarks/session_store.py): redis-server,
provider processes with their Copilot CLI, bare CLIs on a shared directory (the volume mode, for contrast).

Every process listens on 127.0.0.1 only and is stopped by its PID. Starts return on the process' ready line; the
timeouts only bound how long a broken start takes to fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from copilot_fleet.pod.ports import free_port
from tests.helpers.processes import (
    CLI_BINARY,
    CLI_CACHE,
    REDIS_SERVER,
    ROOT,
    start_cli,
    stop_process,
    wait_line,
)

__all__ = ["CLI_BINARY", "CLI_CACHE", "READY", "REDIS_SERVER", "ROOT", "STOP_BOUND", "BareCli", "ProviderProcess",
           "RedisServer", "free_port", "require_cli", "start_bare_cli", "start_provider", "stop_process",
           "wait_line"]

READY = re.compile(r"session store provider ready: server (\S+) on port (\d+) \(cli pid (\d+)\)")
REDIS_READY = re.compile(r"Ready to accept connections")
START_TIMEOUT = 90.0  # a bound for a broken start, not a wait: each start returns on its ready line
# A bound for a broken stop: a provider stops its CLI first and waits for its sessions (--stop-grace).
STOP_BOUND = 150.0


def require_cli() -> None:
    if not CLI_BINARY.exists():
        pytest.skip(f"Copilot CLI binary missing at {CLI_BINARY} (bash scripts/setup.sh)")


@dataclass
class RedisServer:
    """A redis-server we own, with keyspace notifications so tests can wait for expiries and writes."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen[str] | None = None
    extra: tuple[str, ...] = ()
    aclfile: Path | None = None  # users (the default user's password included) come from this file instead

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def url_for(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             *(("--aclfile", str(self.aclfile)) if self.aclfile else ("--requirepass", self.password)),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.root),
             "--notify-keyspace-events", "KEA", "--loglevel", "notice", *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_line(self.proc, REDIS_READY, START_TIMEOUT, f"redis-server on port {self.port}")
        except RuntimeError:
            stop_process(self.proc, STOP_BOUND)
            raise

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, STOP_BOUND)


@dataclass
class ProviderProcess:
    """A provider (python -m copilot_fleet.sessionstore) and the CLI it started."""

    name: str
    root: Path
    proc: subprocess.Popen[str]
    port: int
    cli_pid: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def ready_file(self) -> Path:
        return self.root / "ready.json"

    def ready_info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.ready_file.read_text())
        return info

    def pause(self) -> None:
        for pid in (self.proc.pid, self.cli_pid):
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in (self.cli_pid, self.proc.pid):
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> int:
        return stop_process(self.proc, STOP_BOUND)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_provider(root: Path, name: str, redis_url: str, token: str, *, scope: str = "shared",
                   args: tuple[str, ...] = (), cli: Path = CLI_BINARY, env: dict[str, str] | None = None,
                   port: int = 0) -> ProviderProcess:
    where = root / name
    where.mkdir(parents=True, exist_ok=True)
    log = where / "provider.log"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(where),
        "COPILOT_CACHE_HOME": str(CLI_CACHE),
        "COPILOT_CONNECTION_TOKEN": token,
        "COPILOT_FLEET_STORE_REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "copilot_fleet.sessionstore", "--cli", str(cli), "--home", str(where / "home"),
         "--workdir", str(where), "--server-id", name, "--scope", scope, "--port", str(port),
         "--ready-file", str(where / "ready.json"), "--stop-grace", "120", *args],
        cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )
    try:
        match = wait_line(proc, READY, START_TIMEOUT, f"provider {name}")
    except RuntimeError as exc:
        stop_process(proc, STOP_BOUND)
        raise RuntimeError(f"{exc}\nprovider log: {log.read_text()[-3000:]}") from None
    return ProviderProcess(name, where, proc, int(match.group(2)), int(match.group(3)), log)


@dataclass
class BareCli:
    """A CLI with no provider whose session-state/ is a directory shared with other CLIs (the volume mode)."""

    name: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> int:
        return stop_process(self.proc, STOP_BOUND)


def start_bare_cli(root: Path, name: str, shared_state: Path, token: str) -> BareCli:
    cli = start_cli(name, root, shared_state, token, timeout=START_TIMEOUT)
    return BareCli(cli.name, cli.proc, cli.port)
