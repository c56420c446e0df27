"""What a tool run and a connection-token holder reach in a local shared-cli fleet (the probes of docs/security.md).

A prompt-injected model is the test model's `run:`; the application approves every tool call (the worst case an
application can choose). Each probe asserts the safe behaviour, or, where the operating system cannot separate
users inside one CLI server, the exposure docs/security.md lists (so that the document changes if it changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h
from copilot_fleet.pod import procfs

pytestmark = pytest.mark.fleet
STACK = "sec-cli"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("sec-shared-cli"))
    project.local_stack(STACK, "shared-cli", replicas=2)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def _secrets(project: h.Project) -> dict[str, str]:
    """Every secret of the fleet: the target's and the generated files'."""
    values = project.target(STACK).secret_values()
    secrets_dir = project.paths(STACK).secrets_dir
    values.update({f"secrets/{f.name}": f.read_text().strip() for f in secrets_dir.iterdir()})
    return values


def _sweep_roots(project: h.Project) -> list[Path]:
    """Where the fleet keeps anything: the project (state dir included), the sockets, the machine-wide dir."""
    paths = project.paths(STACK)
    roots = [project.dir, paths.run_dir, *{p.resolve() for p in (paths.servers_dir, paths.shared_session_state)}]
    machine = Path("/var/lib/copilot-fleet")
    return [*roots, machine] if machine.exists() else roots


def _endpoint(project: h.Project) -> tuple[str, str]:
    target = project.target(STACK)
    token = target.token_for()
    assert token is not None
    return h.endpoint(target), token


def test_a_tool_run_does_not_run_as_root(project: h.Project) -> None:
    address, token = _endpoint(project)
    run = a.tool_run(address, token, project.target(STACK), "id -u; id -un")
    uid = int(run.output.split()[0])
    assert uid != 0, f"a session's tool run runs as root: {run.output!r}"


def test_a_tool_run_cannot_read_the_connection_token_from_the_cli(project: h.Project) -> None:
    """Every process's environment the tool run can read, searched for every secret of the fleet."""
    address, token = _endpoint(project)
    run = a.tool_run(address, token, project.target(STACK), a.environ_sweep())
    environments = a.findings(run)
    assert environments, "the sweep read no environment at all (not even its own)"
    leaks = a.files_holding(environments, _secrets(project))
    assert leaks == {}, f"a tool run read secrets from process environments: {leaks}"


def test_a_tool_run_cannot_read_the_fleets_secrets(project: h.Project) -> None:
    """Every file the tool run can read under the project, the state directory and the fleet's other
    directories, searched (as root) for every secret of the fleet: the Redis password, the connection token, the
    model key, the target."""
    address, token = _endpoint(project)
    command, _ = a.readable_files_sweep(_sweep_roots(project))
    readable = a.findings(a.tool_run(address, token, project.target(STACK), command))
    assert readable, "the sweep found nothing at all: it did not run where expected"
    leaks = a.files_holding(readable, _secrets(project))
    assert leaks == {}, f"a tool run can read secrets: {leaks}"


def test_listed_exposure_a_tool_run_reads_every_session_of_the_shared_volume(project: h.Project) -> None:
    """docs/security.md, shared-cli: inside one CLI server the OS cannot tell Alice's tool run from Bob's, and
    every replica mounts the one session volume. Bob's history is readable by Alice's tool run."""
    target = project.target(STACK)
    address, token = _endpoint(project)
    word = f"bobword{os.getpid()}"
    sid = asyncio.run(_keep_session(address, token, target, f"remember: {word}"))
    try:
        state = project.paths(STACK).shared_session_state.resolve()
        run = a.tool_run(address, token, target, f"grep -l -r {word} {state} 2>/dev/null; echo grep-done")
        assert f"{sid}/events.jsonl" in run.output, run.output
    finally:
        h.run(h.delete_session(address, token, sid))


async def _keep_session(address: str, token: str | None, target: object, prompt: str) -> str:
    """A session with one turn, left on disk (the caller deletes it)."""
    sid, _ = await h.create_session(address, token, target, prompt)  # type: ignore[arg-type]
    return sid


def test_listed_exposure_a_tool_run_can_kill_its_own_server_which_comes_back(project: h.Project) -> None:
    """docs/security.md: a tool run runs as its CLI server's user, so it can signal that server (and only the
    servers of that user). supervisord restarts it; the turn that did it is lost."""
    from copilot_fleet.local.supervisor import Supervisor

    target = project.target(STACK)
    replica = target.replicas[0]
    supervisor = Supervisor(project.paths(STACK))
    before = supervisor.processes()["copilot-cli-0"]["pid"]
    with pytest.raises(Exception):  # noqa: B017 - the server dies mid-turn: whatever the SDK raises for that
        # (CLI 1.0.102 refuses `kill $PPID` itself: "must specify at least one numeric PID"; a program is not parsed)
        a.tool_run(replica, target.token_for(), target, "python3 -c 'import os, signal; os.kill(os.getppid(), "
                   "signal.SIGKILL)'", timeout=15)
    after = h.wait_for(lambda: (p := supervisor.processes()["copilot-cli-0"])["statename"] == "RUNNING"
                       and p["pid"] != before and p["pid"], 60, "copilot-cli-0 restarted by supervisord")
    assert not procfs.is_alive(before) and procfs.is_alive(after)
    h.wait_for(lambda: project.status(STACK)["healthy"], 60, "fleet healthy again")


def test_sigusr1_from_a_tool_run_cannot_open_the_clis_debugger(project: h.Project) -> None:
    """copilot_fleet/pod/inspector_guard.py: a tool run signals its own server (same user) with SIGUSR1, on which
    Node opens an unauthenticated debugger on 127.0.0.1:9229 (the control, without the guard:
    test_security_inspector.py). The fleet's guard holds that port: the CLI says its inspector could not start,
    what answers there is no debugger, and the server serves on."""
    target = project.target(STACK)
    replica = target.replicas[0]
    log = project.paths(STACK).log_file("copilot-cli-0")
    refused = "Starting inspector on 127.0.0.1:9229 failed: address already in use"
    before = log.read_text().count(refused)
    # One line (the test model's `run:` takes one); the CLI is the direct parent of a one-command tool run.
    probe = ('python3 -c "import os, signal, time, urllib.request as u, concurrent.futures as c; '
             'os.kill(os.getppid(), signal.SIGUSR1); time.sleep(1); '
             "got = c.ThreadPoolExecutor(1).submit(lambda: u.urlopen('http://127.0.0.1:9229/json/list', "
             "timeout=5).read()[:200]); "
             "print('no debugger:', type(got.exception()).__name__) if got.exception() else print(got.result())\"")
    run = a.tool_run(replica, target.token_for(), target, probe)
    assert "no debugger:" in run.output and "webSocketDebuggerUrl" not in run.output, run.output
    h.wait_for(lambda: log.read_text().count(refused) > before, 30, "the CLI's log saying its inspector failed")
    assert "Debugger listening" not in log.read_text()
    assert "you said" in a.say_with(replica, target.token_for(), target, "hello")  # it serves on


def test_a_stopped_inspector_guard_is_reported_and_up_starts_it_again(project: h.Project) -> None:
    from copilot_fleet.local.supervisor import Supervisor

    supervisor = Supervisor(project.paths(STACK))
    supervisor.stop_process("inspector-guard")
    try:
        status = project.run("status", "--stack", STACK)
        assert status.returncode == 1 and "UNHEALTHY: inspector-guard (127.0.0.1:9229 is not held by root" in \
            status.stdout, status.stdout
        assert project.status(STACK)["inspector_guarded"] is False
    finally:
        up = project.run_ok("up", "--stack", STACK)
    assert "start  inspector-guard (was STOPPED)" in up.stdout, up.stdout
    assert project.status(STACK)["inspector_guarded"] is True and project.status(STACK)["healthy"]


def test_the_token_alone_starts_mcp_commands_only_as_the_cli_user(project: h.Project) -> None:
    """docs/security.md: the connection token is a command-execution credential. CLI 1.0.102 starts the command
    of a client-sent `mcp_servers` entry after the session's first turn, and no server setting refuses it. What
    copilot-fleet controls is whom it runs as: the CLI's unprivileged user, which cannot read the fleet's
    secrets."""
    target = project.target(STACK)
    address, token = _endpoint(project)
    paths = project.paths(STACK)
    marker = f"mcp-probe-{os.getpid()}.txt"
    script = (f"{{ id -u; cat {paths.secrets_dir}/* {paths.target_file} {paths.config_dir}/* 2>&1; }} "
              f"> \"$(pwd -P)/{marker}\"")
    mcp = {"probe": {"type": "local", "command": "sh", "args": ["-c", script], "tools": ["*"]}}
    reply = a.say_with(address, token, target, "hello", mcp_servers=mcp)
    assert "you said" in reply
    work = paths.work_dir.resolve()
    found = h.wait_for(lambda: [p for p in work.rglob(marker) if p.stat().st_size], 30,
                       "the MCP command wrote its marker (it ran on the host)")
    output = found[0].read_text()
    uid = int(output.split()[0])
    assert uid != 0, "the MCP command of a raw token holder ran as root"
    leaked = [name for name, value in _secrets(project).items() if value in output]
    assert leaked == [], f"the MCP command read {leaked}"


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None)


def test_a_killed_verify_leaves_no_secret_behind(project: h.Project, tmp_path: Path) -> None:
    """SIGKILL `verify` mid-run: no file holding a secret may remain in its temp directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    env = h.fleet_env(TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(project.dir), "verify",
                             "--stack", STACK], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    child_session: list[int] = []
    try:
        seen = []
        for line in proc.stdout:  # the first check result: the smoke tests are running against the target
            seen.append(line)
            if line.startswith(("  PASS", "  FAIL", "  SKIP")):
                break
        assert seen and seen[-1].startswith(("  PASS", "  FAIL", "  SKIP")), f"verify ran no check: {seen}"
        # The smoke tests' child pytest (`-p copilot_fleet.verify`) of THIS verify, in a session of its own: never
        # another verify on the machine (a parallel test run's, a user's), which a match on the name alone would kill.
        child_session = [p for p in procfs.all_pids()
                         if "copilot_fleet.verify" in (procfs.cmdline(p) or []) and _parent(p) == proc.pid]
        assert child_session, "verify's child pytest was not found among its children"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in child_session:  # the smoke tests' child pytest, orphaned by the kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    h.wait_for(lambda: not any(procfs.is_alive(p) for p in child_session), 30, "the orphaned smoke tests ended")
    secrets = _secrets(project)
    leftovers = {str(p): [n for n, v in secrets.items() if v.encode() in p.read_bytes()]
                 for p in tmp.rglob("*") if p.is_file()}
    assert {p: names for p, names in leftovers.items() if names} == {}


def test_cli_per_start_logs_are_bounded(project: h.Project) -> None:
    """Each start of a CLI server writes a new `logs/process-<time>-<pid>.log` in its COPILOT_HOME; restarts
    must not pile them up."""
    from copilot_fleet.local.supervisor import Supervisor

    paths = project.paths(STACK)
    logs = paths.server_home("copilot-cli-1") / "logs"
    supervisor = Supervisor(paths)
    for _ in range(6):
        before = supervisor.processes()["copilot-cli-1"]["pid"]
        supervisor.restart_process("copilot-cli-1")
        def restarted(b: int = before) -> bool:
            p = supervisor.processes()["copilot-cli-1"]
            return bool(p["statename"] == "RUNNING" and p["pid"] != b)

        h.wait_for(restarted, 60, "copilot-cli-1 restarted")
    h.wait_for(lambda: project.status(STACK)["healthy"], 60, "fleet healthy again")
    project.run_ok("up", "--stack", STACK)  # a running fleet: changes nothing, tidies the servers' logs
    kept = sorted(p.name for p in logs.glob("process-*.log"))
    assert 1 <= len(kept) <= 5, f"{len(kept)} per-start logs kept in {logs}: {kept}"
