"""What a session's tool run leaves behind in a root-run fleet: a process that outlives the turn, and a link in its
server's home. The CLI's shell tool starts each command in a session of its own (measured: the tool run's SID is
its own PID), so what it leaves running is outside supervisord's session, which is how `down` used to find the
fleet's processes.

Before: `down` said "none left" while the process kept running as the fleet's user; `down --purge` then failed
at `userdel` (the user still ran it) after removing the data; after a killed supervisord, `up` started a new fleet
beside it, on a port it could take first (its probes then handed it the connection token); and `up` (root)
chmodded 0700 whatever a link put in place of a per-user server's session-state/ pointed to.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h
from copilot_fleet.local import accounts
from copilot_fleet.local.supervisor import read_record
from copilot_fleet.pod import procfs

pytestmark = [pytest.mark.fleet,
              pytest.mark.skipif(os.geteuid() != 0, reason="a root-run fleet's users: needs root")]
STACK = "sec-leftovers"
SERVER = "copilot-user-alice-0"


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("sec-leftovers"))
    project.local_stack(STACK, "per-user", users=["alice"])
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def _alice(project: h.Project, command: str) -> a.ToolRun:
    target = project.target(STACK)
    return a.tool_run(target.users["alice"], target.token_for("alice"), target, command)


def _leave_running(project: h.Project, command: str) -> int:
    """A tool run starts `command` in the background and ends its turn; returns its PID."""
    run = _alice(project, f"setsid {command} </dev/null >/dev/null 2>&1 & echo \"left $!\"")
    pid = int(run.output.split("left ", 1)[1].split()[0])
    assert procfs.is_alive(pid), f"the tool run's process {pid} is not running"
    assert (procfs.user_name(pid) or "").startswith("cf-"), procfs.user_name(pid)
    return pid


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_tool_runs_background_process_does_not_outlive_down(project: h.Project) -> None:
    pid = _leave_running(project, "sh -c 'exec sleep 86400'")
    try:
        record = read_record(project.paths(STACK))
        assert record is not None and procfs.session_id(pid) != record.pid, "the premise: outside supervision"
        down = project.run_ok("down", "--stack", STACK)
        assert not procfs.is_alive(pid), f"{procfs.describe(pid)} outlived `down`:\n{down.stdout}"
        assert "a session had left running" in down.stdout and str(pid) in down.stdout, down.stdout
        purge = project.run("down", "--stack", STACK, "--purge")
        assert purge.returncode == 0, purge.stderr
        assert accounts.of_stack(project.paths(STACK).fleet_id, STACK) == [], "the fleet's users are left"
    finally:
        _kill(pid)


SQUATTER = r"""
import socket, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
for _ in range(60000):
    try:
        s.bind(("127.0.0.1", port))
        break
    except OSError:
        time.sleep(0.01)
else:
    sys.exit(1)
s.listen(8)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    with open(out, "ab") as f:
        f.write(data)
    c.close()
"""


def test_up_after_a_killed_supervisord_stops_what_a_tool_run_left_before_it_probes(project: h.Project,
                                                                                   tmp_path: Path) -> None:
    """A squatter waits for alice's port; supervisord is killed (a crash); `up` stops the orphaned server, which
    frees the port. The squatter must be gone before `up` checks its ports and sends any probe a token."""
    target = project.target(STACK)
    port = int(target.users["alice"].rsplit(":", 1)[1])
    work = project.paths(STACK).server_work_dir(SERVER).resolve()
    script = work / "squat.py"
    loot = work / "loot.bin"
    encoded = base64.b64encode(SQUATTER.encode()).decode()  # `run:` takes one line
    run = _alice(project, f"echo {encoded} | base64 -d > squat.py && echo written")
    assert "written" in run.output and script.is_file()
    pid = _leave_running(project, f"/usr/bin/python3 {script} {port} {loot}")
    try:
        record = read_record(project.paths(STACK))
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)
        h.wait_for(lambda: not procfs.is_alive(record.pid), 10, "supervisord gone")
        up = project.run("up", "--stack", STACK, "--timeout", "30")
        assert up.returncode == 0, f"up failed beside the squatter:\n{up.stdout}\n{up.stderr}"
        assert not procfs.is_alive(pid), f"{procfs.describe(pid)} outlived `up`"
        assert "left running as the fleet's users" in up.stdout, up.stdout
        token = target.token_for("alice")
        assert token is not None
        assert not loot.exists() or token.encode() not in loot.read_bytes(), "a probe handed the squatter the token"
    finally:
        _kill(pid)


def test_up_never_chmods_through_a_link_a_tool_run_put_in_a_servers_home(project: h.Project,
                                                                           tmp_path: Path) -> None:
    """Alice's session-state/ is in her server's home, which is hers: her tool run swaps it for a link to a
    directory of root's. `up` (root) set that directory to 0700 (`/usr` or `/etc` would lock every other user
    out of the machine) before it noticed the link."""
    canary = tmp_path / "roots-directory"
    canary.mkdir()
    canary.chmod(0o755)
    # The turn itself fails once its session's directory has moved away; the command ran (the link is there).
    with contextlib.suppress(Exception):
        _alice(project, f"cd \"$COPILOT_HOME\" && mv session-state moved && ln -s {canary} session-state")
    home = project.paths(STACK).server_home(SERVER).resolve()
    assert (home / "session-state").is_symlink(), "the tool run did not put its link in place"
    project.run_ok("down", "--stack", STACK)
    up = project.run("up", "--stack", STACK)
    assert stat.S_IMODE(canary.stat().st_mode) == 0o755, "up changed the mode of what the link points to"
    assert up.returncode == 1 and "is a link" in up.stderr and "session-state" in up.stderr, up.stderr
