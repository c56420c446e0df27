"""What `copilot-fleet up/down/status/target` say when they cannot do their job, and that a failed `up` leaves
nothing running."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet import CLI_VERSION
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (our fleet's paths)."""
    out = []
    for pid in procfs.all_pids():
        args = " ".join(procfs.cmdline(pid) or [])
        if text in args and procfs.is_alive(pid) and pid != os.getpid():
            out.append(args)
    return out


@pytest.fixture
def project(tmp_path: Path) -> h.Project:
    return h.Project.create(tmp_path / "project")


def _fake_cli(path: Path, version: str, serve: str) -> Path:
    """A stand-in `copilot` that reports `version` and, as a server, runs the shell snippet `serve`."""
    path.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "GitHub Copilot CLI {version}."; exit 0; fi
{serve}
""")
    path.chmod(0o755)
    return path


def test_port_in_use_names_port_key_and_holder_and_starts_nothing(project: h.Project) -> None:
    ports = project.local_stack("busy", "shared-cli", replicas=2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["endpointPort"]))
        holder.listen()
        proc = project.run("up", "--stack", "busy")
    assert proc.returncode == 1
    assert f"port {ports['endpointPort']}" in proc.stderr
    assert "fleet:local.endpointPort" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr  # this test process holds it
    assert "nothing was started" in proc.stderr
    paths = project.paths("busy")
    assert not paths.root.exists()  # no state, no secrets, no supervisord record
    assert _processes_mentioning(str(project.dir)) == []


def test_non_local_stack_is_refused_with_the_pulumi_way(project: h.Project) -> None:
    project.write_stack("prod", {"isolation": "shared-cli", "platform": "kubernetes",
                                 "image": f"registry.example.com/copilot-cli:{CLI_VERSION}",
                                 "provider": {"baseUrl": "https://models.example.com/v1"}})
    up = project.run("up", "--stack", "prod")
    assert up.returncode == 1
    assert "kubernetes stack" in up.stderr and "pulumi up --stack prod" in up.stderr
    assert "copilot-fleet target --stack prod" in up.stderr
    down = project.run("down", "--stack", "prod")
    assert down.returncode == 1 and "pulumi destroy --stack prod" in down.stderr
    assert not project.paths("prod").root.exists()


def test_target_of_a_deployed_stack_needs_pulumi_or_a_file(project: h.Project, tmp_path: Path) -> None:
    project.write_stack("prod", {"isolation": "shared-cli", "platform": "kubernetes"})
    env = h.fleet_env(PATH=str(tmp_path / "empty-bin"))  # no pulumi on PATH
    proc = project.run("target", "--stack", "prod", env=env)
    assert proc.returncode == 1
    assert "Pulumi CLI is not on PATH" in proc.stderr and "--from FILE" in proc.stderr

    doc = {"stack": "prod", "platform": "kubernetes", "isolation": "shared-cli", "endpoint": "fleet.example:4321",
           "replicas": ["pod-0.fleet:4321", "pod-1.fleet:4321"], "connection_token": "t0k"}
    good = tmp_path / "target.json"
    good.write_text(json.dumps(doc))
    proc = project.run("target", "--from", str(good), env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["replicas"] == doc["replicas"]
    proc = project.run("target", "--from", "-", env=env, stdin=json.dumps(doc))
    assert proc.returncode == 0 and json.loads(proc.stdout)["connection_token"] == "[secret]"
    proc = project.run("target", "--from", "-", "--show-secrets", env=env, stdin=json.dumps(doc))
    assert proc.returncode == 0 and json.loads(proc.stdout)["connection_token"] == "t0k"
    redacted = tmp_path / "redacted.json"
    redacted.write_text(project.run("target", "--from", str(good), env=env).stdout)
    proc = project.run("target", "--from", str(redacted), env=env)  # a redacted copy is not a usable target
    assert proc.returncode == 1 and "connection_token redacted" in proc.stderr and "--show-secrets" in proc.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "endpoint": "no-port"}))
    proc = project.run("target", "--from", str(bad), env=env)
    assert proc.returncode == 1 and "endpoint" in proc.stderr and "host:port" in proc.stderr


def test_target_status_and_down_of_a_fleet_never_started(project: h.Project) -> None:
    project.local_stack("fresh", "shared-cli")
    target = project.run("target", "--stack", "fresh")
    assert target.returncode == 1 and "never been started" in target.stderr and "up --stack fresh" in target.stderr
    status = project.run("status", "--stack", "fresh")
    assert status.returncode == 1 and "never been started" in status.stderr
    down = project.run("down", "--stack", "fresh")
    assert down.returncode == 0 and "nothing to stop" in down.stdout
    unknown = project.run("up", "--stack", "nope")
    assert unknown.returncode == 1 and "no stack 'nope'" in unknown.stderr and "fresh" in unknown.stderr


def test_missing_cli_says_how_to_install_it(project: h.Project, tmp_path: Path) -> None:
    project.local_stack("nocli", "shared-cli")
    proc = project.run("up", "--stack", "nocli", env=h.fleet_env(COPILOT_CLI_PATH=str(tmp_path / "nope")))
    assert proc.returncode == 1
    assert "COPILOT_CLI_PATH" in proc.stderr and "bash scripts/setup.sh" in proc.stderr
    # Unset: the project (a temp dir) has no .tools/, and PATH has no copilot.
    env = h.fleet_env(COPILOT_CLI_PATH=None, PATH=str(tmp_path / "empty-bin"))
    proc = project.run("up", "--stack", "nocli", env=env)
    assert proc.returncode == 1
    assert f"Copilot CLI {CLI_VERSION} was not found" in proc.stderr and "bash scripts/setup.sh" in proc.stderr
    assert not project.paths("nocli").root.exists()


def test_wrong_cli_version_is_refused(project: h.Project, tmp_path: Path) -> None:
    project.local_stack("old", "shared-cli")
    fake = _fake_cli(tmp_path / "copilot", "1.0.99", "sleep 60")
    proc = project.run("up", "--stack", "old", env=h.fleet_env(COPILOT_CLI_PATH=str(fake)))
    assert proc.returncode == 1
    assert "1.0.99" in proc.stderr and f"pins exactly {CLI_VERSION}" in proc.stderr
    assert not project.paths("old").root.exists()


def test_missing_redis_and_haproxy_say_apt_get(project: h.Project, tmp_path: Path) -> None:
    project.local_stack("noapt", "shared-cli")
    env = h.fleet_env(COPILOT_FLEET_HAPROXY=str(tmp_path / "no-haproxy"),
                      COPILOT_FLEET_REDIS_SERVER=str(tmp_path / "no-redis"))
    proc = project.run("up", "--stack", "noapt", env=env)
    assert proc.returncode == 1
    assert "COPILOT_FLEET_HAPROXY" in proc.stderr and "COPILOT_FLEET_REDIS_SERVER" in proc.stderr
    assert "apt-get install -y redis-server haproxy" in proc.stderr
    # per-user needs neither: the same environment is fine for it (checked up to the ports, then started).
    project.local_stack("solo", "per-user", users=["carol"])
    try:
        proc = project.run("up", "--stack", "solo", env=env)
        assert proc.returncode == 0, proc.stderr
    finally:
        project.teardown("solo")


def test_a_server_that_never_answers_fails_up_and_leaves_nothing(project: h.Project, tmp_path: Path) -> None:
    project.local_stack("mute", "shared-cli", replicas=1)
    fake = _fake_cli(tmp_path / "copilot", CLI_VERSION, 'echo "pretending to be a server"; exec sleep 600')
    proc = project.run("up", "--stack", "mute", "--timeout", "4", env=h.fleet_env(COPILOT_CLI_PATH=str(fake)))
    assert proc.returncode == 1, proc.stdout
    assert "copilot-cli-0" in proc.stderr and "did not become ready within 4 s" in proc.stderr
    assert "pretending to be a server" in proc.stderr  # the tail of its log
    assert "stopped everything this command started" in proc.stderr
    paths = project.paths("mute")
    assert not paths.supervisor_record.exists() and not paths.target_file.exists()
    assert _processes_mentioning(str(project.dir)) == []
    assert _processes_mentioning(str(fake)) == []
    # What it did write is private, and `down --purge` clears it.
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    assert project.run("down", "--stack", "mute", "--purge").returncode == 0
    assert not paths.root.exists()


def test_a_server_that_keeps_crashing_fails_fast(project: h.Project, tmp_path: Path) -> None:
    project.local_stack("crash", "shared-cli", replicas=1)
    fake = _fake_cli(tmp_path / "copilot", CLI_VERSION, 'echo "boom: cannot start" >&2; exit 3')
    proc = project.run("up", "--stack", "crash", "--timeout", "60", env=h.fleet_env(COPILOT_CLI_PATH=str(fake)))
    assert proc.returncode == 1
    assert "copilot-cli-0" in proc.stderr and "supervisord gave up on it" in proc.stderr
    assert "boom: cannot start" in proc.stderr
    assert _processes_mentioning(str(project.dir)) == []
    project.teardown("crash")
