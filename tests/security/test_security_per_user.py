"""What Alice's tool run reaches in a local per-user fleet: nothing of Bob's (the probes of docs/security.md).

Each user has a CLI server of their own; Alice's session runs `run:` commands (a prompt-injected model) with every
tool call approved, and tries to read Bob's history, Bob's token and the fleet's secrets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h

pytestmark = pytest.mark.fleet
STACK = "sec-users"
USERS = ["alice", "bob"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("sec-per-user"))
    project.local_stack(STACK, "per-user", users=USERS)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def _server(project: h.Project, user: str) -> tuple[str, str]:
    target = project.target(STACK)
    token = target.token_for(user)
    assert token is not None
    return target.users[user], token


def _secrets(project: h.Project) -> dict[str, str]:
    values = project.target(STACK).secret_values()
    values.update({f"secrets/{f.name}": f.read_text().strip() for f in project.paths(STACK).secrets_dir.iterdir()})
    return values


def _roots(project: h.Project) -> list[Path]:
    """Where the fleet keeps anything, and alice's own home (so that the sweep always finds something)."""
    paths = project.paths(STACK)
    roots = [project.dir, paths.run_dir, paths.servers_dir.resolve(),
             paths.server_home("copilot-user-alice-0").resolve()]
    machine = Path("/var/lib/copilot-fleet")
    return [*roots, machine] if machine.exists() else roots


def test_each_users_tool_runs_run_as_a_user_of_their_own(project: h.Project) -> None:
    target = project.target(STACK)
    uids = {user: int(a.tool_run(*_server(project, user), target, "id -u").output.split()[0]) for user in USERS}
    assert 0 not in uids.values(), f"tool runs run as root: {uids}"
    assert uids["alice"] != uids["bob"], f"alice's and bob's tool runs share a Unix user: {uids}"


def test_alice_cannot_read_bobs_history(project: h.Project) -> None:
    target = project.target(STACK)
    word = f"bobsecret{os.getpid()}"
    sid = asyncio.run(_bob_remembers(project, word))
    bob_home = project.paths(STACK).server_home("copilot-user-bob-0").resolve()
    assert (bob_home / "session-state" / sid / "events.jsonl").is_file()

    run = a.tool_run(*_server(project, "alice"), target,
                     f"grep -r -l {word} {bob_home} {project.dir} 2>&1 | head -20; echo grep-done")
    assert "grep-done" in run.output
    assert "events.jsonl" not in run.output, f"alice's tool run found bob's history: {run.output!r}"
    command, _ = a.readable_files_sweep(_roots(project))
    readable = a.findings(a.tool_run(*_server(project, "alice"), target, command))
    of_bob = [str(p) for p in readable if p.is_relative_to(bob_home)]
    assert of_bob == [], f"alice's tool run can read bob's files: {of_bob[:10]}"


async def _bob_remembers(project: h.Project, word: str) -> str:
    address, token = _server(project, "bob")
    sid, _ = await h.create_session(address, token, project.target(STACK), f"remember: {word}")
    return sid


def test_alice_cannot_read_any_token_or_secret(project: h.Project) -> None:
    """Neither bob's token nor her own server's (from its process environment), nor any file with a secret."""
    target = project.target(STACK)
    environments = a.findings(a.tool_run(*_server(project, "alice"), target, a.environ_sweep()))
    assert environments, "the sweep read no environment at all (not even its own)"
    assert a.files_holding(environments, _secrets(project)) == {}
    command, _ = a.readable_files_sweep(_roots(project))
    readable = a.findings(a.tool_run(*_server(project, "alice"), target, command))
    assert readable, "the sweep found nothing at all: it did not run where expected"
    assert a.files_holding(readable, _secrets(project)) == {}
