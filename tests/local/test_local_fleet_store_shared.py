"""A shared-cli local fleet in store mode: the walk-through across two servers that share no directory, the
operator's commands on the store, and a tool run that tries to reach the store's credential.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h
import tests.helpers.store_fleet as sf
from copilot_fleet.client import FleetClient, SessionNotFound
from copilot_fleet.sessionstore.server import NO_LOCAL_STATE

pytestmark = pytest.mark.fleet
STACK = "store-shared"
SERVERS = ["copilot-cli-0", "copilot-cli-1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    project = h.Project.create(tmp_path_factory.mktemp("store-shared"))
    project.local_stack(STACK, "shared-cli", replicas=2, sessionState=sf.STORE_MODE)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


def _pinned(project: h.Project, index: int, user: str) -> FleetClient:
    target = project.target(STACK)
    return FleetClient(target.model_copy(update={"replicas": [target.replicas[index]], "endpoint": None}), user=user)


def _files_holding(root: Path, word: bytes) -> list[str]:
    """Every file under `root` (links not followed) whose content holds `word`."""
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            try:
                if not path.is_symlink() and word in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_walk_through_across_two_servers_that_share_no_directory(project: h.Project) -> None:
    """Create on one server, resume with its history on the other, list, delete: the seeds' walk-through, with the
    session's state in the store only."""
    paths = project.paths(STACK)
    word = f"zebra{os.getpid()}"

    async def create_and_resume() -> tuple[str, str | None, str, list[str]]:
        first, second = _pinned(project, 0, "alice"), _pinned(project, 1, "alice")
        try:
            session = await first.create_session("walk")
            await session.reply(f"remember: {word}", timeout=60)
            await session.close()
            resumed = await second.resume_session(session.session_id)
            recalled = await resumed.reply("recall: which words?", timeout=60)
            address = resumed.address
            await resumed.close()
            listed = [m.session_id for m in await second.list_sessions()]
            return session.session_id, recalled, address, listed
        finally:
            await first.aclose()
            await second.aclose()

    sid, recalled, address, listed = asyncio.run(create_and_resume())
    target = project.target(STACK)
    assert address == target.replicas[1]
    assert recalled is not None and word in recalled, f"the second server did not get the history: {recalled!r}"
    assert listed == [sid]

    # No shared directory, and nothing of the session on either server's disk: each one's session-state/ is the
    # provider's dangling link, and the word is in no file of any server (homes, working dirs, telemetry).
    homes = [paths.server_home(name).resolve() for name in SERVERS]
    assert len(set(homes)) == 2
    for home in homes:
        assert (home / "session-state").is_symlink() and Path(os.readlink(home / "session-state")) == NO_LOCAL_STATE
    assert not paths.shared_session_state.exists()
    on_servers = [p for d in (paths.servers_dir, paths.work_dir, paths.otel_dir)
                  for p in _files_holding(d.resolve(), word.encode())]
    assert on_servers == [], "the session's words are on a server's disk"  # (Redis' own files hold them, rightly)
    assert sid in sf.stored_ids(target, "shared")

    # The operator's view and delete work on the store (the CLI lists nothing for these sessions).
    listing = json.loads(project.run_ok("sessions", "list", "--stack", STACK, "--json").stdout)
    assert [(r["session_id"], r["owner"]) for r in listing] == [(sid, "alice")], listing
    deleted = project.run_ok("sessions", "delete", "--stack", STACK, sid)
    assert "deleted 1" in deleted.stdout, deleted.stdout
    assert sf.stored_ids(target, "shared") == set()

    async def resume_gone() -> None:
        async with _pinned(project, 0, "alice") as fleet:
            await fleet.resume_session(sid)

    with pytest.raises(SessionNotFound):
        asyncio.run(resume_gone())


def test_a_tool_run_reaches_no_store_credential(project: h.Project) -> None:
    """Replica 0's tool run against both providers (root's) and both CLIs (its own user's, sealed)."""
    paths = project.paths(STACK)
    target = project.target(STACK)
    infos = [sf.provider_info(project, STACK, name) for name in SERVERS]
    entries = [f"/proc/{info[key]}/{entry}" for info in infos for key in ("pid", "cli_pid")
               for entry in ("environ", "mem")]
    command = "; ".join(f"head -c 1 {p} >/dev/null 2>&1 && echo READ {p} || echo refused {p}" for p in entries)
    output = sf.tool_run(target, "alice", command, address=target.replicas[0])
    assert output.count("refused") == len(entries), f"the tool run read: {output}"

    secrets = project.target(STACK).secret_values()
    secrets.update({f.name: f.read_text().strip() for f in paths.secrets_dir.iterdir()})
    environs = a.findings(a.ToolRun(a.RAN + sf.tool_run(target, "alice", a.environ_sweep(),
                                                         address=target.replicas[0])))
    assert environs, "the sweep read no environment at all (not even its own)"
    assert a.files_holding(environs, secrets) == {}
