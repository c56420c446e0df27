"""supervisord SIGKILLed: its children keep serving. `status` must see them and say that supervision is gone,
`up` must bring supervision back, `down` must stop them and say so."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.local import probes
from copilot_fleet.local.supervisor import Supervisor, read_record
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet
STACK = "sec-orphans"


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("sec-orphans"))
    project.local_stack(STACK, "shared-cli", replicas=1)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def _kill_supervisord(project: h.Project) -> dict[str, int]:
    """SIGKILL supervisord; returns the PIDs of the programs it leaves running, by program name."""
    pids = {s["name"]: s["pid"] for s in project.status(STACK)["services"]}
    record = read_record(project.paths(STACK))
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    h.wait_for(lambda: not procfs.is_alive(record.pid), 10, "supervisord gone")
    assert all(procfs.is_alive(p) for p in pids.values()), "the programs should outlive supervisord"
    return pids


def test_status_sees_the_orphans_and_says_supervision_is_gone(project: h.Project) -> None:
    orphans = _kill_supervisord(project)
    proc = project.run("status", "--stack", STACK, "--json")
    assert proc.returncode == 1, "a fleet nobody supervises is not healthy"
    status = json.loads(proc.stdout)
    assert status["supervision"] == "lost"
    rows = {s["name"]: s for s in status["services"]}
    for name, pid in orphans.items():
        assert rows[name]["pid"] == pid and rows[name]["state"] == "UNSUPERVISED", rows[name]
    assert rows["copilot-cli-0"]["latency_ms"] is not None, "the orphaned server is still probed"

    table = project.run("status", "--stack", STACK)
    assert table.returncode == 1
    first = table.stdout.splitlines()[0]
    assert "supervisord is gone" in first and f"copilot-fleet up --stack {STACK}" in first, first
    assert "not running (start it" not in table.stdout


def test_up_brings_supervision_back(project: h.Project) -> None:
    orphans = _kill_supervisord(project)
    up = project.run_ok("up", "--stack", STACK)
    assert "supervision" in up.stdout, up.stdout
    status = project.status(STACK)
    assert status["healthy"] and status["supervision"] == "running"
    assert not any(procfs.is_alive(p) for p in orphans.values() if p not in {s["pid"] for s in status["services"]})
    # Supervised again: a killed server comes back.
    cli = h.service(status, "copilot-cli-0")["pid"]
    os.kill(cli, signal.SIGKILL)
    supervisor = Supervisor(project.paths(STACK))
    h.wait_for(lambda: (p := supervisor.processes()["copilot-cli-0"])["statename"] == "RUNNING" and p["pid"] != cli,
               60, "copilot-cli-0 restarted by the new supervisord")
    target = project.target(STACK)
    h.wait_for(lambda: _answers(h.endpoint(target), target.token_for()), 60, "the endpoint answers again")


def _answers(address: str, token: str | None) -> bool:
    try:
        return bool(probes.jsonrpc_status(address, token).get("version"))
    except (probes.JsonRpcError, OSError):
        return False


def test_down_stops_the_orphans_and_says_so(project: h.Project) -> None:
    orphans = _kill_supervisord(project)
    down = project.run_ok("down", "--stack", STACK)
    assert not any(procfs.is_alive(p) for p in orphans.values())
    assert "was not running" not in down.stdout
    stopped = re.search(r"supervisord had died; stopped (\d+) process", down.stdout)
    assert stopped and int(stopped.group(1)) >= len(orphans), down.stdout  # the janitor too
