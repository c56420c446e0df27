"""A lease holder frozen mid-turn past its TTL, a second client taking over and writing, then the first thawed:
the store refuses the late writes (0 diverged histories); a shared directory cannot (the control diverges).

The round itself is faults/store_pause.py (the fault suite reports the same comparison over several rounds); here
one round per mode, with every outcome asserted. Each wait returns on its event (a JSON line from the frozen
application, a Redis keyspace notification for the lease's expiry); the bounds only limit how long a broken round
takes to fail.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from copilot_fleet.sessionstore.keys import StoreKeys
from faults.store_pause import PauseMode, World, paused_holder_round
from tests.helpers.store_processes import (
    BareCli,
    ProviderProcess,
    RedisServer,
    require_cli,
    start_bare_cli,
    start_provider,
)

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]


@dataclass
class Fleet:
    world: World
    store: PauseMode
    volume: PauseMode


@pytest.fixture(scope="module")
def fleet(workdir: Path, redis_server: RedisServer, model: Any) -> Iterator[Fleet]:
    require_cli()
    token = secrets.token_hex(16)
    shared = workdir / "shared-session-state"
    shared.mkdir()
    started: list[ProviderProcess | BareCli] = []
    try:
        p1 = start_provider(workdir, "p1", redis_server.url, token)
        started.append(p1)
        p2 = start_provider(workdir, "p2", redis_server.url, token)
        started.append(p2)
        b1 = start_bare_cli(workdir, "b1", shared, token)
        started.append(b1)
        b2 = start_bare_cli(workdir, "b2", shared, token)
        started.append(b2)
        keys = StoreKeys("shared")

        async def store_events(sid: str) -> bytes | None:
            client = aioredis.from_url(redis_server.url)
            try:
                value = await client.get(keys.content(sid, "events.jsonl"))
                return value.encode() if isinstance(value, str) else value
            finally:
                await client.aclose()

        async def volume_events(sid: str) -> bytes | None:
            path = shared / sid / "events.jsonl"
            return path.read_bytes() if path.exists() else None

        yield Fleet(World(redis_server.url, token, model), PauseMode("store", p1, p2, True, store_events),
                    PauseMode("volume", b1, b2, False, volume_events))
    finally:
        for process in reversed(started):
            process.stop()


async def test_a_thawed_holder_cannot_write_to_the_store(fleet: Fleet) -> None:
    outcome = await paused_holder_round(fleet.world, fleet.store)
    assert "remembered: cherry" in outcome.takeover_reply
    error = outcome.holder_error
    # The late write was attempted and refused, and the thawed application was told why.
    assert error is not None, outcome.holder
    assert f"fenced: session {outcome.session_id}: its lease holder attached it on server p2" in error
    assert next(i for i in outcome.holder if i["event"] == "lease")["lost"] is True
    assert outcome.history.coherent, outcome.history.describe()  # 0 diverged histories
    assert outcome.final_recall is not None and "apple" in outcome.final_recall and "cherry" in outcome.final_recall


async def test_the_same_freeze_on_a_shared_directory_diverges(fleet: Fleet) -> None:
    # The control: without fencing the thawed server appends its answer after the other server's turn. This is
    # what the store prevents, and it shows the history check sees a divergence when there is one.
    outcome = await paused_holder_round(fleet.world, fleet.volume)
    assert "remembered: cherry" in outcome.takeover_reply
    assert outcome.holder_replied, outcome.holder  # nothing told it to stop
    assert not outcome.history.coherent and outcome.history.forks > 0, outcome.history.describe()
