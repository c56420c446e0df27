"""shared-cli as a real local fleet: 2 CLI replicas, HAProxy, Redis, the test model, under supervisord.

One fleet per module (starting it costs a few seconds); the tests that disturb it (SIGKILL, SIGSTOP) wait until
it is healthy again before they end.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import tests.helpers.local_fleet as h
from copilot_fleet.local import lbstats, probes
from copilot_fleet.local.supervisor import Supervisor, read_record
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet
STACK = "cli"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("shared-cli"))
    project.local_stack(STACK, "shared-cli", replicas=2)
    try:
        up = project.run_ok("up", "--stack", STACK)
        assert "ready  copilot-cli-0" in up.stdout and "ready  haproxy" in up.stdout
        # HAProxy's checks were refused while the CLI servers started; a fleet that is up has failed none.
        status = project.status(STACK)
        assert {n: h.service(status, n)["check_failures"] for n in ("copilot-cli-0", "copilot-cli-1")} == {
            "copilot-cli-0": 0, "copilot-cli-1": 0}, "the start's refused checks count as failed checks (CHK FAIL)"
        yield project
    finally:
        project.teardown(STACK)
        assert not project.paths(STACK).root.exists()


def _healthy(project: h.Project) -> dict[str, Any]:
    return h.wait_for(lambda: (s := project.status(STACK))["healthy"] and s, 60, "fleet healthy again")


def test_target_describes_the_fleet(project: h.Project) -> None:
    target_out = project.run_ok("target", "--stack", STACK, "--show-secrets")
    target = project.target(STACK)
    assert f'"connection_token": "{target.token_for()}"' in target_out.stdout
    redacted = project.run_ok("target", "--stack", STACK).stdout  # what is printed unless asked: no secret
    assert '"connection_token": "[secret]"' in redacted and ":[secret]@127.0.0.1:" in redacted
    assert not [name for name, value in target.secret_values().items() if value in redacted]
    assert json.loads(redacted)["replicas"] == target.replicas
    assert target.platform == "local" and target.isolation == "shared-cli"
    assert len(target.replicas) == 2 and target.endpoint not in target.replicas
    assert target.provider is not None and target.provider.base_url.endswith("/v1")
    # Every address in the target answers a JSON-RPC round trip with the target's token.
    for address in [h.endpoint(target), *target.replicas]:
        assert probes.jsonrpc_status(address, target.token_for())["version"]
    # ... and refuses a wrong one.
    with pytest.raises(probes.JsonRpcError, match="AUTHENTICATION_FAILED"):
        probes.jsonrpc_status(target.replicas[0], "wrong-token")
    # The Redis URL carries the password that the lease store requires.
    assert target.redis_url is not None
    url = urlsplit(target.redis_url.get_secret_value())
    assert url.hostname == "127.0.0.1" and url.password and url.port
    assert redis.Redis.from_url(url.geturl()).ping()
    no_retry = Retry(NoBackoff(), 0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=url.port, password="wrong", retry=no_retry).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=url.port, retry=no_retry).ping()


def test_state_dir_modes_and_no_secret_in_process_arguments(project: h.Project) -> None:
    paths = project.paths(STACK)
    for d in [paths.fleet_dir, paths.root, paths.secrets_dir, paths.config_dir, paths.logs_dir, paths.run_dir,
              paths.shared_session_state, paths.redis_dir, *paths.servers_dir.iterdir(), *paths.work_dir.iterdir()]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    secret_files = list(paths.secrets_dir.iterdir())
    assert {f.name for f in secret_files} == {"connection-token", "redis-password", "model-api-key"}
    for f in [*secret_files, paths.target_file, paths.supervisord_conf, paths.redis_conf, paths.haproxy_cfg]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # Each replica's COPILOT_HOME is its own; only session-state/ is the shared one, through a link.
    for home in paths.servers_dir.iterdir():
        link = home / "session-state"
        assert link.is_symlink() and link.resolve() == paths.shared_session_state.resolve()
    # Nothing anywhere in the state dir is open to group or others (every process runs with umask 077) ...
    exposed = [p for p in paths.root.rglob("*") if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert exposed == []
    if paths.data_root != paths.root:
        # ... nor in the data directory of a root-run fleet, except the root-owned directories the servers' users
        # pass through (0711: enter, not list), whose entries each belong to one user.
        passages = {paths.data_root, paths.servers_dir, paths.work_dir, paths.otel_dir}
        for d in passages:
            st = d.lstat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o711, 0), d
        exposed = [p for p in paths.data_root.rglob("*") if p not in passages and not p.is_symlink()
                   and stat.S_IMODE(p.lstat().st_mode) & 0o077]
        assert exposed == []
        cli_user = {d.stat().st_uid for d in [*paths.servers_dir.iterdir(), paths.shared_session_state]}
        assert len(cli_user) == 1 and 0 not in cli_user  # the replicas' user, not root
    secrets = [f.read_text().strip() for f in secret_files]
    pids = project.fleet_pids(STACK)
    # supervisord, 2 CLIs, redis, haproxy, model, janitor; started as root, the inspector guard too
    assert len(pids) == (8 if paths.data_root != paths.root else 7)
    for pid in pids:
        args = " ".join(procfs.cmdline(pid) or [])
        assert args, pid
        for secret in secrets:
            assert secret not in args, f"a secret is visible in the arguments of {args}"


def test_up_again_changes_nothing(project: h.Project) -> None:
    before = {s["name"]: s["pid"] for s in project.status(STACK)["services"]}
    record = read_record(project.paths(STACK))
    again = project.run_ok("up", "--stack", STACK)
    assert "already running and healthy; nothing changed" in again.stdout
    after = {s["name"]: s["pid"] for s in project.status(STACK)["services"]}
    assert after == before and all(before.values())
    assert read_record(project.paths(STACK)) == record


def test_session_created_on_one_replica_resumes_on_the_other(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    paths = project.paths(STACK)
    sid, reply = h.run(h.create_session(target.replicas[0], token, target, "remember: apple"))
    assert "remembered: apple" in reply
    assert (paths.shared_session_state / sid / "events.jsonl").is_file()
    status = project.status(STACK)
    # The shared session-state/ is counted once and shown as shared on every replica.
    assert status["shared_sessions_on_disk"] == 1
    assert all(h.service(status, n)["sessions_on_disk"] == 1 and h.service(status, n)["sessions_shared"]
               for n in ("copilot-cli-0", "copilot-cli-1"))

    reply = h.run(h.resume_session(target.replicas[1], token, target, sid, "recall"))
    assert "recalled: apple" in reply
    h.run(h.delete_session(target.replicas[1], token, sid))
    assert not (paths.shared_session_state / sid).exists()
    assert project.status(STACK)["shared_sessions_on_disk"] == 0


def test_status_counts_attached_sessions_per_replica(project: h.Project) -> None:
    from copilot.session import PermissionHandler

    target = project.target(STACK)
    provider = target.provider
    assert provider is not None

    async def attached_counts() -> tuple[dict[str, int], dict[str, int]]:
        client = h._client(target.replicas[1], target.token_for())
        await client.start()
        try:
            session = await client.create_session(provider=provider.to_sdk(), model=target.model,
                                                  on_permission_request=PermissionHandler.approve_all)
            await session.send_and_wait("remember: pear", timeout=60)
            status = project.status(STACK)
            while_attached = {n: h.service(status, n)["attached"] for n in ("copilot-cli-0", "copilot-cli-1")}
            await session.disconnect()
            status = project.status(STACK)
            after = {n: h.service(status, n)["attached"] for n in ("copilot-cli-0", "copilot-cli-1")}
            await client.delete_session(session.session_id)
            return while_attached, after
        finally:
            await h._close(client)

    while_attached, after = h.run(attached_counts())
    assert while_attached == {"copilot-cli-0": 0, "copilot-cli-1": 1}
    assert after == {"copilot-cli-0": 0, "copilot-cli-1": 0}


def test_status_table(project: h.Project) -> None:
    proc = project.run("status", "--stack", STACK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "healthy" in lines[0]
    header = lines[1].split()
    assert header[:6] == ["NAME", "KIND", "STATE", "PID", "ADDRESS", "HEALTH"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"model", "redis", "haproxy", "copilot-cli-0", "copilot-cli-1"}
    for name in ("copilot-cli-0", "copilot-cli-1"):
        assert "RUNNING" in rows[name] and " ok " in rows[name] and " UP " in rows[name] and "shared" in rows[name]


def test_killed_replica_is_restarted_and_its_sessions_resume_elsewhere(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    before = h.service(project.status(STACK), "copilot-cli-0")
    home_before = (procfs.environ(before["pid"]) or {})["COPILOT_HOME"]
    sid, _ = h.run(h.create_session(target.replicas[0], token, target, "remember: banana"))

    os.kill(before["pid"], signal.SIGKILL)
    # A connection accepted while the dying server's threads still hold its socket is reset (nobody can hide
    # that). Once supervisord has reaped it (every thread gone, so the socket is closed), connections through
    # the endpoint keep working: a refused connect is redispatched to the live replica, before HAProxy's health
    # check has even noticed, and before the restarted replica listens.
    supervisor = Supervisor(project.paths(STACK))
    h.wait_for(lambda: supervisor.processes()["copilot-cli-0"]["pid"] != before["pid"], 15,
               "supervisord reaped the killed replica", interval=0.01)
    for _ in range(10):
        assert probes.jsonrpc_status(h.endpoint(target), token)["version"]

    after = h.wait_for(lambda: (s := h.service(project.status(STACK), "copilot-cli-0"))["healthy"]
                       and s["pid"] != before["pid"] and s, 60, "copilot-cli-0 restarted by supervisord")
    assert after["address"] == before["address"]
    assert (procfs.environ(after["pid"]) or {})["COPILOT_HOME"] == home_before

    reply = h.run(h.resume_session(target.replicas[1], token, target, sid, "recall", delete=True))
    assert "recalled: banana" in reply


def test_a_replica_that_stops_answering_leaves_the_rotation(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    sock = project.paths(STACK).haproxy_socket
    pid = h.service(_healthy(project), "copilot-cli-0")["pid"]
    # SIGSTOP: the port still accepts TCP, but nothing answers; HAProxy's JSON-RPC check must notice.
    os.kill(pid, signal.SIGSTOP)
    try:
        states = h.wait_for(lambda: (s := lbstats.backend_states(sock)).get("copilot-cli-0", "").startswith("DOWN")
                            and s, 30, "HAProxy marks copilot-cli-0 DOWN")
        assert states["copilot-cli-1"].startswith("UP")
        status = project.run("status", "--stack", STACK, "--json")
        assert status.returncode == 1  # unhealthy
        row = h.service(json.loads(status.stdout), "copilot-cli-0")
        assert not row["healthy"] and row["balancer"].startswith("DOWN") and row["state"] == "RUNNING"
        for _ in range(10):  # round robin would send half of these to the frozen replica, where they would time out
            assert probes.jsonrpc_status(h.endpoint(target), token, timeout=3.0)["version"]
    finally:
        os.kill(pid, signal.SIGCONT)
    h.wait_for(lambda: lbstats.backend_states(sock).get("copilot-cli-0", "").startswith("UP"), 30,
               "copilot-cli-0 back in rotation")
    _healthy(project)


def test_down_keeps_sessions_and_up_brings_them_back(project: h.Project) -> None:
    target = project.target(STACK)
    token = target.token_for()
    sid, _ = h.run(h.create_session(h.endpoint(target), token, target, "remember: cherry"))
    pids = project.fleet_pids(STACK)
    down = project.run_ok("down", "--stack", STACK)
    assert "stopped" in down.stdout
    assert not any(procfs.is_alive(p) for p in pids)
    assert project.fleet_pids(STACK) == []
    assert (project.paths(STACK).shared_session_state / sid).is_dir()
    assert "was not running" in project.run_ok("down", "--stack", STACK).stdout  # idempotent
    status = project.run("status", "--stack", STACK)
    assert status.returncode == 1 and "not running" in status.stdout
    target_again = project.run("target", "--stack", STACK)
    assert target_again.returncode == 0 and "not running" in target_again.stderr

    project.run_ok("up", "--stack", STACK)
    assert project.target(STACK).token_for() == token  # secrets are kept: clients keep working
    reply = h.run(h.resume_session(target.replicas[1], token, target, sid, "recall", delete=True))
    assert "recalled: cherry" in reply


def test_up_restarts_a_program_that_was_stopped(project: h.Project) -> None:
    paths = project.paths(STACK)
    Supervisor(paths).stop_process("copilot-cli-1")
    others = {s["name"]: s["pid"] for s in project.status(STACK)["services"] if s["name"] != "copilot-cli-1"}
    up = project.run_ok("up", "--stack", STACK)
    assert "start  copilot-cli-1 (was STOPPED)" in up.stdout and "ready  copilot-cli-1" in up.stdout
    status = project.status(STACK)
    assert status["healthy"], [(s["name"], s["state"], s["health"], s["balancer"]) for s in status["services"]
                               if not s["healthy"]]
    assert {s["name"]: s["pid"] for s in status["services"] if s["name"] != "copilot-cli-1"} == others


def test_up_refuses_a_changed_stack_while_running(project: h.Project) -> None:
    stack_file = project.dir / "stacks" / f"Pulumi.{STACK}.yaml"
    original = stack_file.read_text()
    try:
        stack_file.write_text(original + "  fleet:logLevel: warning\n")
        proc = project.run("up", "--stack", STACK)
        assert proc.returncode == 1
        assert "no longer matches" in proc.stderr and "down" in proc.stderr
    finally:
        stack_file.write_text(original)
    assert project.status(STACK)["healthy"]


def test_log_files_exist_per_process(project: h.Project) -> None:
    logs = project.paths(STACK).logs_dir
    names = {p.name for p in logs.iterdir()}
    assert {"copilot-cli-0.log", "copilot-cli-1.log", "redis.log", "haproxy.log", "model.log",
            "supervisord.log"} <= names
    assert "CLI server listening on port" in (logs / "copilot-cli-0.log").read_text()
    assert Path(logs / "model.log").read_text().count("POST /v1/chat/completions") >= 1


def test_each_server_works_in_a_directory_of_its_own_and_a_session_keeps_its_creators(project: h.Project) -> None:
    """The working directory (a session's cwd, where its tools write files) is per server, as each pod's is, and
    never COPILOT_HOME or session-state/. CLI 1.0.102 records it in the session at create and keeps it on resume
    elsewhere (workspace.yaml `cwd`, the session's context), which is what docs/local-fleet.md, "Working
    directory", builds on."""
    paths = project.paths(STACK)
    target = project.target(STACK)
    supervisor = Supervisor(paths)
    infos = supervisor.processes()
    for name in ("copilot-cli-0", "copilot-cli-1"):
        pid = int(infos[name]["pid"])
        assert Path(os.readlink(f"/proc/{pid}/cwd")) == paths.work_dir / name
    assert {p.name for p in paths.work_dir.iterdir()} == {"copilot-cli-0", "copilot-cli-1"}

    token = target.token_for()
    sid, _ = h.run(h.create_session(target.replicas[0], token, target, "remember: fig"))

    async def recorded_cwd(address: str) -> str:
        client = h._client(address, token)
        await client.start()
        try:
            meta = await client.get_session_metadata(sid)
            assert meta is not None and meta.context is not None
            return str(meta.context.working_directory)
        finally:
            await h._close(client)

    creator = str(paths.work_dir / "copilot-cli-0")
    assert h.run(recorded_cwd(target.replicas[0])) == creator
    assert "recalled: fig" in h.run(h.resume_session(target.replicas[1], token, target, sid, "recall"))
    assert h.run(recorded_cwd(target.replicas[1])) == creator  # resumed on replica 1: still its creator's
    assert f"cwd: {creator}\n" in (paths.shared_session_state / sid / "workspace.yaml").read_text()
    h.run(h.delete_session(target.replicas[1], token, sid))
