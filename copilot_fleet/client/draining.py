"""Which replicas are draining: a mark in the lease store that the fleet client routes around.

A drain takes a server out of HAProxy and out of the target file, but a client that loaded the target earlier
still ranks the server first for its users and would open new sessions there until it stops. So the drain also
writes `copilot-fleet:draining:<address>` into the fleet's Redis (the lease store every shared-state fleet has),
and the fleet client, before each attach, moves the marked addresses to the end of the route: they are tried only
when nothing else answers. One MGET per attach (a loopback round trip, well under a millisecond).

The mark is a routing hint, not a guarantee, so a Redis failure while reading it fails open (routes as if nothing
were draining, with a warning): writers are still kept apart by the leases, which fail closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

logger = logging.getLogger(__name__)

DRAINING_KEY_PREFIX = "copilot-fleet:draining:"


def draining_key(address: str) -> str:
    return DRAINING_KEY_PREFIX + address


class DrainingReplicas:
    """Reads the draining marks (the fleet client's side)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def among(self, addresses: Sequence[str]) -> set[str]:
        """The addresses that carry a draining mark (empty if Redis cannot be read)."""
        if not addresses:
            return set()
        try:
            values = await self.redis.mget([draining_key(a) for a in addresses])
        except redis.exceptions.RedisError as exc:
            logger.warning("could not read the draining marks (%s); routing as if no replica were draining", exc)
            return set()
        return {address for address, value in zip(addresses, values, strict=True) if value is not None}


def mark_draining(redis_url: str, address: str, server: str, *, timeout: float = 2.0) -> None:
    """Set the mark (the operator's side: a drain). Raises redis.exceptions.RedisError if Redis fails."""
    with redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout) as client:
        client.set(draining_key(address), server)


def clear_draining(redis_url: str, address: str, *, timeout: float = 2.0) -> None:
    """Remove the mark (an undrain, or `up` starting the server again)."""
    with redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout) as client:
        client.delete(draining_key(address))
