"""shared-session as a real local fleet, with `loadBalancer.sessionAffinity: ClientIP`: HAProxy keeps a client
address on one replica (balance source, consistent hashing)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.local import lbstats, probes
from copilot_fleet.local.supervisor import read_record
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet
STACK = "team"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("shared-session"))
    project.local_stack(STACK, "shared-session", replicas=2, loadBalancer={"sessionAffinity": "ClientIP"})
    try:
        up = project.run_ok("up", "--stack", STACK)
        assert "sticky by client address" in up.stdout
        yield project
    finally:
        project.teardown(STACK)


def _sessions_per_replica(project: h.Project) -> dict[str, int]:
    rows = lbstats.show_stat(project.paths(STACK).haproxy_socket)
    return {r["svname"]: int(r["stot"]) for r in rows
            if r["pxname"] == "copilot-cli" and r["svname"].startswith("copilot-cli-")}


def test_endpoint_keeps_one_client_address_on_one_replica(project: h.Project) -> None:
    target = project.target(STACK)
    assert target.isolation == "shared-session" and target.redis_url is not None
    cfg = project.paths(STACK).haproxy_cfg.read_text()
    assert "balance source" in cfg and "hash-type consistent" in cfg
    before = _sessions_per_replica(project)
    for _ in range(8):
        assert probes.jsonrpc_status(h.endpoint(target), target.token_for())["version"]
    after = _sessions_per_replica(project)
    grew = {name: after[name] - before[name] for name in after}
    assert sorted(grew.values()) == [0, 8], grew  # all eight on the same replica


def test_session_moves_between_replicas_with_its_history(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    sid, reply = h.run(h.create_session(target.replicas[1], token, target, "remember: apple"))
    assert "remembered: apple" in reply
    reply = h.run(h.resume_session(target.replicas[0], token, target, sid, "recall", delete=True))
    assert "recalled: apple" in reply
    assert not (project.paths(STACK).shared_session_state / sid).exists()


def test_a_killed_supervisord_leaves_nothing_that_up_and_down_cannot_clean(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    sid, _ = h.run(h.create_session(target.replicas[0], token, target, "remember: plum"))
    paths = project.paths(STACK)
    record = read_record(paths)
    assert record is not None
    orphans = [p for p in project.fleet_pids(STACK) if p != record.pid]
    # 2 CLI servers, Redis, HAProxy, the model, the janitor; started as root, the inspector guard too
    expected = 7 if paths.data_root != paths.root else 6
    assert len(orphans) == expected
    os.kill(record.pid, signal.SIGKILL)
    h.wait_for(lambda: not record.alive(), 15, "supervisord gone")
    assert all(procfs.is_alive(p) for p in orphans)  # its programs outlive it ...
    status = project.run("status", "--stack", STACK)
    assert status.returncode == 1 and "UNSUPERVISED: supervisord is gone" in status.stdout

    up = project.run_ok("up", "--stack", STACK)  # ... until the next up stops them and starts afresh
    assert f"had died and left {expected} process(es) running unsupervised; stopped them" in up.stdout
    assert not any(procfs.is_alive(p) for p in orphans)
    assert project.status(STACK)["healthy"]
    reply = h.run(h.resume_session(target.replicas[1], token, target, sid, "recall", delete=True))
    assert "recalled: plum" in reply
