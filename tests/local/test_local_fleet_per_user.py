"""per-user as a real local fleet: one CLI server per user, each with its own state and connection token; no
load balancer and no lease store."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.local import probes
from copilot_fleet.local.supervisor import Supervisor
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet
STACK = "users"
USERS = ["alice", "bob-smith"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("per-user"))
    project.local_stack(STACK, "per-user", users=USERS)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def test_one_server_per_user_and_nothing_shared(project: h.Project) -> None:
    target = project.target(STACK)
    assert target.isolation == "per-user"
    assert target.endpoint is None and target.redis_url is None and target.connection_token is None
    assert sorted(target.users) == USERS and sorted(target.user_tokens) == USERS
    assert target.token_for("alice") != target.token_for("bob-smith")
    base = int(target.users["alice"].rsplit(":", 1)[1])
    assert int(target.users["bob-smith"].rsplit(":", 1)[1]) == base + 1  # replicaBasePort + index

    status = project.status(STACK)
    assert status["healthy"]
    assert sorted(s["name"] for s in status["services"]) == ["copilot-user-alice-0", "copilot-user-bob-smith-0",
                                                             "model"]
    paths = project.paths(STACK)
    assert not paths.shared_session_state.exists()
    for user in USERS:
        home = paths.server_home(f"copilot-user-{user}-0")
        state = home / "session-state"
        assert state.is_dir() and not state.is_symlink()
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE(paths.secret_file(f"token-{user}").stat().st_mode) == 0o600
    # No secret in any process's arguments.
    secrets = [f.read_text().strip() for f in paths.secrets_dir.iterdir()]
    for pid in project.fleet_pids(STACK):
        args = " ".join(procfs.cmdline(pid) or [])
        assert not any(s in args for s in secrets), args


def test_a_user_token_opens_only_that_users_server(project: h.Project) -> None:
    target = project.target(STACK)
    assert probes.jsonrpc_status(target.users["alice"], target.token_for("alice"))["version"]
    with pytest.raises(probes.JsonRpcError, match="AUTHENTICATION_FAILED"):
        probes.jsonrpc_status(target.users["alice"], target.token_for("bob-smith"))
    with pytest.raises(probes.JsonRpcError, match="AUTHENTICATION_FAILED"):
        probes.jsonrpc_status(target.users["bob-smith"], target.token_for("alice"))


def test_session_survives_a_restart_of_the_users_server(project: h.Project) -> None:
    target = project.target(STACK)
    paths = project.paths(STACK)
    alice, token = target.users["alice"], target.token_for("alice")
    sid, reply = h.run(h.create_session(alice, token, target, "remember: apple"))
    assert "remembered: apple" in reply
    assert (paths.server_home("copilot-user-alice-0") / "session-state" / sid).is_dir()
    assert not (paths.server_home("copilot-user-bob-smith-0") / "session-state" / sid).exists()
    status = project.status(STACK)
    assert h.service(status, "copilot-user-alice-0")["sessions_on_disk"] == 1
    assert h.service(status, "copilot-user-bob-smith-0")["sessions_on_disk"] == 0
    # bob's server cannot resume alice's session: it is not on its disk.
    with pytest.raises(Exception, match="not found|Session not found"):
        h.run(h.resume_session(target.users["bob-smith"], target.token_for("bob-smith"), target, sid, "recall"))

    old_pid = h.service(status, "copilot-user-alice-0")["pid"]
    Supervisor(paths).restart_process("copilot-user-alice-0")
    restarted = h.wait_for(lambda: (s := h.service(project.status(STACK), "copilot-user-alice-0"))["healthy"]
                           and s["pid"] != old_pid and s, 60, "alice's server back after a restart")
    assert restarted["address"] == alice

    reply = h.run(h.resume_session(alice, token, target, sid, "recall", delete=True))
    assert "recalled: apple" in reply
    assert not (paths.server_home("copilot-user-alice-0") / "session-state" / sid).exists()
