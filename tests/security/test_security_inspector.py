"""Node's inspector in the CLI: SIGUSR1 opens a debugger on 127.0.0.1:9229 that runs any JavaScript in the process
(the control below, in a network namespace of its own so the debugger is reachable from nowhere else), and the
guard that keeps it closed by holding that port (copilot_fleet/pod/inspector_guard.py; a root fleet's tool run
tries it for real in test_security_shared_cli.py)."""

from __future__ import annotations

import errno
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from copilot_fleet import timescale
from copilot_fleet.nodelay import open_tcp
from copilot_fleet.pod.inspector_guard import hold
from copilot_fleet.pod.ports import free_port, loopback_listener_uids
from tests.helpers.processes import CLI_BINARY, CLI_CACHE, ROOT, stop_process

GUARD_HOLDS = re.compile(r"inspector guard: holding 127\.0\.0\.1:(\d+)")
GUARD_WAITS = re.compile(r"inspector guard: cannot hold .*")

# In a fresh network namespace (only its loopback): start the CLI, send it SIGUSR1, ask the inspector for its
# targets. NODE_OPTIONS=--disable-sigusr1 is set to show that this binary does not honour it.
CONTROL = """
ip link set lo up
NODE_OPTIONS=--disable-sigusr1 "$CLI" --headless --no-auto-update --no-auto-login --port 4999 > "$OUT/cli.txt" 2>&1 &
cli=$!
for i in $(seq 1 300); do grep -q "listening on port" "$OUT/cli.txt" && break; sleep 0.1; done
kill -USR1 $cli
for i in $(seq 1 100); do grep -q "Debugger listening" "$OUT/cli.txt" && break; sleep 0.1; done
python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9229/json/list', timeout=10).read().decode())"
kill -9 $cli
"""


@pytest.mark.fleet
def test_listed_exposure_sigusr1_opens_an_unauthenticated_debugger_in_the_cli(tmp_path: Path) -> None:
    if not CLI_BINARY.exists() or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs the CLI binary, unshare and ip")
    if os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "COPILOT_HOME": str(home), "OUT": str(tmp_path),
           "COPILOT_CACHE_HOME": str(CLI_CACHE), "COPILOT_CONNECTION_TOKEN": "t" * 32, "COPILOT_AUTO_UPDATE": "false",
           "CLI": str(CLI_BINARY)}
    proc = subprocess.run(["unshare", "--net", "--", "bash", "-c", CONTROL], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "webSocketDebuggerUrl" in proc.stdout, (proc.stdout, proc.stderr, (tmp_path / "cli.txt").read_text())
    assert "Debugger listening on ws://127.0.0.1:9229/" in (tmp_path / "cli.txt").read_text()


@contextmanager
def guard(port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "copilot_fleet.pod.inspector_guard", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop_process(proc)


def output_until(proc: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float = 30) -> str:
    """What the guard printed, up to the first line matching `pattern` (a bounded wait; later calls go on)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timescale.scaled(timeout)
    text = ""
    while not pattern.search(text):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"the guard did not print {pattern.pattern!r}; it printed {text!r}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the guard exited ({proc.wait()}); it printed {text!r}")
        text += chunk.decode()
    return text


def test_guards_share_the_port_and_nothing_else_can_bind_it() -> None:
    port = free_port()
    with guard(port) as first, guard(port) as second:
        for proc in (first, second):
            assert f"holding 127.0.0.1:{port}" in output_until(proc, GUARD_HOLDS)
        assert loopback_listener_uids(port) == {os.geteuid()}
        with socket.socket() as other, pytest.raises(OSError) as taken:  # how the CLI's inspector binds
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        with open_tcp("127.0.0.1", port, timeout=10) as caller:  # answered by closing
            caller.settimeout(10)
            assert caller.recv(1) == b""
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        assert second.poll() is None and loopback_listener_uids(port) == {os.geteuid()}  # the other still holds it


def test_a_guard_waits_for_a_taken_port_and_then_holds_it() -> None:
    port = free_port()
    foreign = socket.create_server(("127.0.0.1", port))  # no SO_REUSEPORT: the guard cannot share it
    with guard(port) as proc:
        assert "Address already in use" in output_until(proc, GUARD_WAITS)
        assert loopback_listener_uids(port) == {os.geteuid()} and proc.poll() is None  # the foreign one only; it waits
        foreign.close()
        assert f"holding 127.0.0.1:{port}" in output_until(proc, GUARD_HOLDS)
        assert loopback_listener_uids(port) == {os.geteuid()}
    with socket.create_server(("127.0.0.1", port)), pytest.raises(OSError):  # hold() refuses a taken port
        hold("127.0.0.1", port)
