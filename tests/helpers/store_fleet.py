"""Helpers for the tests of local fleets in store mode (fleet:sessionState.mode store): a stack in store mode, what
a store-mode server's provider registered, real tool runs through a leased session, and the fleet's store as its
admin sees it.

A tool run in store mode needs a leased session bound to its server (the store writes nothing else), so unlike
tests/helpers/attacker.py's raw sessions, it goes through the fleet client, with every tool call approved (what an
application that trusts its model does).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

import tests.helpers.local_fleet as h
from copilot_fleet.sessionstore import admin
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.target import Target
from tests.helpers.attacker import RAN

STORE_MODE = {"mode": "store"}  # fleet:sessionState of a stack in store mode
PROBE = Path(__file__).resolve().parents[1] / "sessionstore" / "tool_run_probe.py"


def provider_info(project: h.Project, stack: str, server: str) -> dict[str, Any]:
    """The ready file a server's provider wrote once registered: its pid, its CLI's pid and port."""
    info: dict[str, Any] = json.loads((project.paths(stack).run_dir / f"{server}.ready").read_text())
    return info


async def _tool_run(target: Target, user: str, command: str, address: str | None) -> str:
    from copilot_fleet.client import FleetClient, approve_all

    pinned = target if address is None else target.model_copy(update={"replicas": [address], "endpoint": None})
    async with FleetClient(pinned, user=user, on_permission_request=approve_all) as fleet:
        session = await fleet.create_session("probe")
        try:
            reply = await session.reply(f"run: {command}", timeout=90) or ""
        finally:
            await session.close()
            await fleet.delete_session(session.session_id)
    assert reply.startswith(RAN), f"the tool did not run: {reply!r}"
    return reply[len(RAN):]


def tool_run(target: Target, user: str, command: str, address: str | None = None) -> str:
    """Run `command` as a real tool run in a session of `user` (on `address`, a replica); returns its output."""
    return asyncio.run(_tool_run(target, user, command, address))


def place_for_tool_run(work_dir: Path, files: dict[str, str], owner_of: Path) -> None:
    """Put files into a server's working directory (root writes; the server's user owns them), for a tool run."""
    st = owner_of.stat()
    for name, text in files.items():
        path = work_dir / name
        path.write_text(text)
        os.chown(path, st.st_uid, st.st_gid)


def copy_probe(work_dir: Path) -> None:
    shutil.copy(PROBE, work_dir / PROBE.name)
    st = work_dir.stat()
    os.chown(work_dir / PROBE.name, st.st_uid, st.st_gid)


async def _store_call(target: Target, call: Any) -> Any:
    assert target.redis_url is not None
    client = aioredis.from_url(target.redis_url.get_secret_value())
    try:
        return await call(client)
    finally:
        await client.aclose()


def store(target: Target, call: Any) -> Any:
    """`call(admin_redis_client)` against the fleet's store, with its admin credential."""
    return asyncio.run(_store_call(target, call))


def stored_ids(target: Target, scope: str) -> set[str]:
    async def listing(client: aioredis.Redis) -> set[str]:
        return {row.session_id for row in await admin.list_sessions(client, StoreKeys(scope))}

    result: set[str] = store(target, listing)
    return result
