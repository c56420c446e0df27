"""A tool run that kills its own CLI server and binds the freed port is sent the connection token by HAProxy's check
and by every client (docs/security.md, "The port of a server that is down"). With `fleet:local.replicaBasePort`
below 1024 in a fleet started as root, only each server's own CLI copy may bind such a port: the tool run tries,
is refused, and the restarted server gets its port back. The control runs the same attack on a fleet with the
default ports and shows the token stolen.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h
from copilot_fleet.client import FleetClient
from copilot_fleet.local import sealed_cli
from copilot_fleet.local.supervisor import Supervisor
from copilot_fleet.pod.ports import free_port_block, port_holder_pid
from copilot_fleet.target import Target

pytestmark = pytest.mark.fleet
LOW, HIGH = "sec-low", "sec-high"
CAP_NET_BIND_SERVICE = 1 << 10
THIEF = Path(__file__).resolve().parents[1] / "helpers" / "port_thief.py"
UP_SAID: dict[str, str] = {}  # what `up` printed, per stack


@pytest.fixture(scope="module")
def thief() -> Iterator[Path]:
    """port_thief.py where the fleet's Unix users can read it (the checkout may be under root's 0700 home)."""
    where = Path(tempfile.mkdtemp(prefix="copilot-fleet-thief-"))
    try:
        where.chmod(0o755)
        shutil.copyfile(THIEF, where / "port_thief.py")
        (where / "port_thief.py").chmod(0o644)
        yield where / "port_thief.py"
    finally:
        shutil.rmtree(where)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    if os.geteuid() != 0:
        pytest.skip("CLI servers below port 1024 need `up` as root")
    project = h.Project.create(tmp_path_factory.mktemp("sec-low-ports"))
    project.local_stack(LOW, "shared-cli", replicas=2, low_replica_ports=True)
    try:
        UP_SAID[LOW] = project.run_ok("up", "--stack", LOW).stdout
        yield project
    finally:
        project.teardown(LOW)


def _caps(pid: int | str) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in lines) if k.startswith("Cap")}


def _uid(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[1])


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _attack(project: h.Project, stack: str, thief: Path) -> tuple[list[str], int, int]:
    """Have a session on the first replica run the thief; (its events, the server's pid before, its port)."""
    target = project.target(stack)
    address = target.replicas[0]
    supervisor = Supervisor(project.paths(stack))
    before = supervisor.processes()["copilot-cli-0"]["pid"]
    name = f"thief-{os.getpid()}-{stack}.txt"
    run = a.tool_run(address, target.token_for(), target, f"python3 {thief} take \"$(pwd -P)/{name}\"")
    out = Path(next(line for line in run.output.splitlines() if line.endswith(name)))
    events = h.wait_for(lambda: (e := _events(out)) and (e[-1] in ("back", "timeout") or "BOUND" in e) and e, 60,
                        f"the thief's attempt to end (the server back, or the port taken); the tool run printed "
                        f"{run.output[-400:]!r}")
    return events, before, _port(address)


def test_each_server_runs_its_users_copy_which_alone_may_bind_low_ports(project: h.Project) -> None:
    supervisor = Supervisor(project.paths(LOW))
    users = set()
    for index, address in enumerate(project.target(LOW).replicas):
        port = _port(address)
        pid = supervisor.processes()[f"copilot-cli-{index}"]["pid"]
        assert port < 1024 and port_holder_pid(port) == pid
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
        user = exe.parent.name
        assert sealed_cli.is_low_ports_copy(exe) and _uid(pid) == pwd.getpwnam(user).pw_uid
        caps = _caps(pid)
        assert (caps["CapPrm"], caps["CapEff"], caps["CapInh"], caps["CapAmb"]) == (
            CAP_NET_BIND_SERVICE, CAP_NET_BIND_SERVICE, 0, 0), caps
        users.add(user)
        # Nobody else reaches it: its directory is root's with the server user's group, the inode's is root's.
        st = exe.parent.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o710)
        assert (exe.parents[1] / ".capable").stat().st_mode & 0o777 == 0o700
        with pytest.raises(PermissionError):
            subprocess.run([str(exe), "--version"], user="nobody", group="nogroup", extra_groups=[],
                           capture_output=True, timeout=30, check=False)
    assert len(users) == 1  # shared-cli: one user for the replicas
    assert "ports     below 1024: only each server's own CLI may bind its port" in UP_SAID[LOW], UP_SAID[LOW]


def test_a_tool_run_has_no_capability_and_cannot_take_its_servers_port(project: h.Project, thief: Path) -> None:
    events, before, port = _attack(project, LOW, thief)
    caps = events[0].split()
    assert caps[0] == "caps" and {int(c, 16) for c in caps[1:]} == {0}, events  # none to pass on
    binds = [e for e in events if e.startswith("bind ")]
    assert binds and set(binds) == {"bind EACCES"}, events  # it tried while the port was free, and was refused
    assert "BOUND" not in events and events[-1] == "back", events
    supervisor = Supervisor(project.paths(LOW))
    after = h.wait_for(lambda: (p := supervisor.processes()["copilot-cli-0"])["statename"] == "RUNNING"
                       and p["pid"] != before and p["pid"], 60, "copilot-cli-0 restarted by supervisord")
    assert port_holder_pid(port) == after  # the fleet's own server serves the port again
    h.wait_for(lambda: project.status(LOW)["healthy"], 60, "fleet healthy again")


def test_a_genuine_cli_a_tool_run_starts_on_a_low_port_learns_no_token(project: h.Project, thief: Path) -> None:
    """What the tool run can still do: run its server's own binary (it has its server's user) on a low port that is
    free. That CLI checks the token it is sent against one of ours and writes it nowhere (every log on)."""
    target = project.target(LOW)
    port = free_port_block(1, below_1024=True)
    name = f"impostor-{os.getpid()}"
    run = a.tool_run(target.replicas[0], target.token_for(), target,
                     f"mkdir -p {name} && python3 {thief} impostor {port} \"$(pwd -P)/{name}\"")
    out = Path(next(line for line in run.output.splitlines() if line.endswith("/events"))).parent
    started = h.wait_for(lambda: next((e for e in _events(out / "events") if e.startswith("started")), None), 60,
                         "the impostor CLI started")
    pid = int(started.split()[1])
    try:
        h.wait_for(lambda: port_holder_pid(port) == pid, 60, f"the impostor listening on {port}")
        assert _caps(pid)["CapEff"] == CAP_NET_BIND_SERVICE  # it is the capable copy
        token = target.token_for()
        assert token is not None
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "connect", "params": {"token": token}}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = conn.recv(4096)
        assert b"AUTHENTICATION_FAILED" in answer, answer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    h.wait_for(lambda: _events(out / "events")[-1:] == ["ended"], 30, "the impostor ended")
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.parent.name == "logs" for p in written), written  # it logged (the search below is not empty)
    assert [p for p in written if token.encode() in p.read_bytes()] == []


def test_per_user_in_store_mode_each_user_runs_a_copy_no_other_user_can_run(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Per-user: each fleet user's server has a Unix user, and a way to the capable CLI, of its own (in store mode
    the provider, root, starts the CLI as that user). Alice's tool runs cannot run Bob's copy."""
    if os.geteuid() != 0:
        pytest.skip("CLI servers below port 1024 need `up` as root")
    project = h.Project.create(tmp_path_factory.mktemp("sec-low-per-user"))
    project.local_stack("low-pu", "per-user", users=["alice", "bob"], low_replica_ports=True,
                        sessionState={"mode": "store"})
    try:
        project.run_ok("up", "--stack", "low-pu")
        target = project.target("low-pu")
        copies = {}
        for user, address in target.users.items():
            pid = port_holder_pid(_port(address))
            assert pid is not None and _port(address) < 1024
            exe = Path(os.readlink(f"/proc/{pid}/exe"))
            assert sealed_cli.is_low_ports_copy(exe) and _uid(pid) == pwd.getpwnam(exe.parent.name).pw_uid
            copies[user] = exe
        assert copies["alice"].parent != copies["bob"].parent
        alice = pwd.getpwnam(copies["alice"].parent.name)
        with pytest.raises(PermissionError):
            subprocess.run([str(copies["bob"]), "--version"], user=alice.pw_uid, group=alice.pw_gid,
                           extra_groups=[], capture_output=True, timeout=30, check=False)
        assert "remembered: lowport" in (h.run(_remember(target, "alice", "lowport")) or "")
    finally:
        project.teardown("low-pu")


async def _remember(target: Target, user: str, word: str) -> str | None:
    async with FleetClient(target, user=user) as fleet, await fleet.create_session("low", available_tools=[]) as s:
        return await s.reply(f"remember: {word}")


def test_listed_exposure_with_ports_from_1024_a_tool_run_takes_the_port_and_the_token(
        tmp_path_factory: pytest.TempPathFactory, thief: Path) -> None:
    """The control, docs/security.md: the same attack on a fleet with the default ports (from 1024)."""
    project = h.Project.create(tmp_path_factory.mktemp("sec-high-ports"))
    project.local_stack(HIGH, "shared-cli", replicas=2)
    try:
        said = project.run_ok("up", "--stack", HIGH).stdout
        assert "a tool run that kills its own server can take the port and be sent the token" in said, said
        token = project.target(HIGH).token_for()
        assert token is not None
        events, _, _ = _attack(project, HIGH, thief)
        assert "BOUND" in events, events
        received = h.wait_for(lambda: [e for e in _events_file(project, HIGH) if token in e], 30,
                              "HAProxy's check (or a client) sent the token to the thief")
        assert re.search(r'"method":\s*"connect"', received[0])
    finally:
        project.teardown(HIGH)


def _events_file(project: h.Project, stack: str) -> list[str]:
    found = list(project.paths(stack).work_dir.resolve().rglob(f"thief-{os.getpid()}-{stack}.txt"))
    return _events(found[0]) if found else []


def test_down_purge_removes_the_users_way_to_the_capable_copy(project: h.Project) -> None:
    """Last in this module: the user's group id may be given to another group once the user is deleted."""
    pid = Supervisor(project.paths(LOW)).processes()["copilot-cli-0"]["pid"]
    user_dir = Path(os.readlink(f"/proc/{pid}/exe")).parent
    project.run_ok("down", "--stack", LOW, "--purge")
    assert not user_dir.exists() and (user_dir.parent / ".capable" / "copilot").exists()
