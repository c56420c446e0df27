"""A per-user local fleet in store mode, attacked from a real tool run (the test model's `run:`) in alice's session,
and its janitor.

- The tool run finds no store credential: not in its environment, not in the provider's or the CLI's
  /proc/<pid>/environ or memory, not in any file it can read; Redis refuses it without a password (NOAUTH); and
  even with alice's own store password (as if it had leaked) it reaches none of bob's keys and cannot list keys.
- The janitor deletes a session idle past the TTL, never one whose lease a client holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import tests.helpers.attacker as a
import tests.helpers.local_fleet as h
import tests.helpers.store_fleet as sf
from copilot_fleet.client import FleetClient
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.keys import StoreKeys

pytestmark = pytest.mark.fleet
STACK = "store-users"
USERS = ["alice", "bob-smith"]
ALICE, BOB = "copilot-user-alice-0", "copilot-user-bob-smith-0"
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.Project]:
    if os.geteuid() != 0:
        pytest.skip("the fleet's servers run as users of their own only when `up` runs as root")
    project = h.Project.create(tmp_path_factory.mktemp("store-per-user"))
    project.local_stack(STACK, "per-user", users=USERS, sessionState=sf.STORE_MODE)
    try:
        project.run_ok("up", "--stack", STACK)
        yield project
    finally:
        project.teardown(STACK)


async def _remember(project: h.Project, user: str, word: str, purpose: str = "diary") -> str:
    async with FleetClient(project.target(STACK), user=user) as fleet:
        session = await fleet.create_session(purpose)
        await session.reply(f"remember: {word}", timeout=60)
        await session.close()
        return session.session_id


def _store_secrets(project: h.Project) -> dict[str, str]:
    paths = project.paths(STACK)
    values = project.target(STACK).secret_values()
    values.update({f.name: f.read_text().strip() for f in paths.secrets_dir.iterdir()})
    return values


def test_alices_tool_run_reaches_no_store_credential_and_none_of_bobs_keys(project: h.Project) -> None:
    paths = project.paths(STACK)
    target = project.target(STACK)
    bob_sid = asyncio.run(_remember(project, "bob-smith", f"bobsecret{os.getpid()}"))
    alice_provider = sf.provider_info(project, STACK, ALICE)
    bob_provider = sf.provider_info(project, STACK, BOB)
    bob_keys = StoreKeys("bob-smith")
    alice_password = paths.secret_file("store-password-alice").read_text().strip()
    plan = {
        "files": [str(paths.secret_file(n)) for n in ("store-password-alice", "store-password-bob-smith",
                                                       "redis-password")]
                 + [str(paths.config_dir / "janitor-redis-url"), str(paths.supervisord_conf), str(paths.redis_conf),
                    str(paths.target_file), str(paths.run_dir / f"{ALICE}.ready")]
                 + [f"/proc/{pid}/{entry}" for pid in (alice_provider["pid"], bob_provider["pid"])
                    for entry in ("environ", "mem")]
                 + [f"/proc/{alice_provider['cli_pid']}/environ", f"/proc/{alice_provider['cli_pid']}/mem"],
        "redis_port": urlsplit(target.redis_url.get_secret_value()).port if target.redis_url else 0,
        "foreign_keys": [bob_keys.content(bob_sid, "events.jsonl"), bob_keys.tree(bob_sid), bob_keys.index,
                         bob_keys.lease(bob_sid)],
        "own_user": "copilot-store-alice",
        "own_password": alice_password,  # as if it had leaked: the ACL must hold even then
    }
    work = paths.server_work_dir(ALICE)
    sf.copy_probe(work)
    sf.place_for_tool_run(work, {"plan.json": json.dumps(plan)}, work)
    output = sf.tool_run(target, "alice", 'python3 tool_run_probe.py "$(cat plan.json)" > report.json; echo probed')
    assert "probed" in output, output
    report = json.loads((work / "report.json").read_text())

    assert report["uid"] not in (0, os.getuid()), f"alice's tool run runs as uid {report['uid']}"
    assert report["env_credentials"] == [], f"store credentials in the tool run's environment: {report}"
    readable = {path: outcome for path, outcome in report["files"].items() if not outcome.startswith("refused")}
    assert readable == {}, f"alice's tool run read: {readable}"
    assert all(r.startswith("-NOAUTH") for r in report["anonymous"].values()), report["anonymous"]
    assert report["own_auth"] == "+OK", report["own_auth"]
    assert all(r.startswith("-NOPERM") for r in report["with_own_credentials"].values()), report
    assert report["list_keys"].startswith("-NOPERM") and report["scan_keys"].startswith("-NOPERM"), report

    # Every environment it can read, and every file under the fleet's directories it can read: no secret in any.
    secrets = _store_secrets(project)
    environs = a.findings(a.ToolRun(a.RAN + sf.tool_run(target, "alice", a.environ_sweep())))
    assert environs, "the sweep read no environment at all (not even its own)"
    leaked = a.files_holding(environs, secrets)
    assert leaked == {}, f"a secret in an environment alice's tool run can read: {leaked}"
    roots = [project.dir, paths.run_dir, paths.data_root]
    command, _ = a.readable_files_sweep(roots)
    files = a.findings(a.ToolRun(a.RAN + sf.tool_run(target, "alice", command)))
    leaked = a.files_holding(files, secrets)
    assert leaked == {}, f"a secret in a file alice's tool run can read: {leaked}"


def _age(project: h.Project, scope: str, sids: list[str], days: int) -> None:
    """Make sessions look idle for `days` (their index score and modified time), as the admin can."""
    keys = StoreKeys(scope)

    async def age(client: Any) -> None:
        now_ms = int((await client.time())[0]) * 1000
        for sid in sids:
            await client.zadd(keys.index, {sid: now_ms - days * DAY_MS})
            await client.hset(keys.meta(sid), "modified", now_ms - days * DAY_MS)

    sf.store(project.target(STACK), age)


def _janitor(project: h.Project) -> str:
    paths = project.paths(STACK)
    url_file = str(paths.config_dir / "janitor-redis-url")
    proc = subprocess.run([sys.executable, "-m", "copilot_fleet.pod.janitor", "--ttl", "1h", "--store-scope", "alice",
                           "--store-scope", "bob-smith", "--redis-url-file", url_file, "--verbose"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_janitor_never_deletes_a_leased_session(project: h.Project) -> None:
    target = project.target(STACK)
    held = asyncio.run(_remember(project, "alice", "kept", "held"))
    idle = asyncio.run(_remember(project, "alice", "gone", "idle"))
    _age(project, "alice", [held, idle], days=30)

    async def hold_and_sweep() -> str:
        assert target.redis_url is not None
        leases = LeaseManager.from_url(target.redis_url.get_secret_value())
        lease = await leases.acquire(held)
        try:
            return await asyncio.to_thread(_janitor, project)
        finally:
            await lease.release()
            await leases.aclose()

    report = asyncio.run(hold_and_sweep())
    left = sf.stored_ids(target, "alice")
    assert held in left, f"the janitor deleted a leased session:\n{report}"
    assert idle not in left, f"the janitor kept an idle, unleased session:\n{report}"
    assert f"skipped      session {held}" in report, report

    # Released, the same session goes at the next run: the lease, not its age, was what kept it.
    _janitor(project)
    assert held not in sf.stored_ids(target, "alice")
