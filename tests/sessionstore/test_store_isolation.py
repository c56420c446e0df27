"""Per-user isolation on one machine: a tool run in alice's CLI cannot reach bob's history.

Alice's server runs in `per-user` store mode: scope `alice`, its own Redis ACL user, its CLI as another OS user
(`--cli-user nobody`). Bob's history, bob's credentials and the fleet's admin credentials sit on the same machine
and in the same Redis. A process started as the CLI's user with the CLI's exact environment (what a shell tool
the CLI runs gets) tries every way in: its environment, the credential files, the provider's /proc entries, Redis
without a password, and Redis with alice's own store password (as if it had leaked).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from copilot import PermissionHandler

from copilot_fleet.client.ids import new_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.nodelay import cli_client
from copilot_fleet.sessionstore.acl import acl_user_name, ensure_scope_user
from copilot_fleet.sessionstore.fencing import ServerIdentity, ServerRegistration, bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from tests.helpers.store_processes import CLI_BINARY, CLI_CACHE, RedisServer, require_cli, start_provider

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]
NOBODY = 65534
PROBE = Path(__file__).with_name("tool_run_probe.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # the project's interpreter may sit where another user cannot run it


@pytest.fixture
def machine() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("running the CLI as another user needs root")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing (it runs the probe as the CLI's user)")
    require_cli()
    for needed in (CLI_BINARY, CLI_CACHE):
        reachable = subprocess.run(["test", "-r", str(needed)], user=NOBODY, group=NOBODY, extra_groups=[])
        if reachable.returncode != 0:
            pytest.skip(f"{needed} is not readable by uid {NOBODY}, who runs the CLI here: the project must sit "
                        "in a directory other users can traverse")
    base = Path(tempfile.mkdtemp(prefix="store-isolation-"))
    base.chmod(0o755)  # the CLI's user must reach its home and working directory below
    shutil.copy(PROBE, base / PROBE.name)  # where the CLI's user can read it, wherever the project sits
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def secret_file(directory: Path, name: str, value: str) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


async def test_a_tool_run_in_alices_cli_cannot_reach_bobs_history(machine: Path, redis_server: RedisServer,
                                                                   model: Any) -> None:
    admin = aioredis.from_url(redis_server.url)
    alice, bob = StoreKeys("alice"), StoreKeys("bob")
    passwords = {"alice": secrets.token_hex(16), "bob": secrets.token_hex(16)}
    for keys in (alice, bob):
        await ensure_scope_user(admin, keys, passwords[keys.scope])
    vault = machine / "secrets"
    files = {
        "alice": secret_file(vault, "alice.url", redis_server.url_for(acl_user_name("alice"), passwords["alice"])),
        "bob": secret_file(vault, "bob.url", redis_server.url_for(acl_user_name("bob"), passwords["bob"])),
        "fleet admin": secret_file(vault, "admin.url", redis_server.url),
    }
    token = secrets.token_hex(16)
    server = start_provider(machine, "alice-cli", "", token, scope="alice",
                            args=("--cli-user", "nobody", "--redis-url-file", str(files["alice"])))
    bob_client = aioredis.from_url(files["bob"].read_text().strip())
    sdk = cli_client(server.address, token)
    try:
        # Alice works normally on her server; bob's server has written his history to the store.
        sid = new_session_id("alice", "iso")
        async with LeaseManager(admin, ttl=30).hold(sid) as lease:
            await bind_lease(admin, alice, sid, lease.token, "alice-cli")
            await sdk.start()
            session = await sdk.create_session(session_id=sid, name="iso", provider=model.provider(),
                                               model="copilot-fleet-test",
                                               on_permission_request=PermissionHandler.approve_all)
            reply = await session.send_and_wait("remember: almond")
            assert reply is not None and "remembered: almond" in str(getattr(reply.data, "content", None))
            await session.disconnect()
        bob_sid = new_session_id("bob", "iso")
        async with LeaseManager(admin, ttl=30).hold(bob_sid) as lease:
            await bind_lease(admin, bob, bob_sid, lease.token, "bob-cli")
            identity = ServerIdentity("bob-cli")
            registration = ServerRegistration(bob_client, bob, identity)
            await registration.take()
            await RedisSessionStore(bob_client, bob, writer=identity).append_file(
                bob_sid, "events.jsonl", '{"secret":"bob history"}\n')
            await registration.release()

        # The CLI runs as nobody; a tool it runs gets that user and the CLI's environment.
        status = Path(f"/proc/{server.cli_pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t{NOBODY}" in status
        cli_env = dict(
            entry.split("=", 1)
            for entry in Path(f"/proc/{server.cli_pid}/environ").read_bytes().decode().split("\0") if "=" in entry
        )
        plan = {
            "files": [str(p) for p in files.values()] + [f"/proc/{server.proc.pid}/environ",
                                                         f"/proc/{server.proc.pid}/mem"],
            "redis_port": redis_server.port,
            "foreign_keys": [bob.content(bob_sid, "events.jsonl"), bob.tree(bob_sid), bob.index],
            "own_user": acl_user_name("alice"),
            "own_password": passwords["alice"],
        }
        probe = subprocess.run([SYSTEM_PYTHON, str(machine / PROBE.name), json.dumps(plan)], env=cli_env, user=NOBODY,
                               group=NOBODY, extra_groups=[], cwd=machine, capture_output=True, text=True,
                               timeout=60)
        assert probe.returncode == 0, probe.stderr
        report = json.loads(probe.stdout)
        assert report["uid"] == NOBODY
        assert report["env_credentials"] == [], "store credentials reached the CLI's environment"
        for path, outcome in report["files"].items():
            assert outcome == "refused: PermissionError", (path, outcome)
        for key, outcome in report["anonymous"].items():
            assert outcome.startswith("-NOAUTH"), (key, outcome)
        assert report["own_auth"] == "+OK"
        for key, outcome in report["with_own_credentials"].items():
            assert outcome.startswith("-NOPERM"), (key, outcome)
        assert report["list_keys"].startswith("-NOPERM") and report["scan_keys"].startswith("-NOPERM")
        assert (await admin.get(bob.content(bob_sid, "events.jsonl"))) == b'{"secret":"bob history"}\n'
    finally:
        await sdk.force_stop()
        server.stop()
        for keys in (alice, bob):
            await admin.execute_command("ACL", "DELUSER", acl_user_name(keys.scope))
        await bob_client.aclose()
        await admin.aclose()
