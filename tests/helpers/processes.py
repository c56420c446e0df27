"""Real processes for tests: redis-server, Copilot CLI servers sharing one session-state/, the deterministic model.

Every process runs in the foreground (Popen), listens on 127.0.0.1 only, and is stopped by its PID when the
context that started it ends. Used by tests/client/conftest.py (the fixtures) and tests/helpers/ops_fleet.py.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from copilot_fleet import timescale
from copilot_fleet.pod.ports import free_port, port_holder

REDIS_SERVER = "/usr/bin/redis-server"
ROOT = Path(__file__).resolve().parents[2]
CLI_BINARY = ROOT / ".tools/npm/node_modules/@github/copilot-linux-x64/copilot"
CLI_CACHE = ROOT / ".tools/copilot-cache"
TESTMODEL_MAIN = ROOT / "copilot_fleet/testmodel/__main__.py"


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end (a pidfd becomes readable, no polling); True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=timeout)


@dataclass
class RedisServer:
    """A redis-server we own: start, kill (SIGKILL, to simulate a crash), start again on the same port."""

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def url_with_password(self, password: str) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timescale.scaled(10)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        holder = port_holder(self.port)
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not answer PING (exit status "
                            f"{self.proc.poll()}; listening there: {holder or 'nothing'})"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started redis-server (the test is skipped where none is installed), stopped at the end."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the Copilot CLI fleet -------------------------------------------------------------------------------------


def wait_line(proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
    """Wait for `pattern` on the process's stdout (read in a thread so the wait is bounded); a process that does not
    print it in time (or exits first) is stopped, and the error shows the end of what it printed. `timeout` is for
    an idle machine and is scaled to this one's load (a process starts several times slower on a busy machine)."""
    assert proc.stdout is not None
    factor, why = timescale.measure()
    found: list[re.Match[str]] = []
    seen: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            match = pattern.search(line)
            if match:
                found.append(match)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout * factor)
    if not found:
        ended = "" if proc.poll() is None else f" (it exited with status {proc.returncode})"
        stop_process(proc)
        raise RuntimeError(f"{what} did not print {pattern.pattern!r} within {timeout * factor:.0f} s ({timeout:g} s "
                           f"x{factor:g}, {why}){ended}; its output: {''.join(seen)[-2000:]}")
    # Keep draining stdout so the process never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    return found[0]


@dataclass
class CliServer:
    name: str
    port: int
    home: Path
    proc: subprocess.Popen[str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


CLI_READY = re.compile(r"CLI server listening on port (\d+)")


def start_cli(name: str, root: Path, shared_state: Path, token: str, port: int = 0,
              timeout: float = 30.0, extra_env: dict[str, str] | None = None) -> CliServer:
    """One headless CLI with its own COPILOT_HOME whose session-state/ is the shared directory (started again on
    the same home when it exists: a restart)."""
    home = root / name / "home"
    if not home.exists():
        home.mkdir(parents=True)
        (home / "session-state").symlink_to(shared_state, target_is_directory=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / name),
        "COPILOT_HOME": str(home),
        "COPILOT_CACHE_HOME": str(CLI_CACHE),
        "COPILOT_CONNECTION_TOKEN": token,
        "COPILOT_AUTO_UPDATE": "false",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [str(CLI_BINARY), "--headless", "--no-auto-update", "--no-auto-login", "--log-level", "info",
         "--port", str(port)],
        cwd=root / name,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    match = wait_line(proc, CLI_READY, timeout, f"CLI {name}")
    return CliServer(name=name, port=int(match.group(1)), home=home, proc=proc)


@dataclass
class ModelServer:
    address: str
    proc: subprocess.Popen[str]
    api_key: str

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"


@dataclass
class CliFleet:
    """Two CLI replicas sharing one session-state directory, a redis-server and the test model."""

    a: CliServer
    b: CliServer
    redis: RedisServer
    model: ModelServer
    token: str
    shared_state: Path


@contextmanager
def running_cli_fleet(root: Path) -> Iterator[CliFleet]:
    """Two CLI servers on one shared session-state/ under `root`, the test model and redis-server; all stopped
    (and `root` removed) at the end."""
    if not CLI_BINARY.exists():
        pytest.skip(f"Copilot CLI binary missing at {CLI_BINARY}")
    if not TESTMODEL_MAIN.exists():
        pytest.skip("copilot_fleet.testmodel is not there yet")
    shared = root / "shared-session-state"
    shared.mkdir()
    token = secrets.token_hex(16)
    started: list[subprocess.Popen[str]] = []
    redis_srv = RedisServer()
    try:
        api_key = secrets.token_hex(16)
        model_proc = subprocess.Popen(
            [sys.executable, "-m", "copilot_fleet.testmodel", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env={**os.environ, "TESTMODEL_API_KEY": api_key},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(model_proc)
        match = wait_line(
            model_proc, re.compile(r"test model listening on (127\.0\.0\.1:\d+)"), 20, "test model"
        )
        model = ModelServer(address=match.group(1), proc=model_proc, api_key=api_key)
        a = start_cli("a", root, shared, token)
        started.append(a.proc)
        b = start_cli("b", root, shared, token)
        started.append(b.proc)
        redis_srv.start()
        yield CliFleet(a=a, b=b, redis=redis_srv, model=model, token=token, shared_state=shared)
    finally:
        redis_srv.stop()
        for proc in reversed(started):
            stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class SpareCli:
    """A third CLI on the fleet's shared session-state, on a fixed port, that a test may kill and start again."""

    fleet: CliFleet
    port: int = field(default_factory=free_port)
    server: CliServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CliServer:
        root = self.fleet.shared_state.parent
        self.server = start_cli("spare", root, self.fleet.shared_state, self.fleet.token, port=self.port)
        return self.server

    def kill(self) -> None:
        """SIGKILL, as a crash: no chance to close its connections in order."""
        if self.server is not None and self.server.proc.poll() is None:
            self.server.proc.kill()
            self.server.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.server is not None:
            stop_process(self.server.proc)


@contextmanager
def running_spare(cli_fleet: CliFleet) -> Iterator[SpareCli]:
    spare = SpareCli(cli_fleet)
    spare.start()
    try:
        yield spare
    finally:
        spare.stop()
