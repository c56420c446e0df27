"""Which CLI server a user's sessions go to: a stable replica per user, with a failover order.

Rendezvous (highest-random-weight) hashing: every replica gets a score `blake2b(replica, key)` and the key goes to
the highest. Removing a replica moves only the keys that were on it (each to its own next-best replica); adding
one takes only the keys it now wins. The hash is blake2b, not Python's `hash()`, which is salted per process and
would send a user to a different replica from every process.

Sticky routing matters even with shared storage: a session stays resident in the CLI that last attached it, so
sending a user back to the same replica keeps that replica's view of the session fresh and its caches warm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from copilot_fleet.target import Target

from .errors import NoRoute


def _score(address: str, key: str) -> int:
    digest = hashlib.blake2b(digest_size=8, person=b"copilot-fleet")
    # Length-prefix the parts so ("a:1", "2x") and ("a:12", "x") never hash the same input.
    digest.update(f"{len(address)}:{address}|{len(key)}:{key}".encode())
    return int.from_bytes(digest.digest(), "big")


def rank_replicas(key: str, replicas: Sequence[str]) -> list[str]:
    """All replicas, best first for `key` (ties broken by address, so the order is total and stable)."""
    unique = dict.fromkeys(replicas)
    return sorted(unique, key=lambda address: (-_score(address, key), address))


@dataclass(frozen=True)
class Route:
    """Where to send a request: try `addresses` in order; `token` authenticates to each of them."""

    key: str
    addresses: tuple[str, ...]
    token: str | None

    @property
    def primary(self) -> str:
        return self.addresses[0]

    @property
    def failover(self) -> tuple[str, ...]:
        return self.addresses[1:]

    def avoiding(self, draining: set[str]) -> Route:
        """The same route with `draining` addresses moved last (kept: better a draining server than none)."""
        if not draining.intersection(self.addresses):
            return self
        ordered = [a for a in self.addresses if a not in draining] + [a for a in self.addresses if a in draining]
        return Route(key=self.key, addresses=tuple(ordered), token=self.token)


class Router:
    """Routes keys (users, or shared sessions) over one target's servers."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def route(self, user: str, key: str | None = None) -> Route:
        """The route for `user`'s request; `key` (default: the user) picks the replica in pooled fleets.

        - per-user: the user's own server (`target.users[user]`), with their own token; nothing else.
        - replicas: all replicas ranked for `key`, then the load-balanced endpoint as a last resort.
        - endpoint only: the endpoint.
        """
        target = self.target
        if target.isolation == "per-user":
            address = target.users.get(user)
            if address is None:
                raise NoRoute(
                    f"this per-user fleet ({target.stack!r}) has no CLI server for user {user!r}; "
                    "add the user to the stack config and redeploy"
                )
            return Route(key=user, addresses=(address,), token=target.token_for(user))
        addresses = rank_replicas(key or user, target.replicas)
        if target.endpoint is not None and target.endpoint not in addresses:
            addresses.append(target.endpoint)
        if not addresses:
            raise NoRoute(f"target {target.stack!r} lists neither replicas nor an endpoint")
        return Route(key=key or user, addresses=tuple(addresses), token=target.token_for(None))
