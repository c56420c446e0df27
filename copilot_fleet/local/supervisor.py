"""supervisord for one stack: started in the foreground in its own session, found again by PID, stopped by PID.

The PID and start time go to `supervisord.json` the moment it starts, so `down` finds it even if it never got
as far as writing its own pid file. Every process of the fleet runs in supervisord's session, which makes
"is anything of this fleet still running" one scan of /proc, even after supervisord itself was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths, write_private
from copilot_fleet.local.tools import Tools
from copilot_fleet.pod import procfs

STOP_TIMEOUT = 30.0  # supervisord stops each program within its stopwaitsecs (10 s), in priority order
# Longer than a program's stopwaitsecs (10 s): stopProcess(wait=True) answers only once the program is gone.
RPC_TIMEOUT = 30.0
# The only variables the fleet inherits from the shell that ran `up`: whatever else it holds (credentials, a
# provider, telemetry settings, cloud keys) would reach every program, and through the CLI every session's tool
# runs. The fleet gets what its stack says, and each program what plan.py gives it.
_KEPT_ENV = frozenset({"PATH", "LANG", "LANGUAGE", "TZ"})
_KEPT_ENV_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class SupervisorRecord:
    pid: int
    start_time: int
    conf: str

    def alive(self) -> bool:
        return procfs.start_time(self.pid) == self.start_time and procfs.is_alive(self.pid)


def orphans(record: SupervisorRecord) -> list[int]:
    """Processes a dead supervisord left running: the live members of its session (programs keep serving
    without supervision when supervisord is killed). Empty while supervisord runs, and when its PID now belongs to
    another process: Linux reuses a PID only once no session carries it, so nothing of the fleet is left then."""
    if record.alive() or procfs.start_time(record.pid) not in (None, record.start_time):
        return []
    return procfs.session_members(record.pid)


def read_record(paths: StatePaths) -> SupervisorRecord | None:
    try:
        return SupervisorRecord(**json.loads(paths.supervisor_record.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def supervisor_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in _KEPT_ENV or k.startswith(_KEPT_ENV_PREFIXES)}


def start(paths: StatePaths, tools: Tools, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start supervisord (foreground, own session) and record it; it starts every program by itself."""
    out_path = paths.logs_dir / "supervisord.out"
    with os.fdopen(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - a fixed command line of our own
            tools.supervisord_command(paths.supervisord_conf), cwd=paths.root, env=supervisor_env(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            umask=0o077)  # supervisord applies its own umask= only when it daemonizes
    started = None
    for _ in range(100):  # /proc/<pid>/stat appears with the fork; bounded anyway
        started = procfs.start_time(proc.pid)
        if started is not None:
            break
        time.sleep(0.01)
    record = SupervisorRecord(pid=proc.pid, start_time=started or 0, conf=str(paths.supervisord_conf))
    write_private(paths.supervisor_record, json.dumps(asdict(record)) + "\n")
    return proc


class _UnixConnection(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a timeout (supervisor's own transport has none)."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__()
        self._socket_path = socket_path
        self._timeout = timeout

    def make_connection(self, host: Any) -> Any:
        import http.client
        import socket

        path, timeout = str(self._socket_path), self._timeout

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        return Conn("localhost", timeout=timeout)


class Supervisor:
    """The XML-RPC interface of one fleet's supervisord."""

    def __init__(self, paths: StatePaths, timeout: float = RPC_TIMEOUT) -> None:
        self.paths = paths
        # Any: XML-RPC answers are untyped; the shapes used here are supervisord's documented ones.
        self._proxy: Any = xmlrpc.client.ServerProxy("http://localhost/RPC2",
                                                     transport=_UnixConnection(paths.supervisor_socket, timeout))

    def state(self) -> str:
        return str(self._proxy.supervisor.getState()["statename"])

    def processes(self) -> dict[str, dict[str, Any]]:
        """name -> getProcessInfo (statename, pid, start, now, spawnerr, exitstatus, ...)."""
        return {p["name"]: p for p in self._proxy.supervisor.getAllProcessInfo()}

    def start_process(self, name: str) -> None:
        self._proxy.supervisor.startProcess(name, False)

    def stop_process(self, name: str) -> None:
        self._proxy.supervisor.stopProcess(name, True)

    def restart_process(self, name: str) -> None:
        """Stop (waiting for it to exit) and start again; returns once supervisord has spawned it."""
        self.stop_process(name)
        self.start_process(name)

    def wait_running(self, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        """Until supervisord answers on its socket; a supervisord that exits first is an error with its output."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LocalFleetError(f"supervisord exited at once (status {proc.returncode}):\n"
                                      + tail(self.paths.logs_dir / "supervisord.out"))
            try:
                if self.state() == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Error) as exc:
                last = exc
            time.sleep(0.05)
        raise LocalFleetError(f"supervisord did not answer on {self.paths.supervisor_socket} within {timeout:.0f} s "
                              f"({last})")


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"    ({path} does not exist)"
    kept = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else f"    ({path} is empty)"


def _reap(pid: int) -> None:
    """Collect the exit status if supervisord is our own child (it was started by this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            _reap(pid)
        alive = [p for p in pids if procfs.is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop(record: SupervisorRecord, timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop the fleet by PID: SIGTERM to supervisord (it stops its programs, each within stopwaitsecs), then
    SIGKILL for anything of its session still there after `timeout`. Returns PIDs that survived even that."""
    _reap(record.pid)
    started = procfs.start_time(record.pid)
    if started is not None and started != record.start_time:
        # The PID now belongs to another process. Linux reuses a PID only once no session carries it, so
        # nothing of this fleet is left.
        return []
    members = procfs.session_members(record.pid)
    if record.alive():
        os.kill(record.pid, signal.SIGTERM)
        if _wait_gone([record.pid], timeout):
            os.kill(record.pid, signal.SIGKILL)
            _wait_gone([record.pid], 5.0)
    # Programs supervisord could not stop, or orphans of a supervisord that was killed.
    leftovers = sorted(set(members) | set(procfs.session_members(record.pid)))
    leftovers = [p for p in leftovers if procfs.is_alive(p)]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return _wait_gone(leftovers, 5.0)
