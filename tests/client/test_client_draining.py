"""Draining marks in a real redis-server: set by the operator's drain, read by the fleet client, fail open."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio as aioredis

from copilot_fleet.client.draining import DrainingReplicas, clear_draining, mark_draining

if TYPE_CHECKING:
    from tests.helpers.processes import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]  # starts redis-server

A, B, C = "127.0.0.1:4401", "127.0.0.1:4402", "127.0.0.1:4403"


async def test_marks_round_trip(redis_server: RedisServer) -> None:
    url = redis_server.url
    mark_draining(url, B, "copilot-cli-1")
    async with aioredis.from_url(url) as client:
        marks = DrainingReplicas(client)
        assert await marks.among([A, B, C]) == {B}
        assert await marks.among([]) == set()
        clear_draining(url, B)
        assert await marks.among([A, B, C]) == set()


async def test_an_unreachable_redis_routes_as_if_nothing_drained(redis_server: RedisServer) -> None:
    """A routing hint only: reading it never blocks an attach (the lease, which fails closed, still decides)."""
    async with aioredis.from_url(redis_server.url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
        marks = DrainingReplicas(client)
        redis_server.kill()
        assert await marks.among([A, B]) == set()


def test_marking_without_redis_raises_for_the_operator(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.kill()
    with pytest.raises(redis.exceptions.ConnectionError):
        mark_draining(url, A, "copilot-cli-0", timeout=0.5)
