"""A Redis lease per session: one client (and so one CLI) attaches a session at a time.

Two CLI servers that share `session-state/` will happily attach the same session together and append to one
`events.jsonl` until the histories diverge; nothing in the CLI locks across processes. The lease is that lock.

- acquire: `SET key token NX PX ttl` with a random token only this holder knows;
- renew:   a Lua script that extends the TTL only while the key still holds our token;
- release: a Lua script that deletes the key only while it still holds our token (never get-then-delete: between
  the GET and the DEL the lease can expire and be taken by someone else, whose lease we would then delete);
- a background renewer (every ttl/3) keeps the lease while a long turn runs; if the key vanished or holds another
  token, or Redis stayed unreachable until our lease must have expired, the lease is marked lost and `check()`
  raises LeaseLost so the caller stops writing;
- Redis unreachable or refusing us fails closed: LeaseUnavailable, no lease, no attach.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import LeaseLost, LeaseUnavailable, SessionInUse
from .ids import validate_session_id

logger = logging.getLogger(__name__)

LEASE_KEY_PREFIX = "copilot-fleet:lease:"
DEFAULT_TTL_SECONDS = 30.0

# KEYS[1] = lease key, ARGV[1] = our token. Deletes only our own lease; returns 1 if deleted, else 0.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = lease key, ARGV[1] = our token, ARGV[2] = ttl in ms. Extends only our own lease; 1 if extended, else 0.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def _same(value: bytes | str | None, token: str) -> bool:
    if isinstance(value, bytes):
        return value == token.encode()
    return value == token


def _describe(client: aioredis.Redis) -> str:
    """host:port of the Redis client, for messages (never the URL: it carries the password)."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class Lease:
    """One held lease. `lost` turns true once we can no longer be sure we hold it; `check()` raises then."""

    def __init__(self, manager: LeaseManager, session_id: str, token: str, acquired_at: float) -> None:
        self.manager = manager
        self.session_id = session_id
        self.key = manager.key(session_id)
        self.token = token
        self.ttl = manager.ttl
        # Conservative local deadline: counted from when we *sent* the command, so it ends before Redis's does.
        self._expires_at = acquired_at + manager.ttl
        self._lost_reason: str | None = None
        self._released = False
        self._renewer: asyncio.Task[None] | None = None
        self._lost_callbacks: list[Callable[[Lease], None]] = []

    @property
    def lost(self) -> bool:
        if self._lost_reason is not None:
            return True
        return not self._released and time.monotonic() >= self._expires_at

    @property
    def lost_reason(self) -> str | None:
        if self._lost_reason is None and self.lost:
            return "the lease expired without renewal"
        return self._lost_reason

    @property
    def released(self) -> bool:
        return self._released

    def check(self) -> None:
        """Raise LeaseLost if the lease is lost (or was released): the caller must not keep writing."""
        if self._released:
            raise LeaseLost(f"the lease on session {self.session_id!r} was released; acquire it again")
        if self.lost:
            raise self._lost_error()

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(
            f"lost the lease on session {self.session_id!r} ({self.lost_reason or 'it expired'}); another client "
            "may be writing to it now, so stop and resume it again"
        )

    def add_lost_callback(self, callback: Callable[[Lease], None]) -> None:
        """Call `callback(lease)` once, from the renewer, when the lease is found lost."""
        self._lost_callbacks.append(callback)

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        logger.warning("lease on session %s lost: %s", self.session_id, reason)
        for callback in self._lost_callbacks:
            try:
                callback(self)
            except Exception:  # a broken callback must not stop the others
                logger.exception("lease-lost callback failed for session %s", self.session_id)

    async def renew(self) -> None:
        """Extend the lease by its ttl if we still hold it; LeaseLost if not, LeaseUnavailable if Redis failed."""
        self.check()
        sent_at = time.monotonic()
        try:
            extended = await self.manager._renew_script(keys=[self.key], args=[self.token, self.manager.ttl_ms])
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(
                f"could not renew the lease on session {self.session_id!r}: Redis at "
                f"{_describe(self.manager.redis)} failed: {exc}"
            ) from exc
        if int(extended) != 1:
            self._mark_lost("the lease key expired or now belongs to another client")
            self.check()
        self._expires_at = sent_at + self.manager.ttl

    def start_renewing(self, interval: float | None = None) -> None:
        """Renew in the background every `interval` seconds (default ttl/3) until released or lost."""
        if self._renewer is not None and not self._renewer.done():
            return
        every = self.ttl / 3 if interval is None else interval
        if every <= 0 or every >= self.ttl:
            raise ValueError(f"renew interval must be > 0 and < ttl ({self.ttl} s), got {every}")
        self._renewer = asyncio.get_running_loop().create_task(
            self._renew_loop(every), name=f"lease-renewer:{self.session_id}"
        )

    async def _renew_loop(self, every: float) -> None:
        while not self._released and self._lost_reason is None:
            await asyncio.sleep(every)
            if self.released:  # the property: released while this task slept
                return
            try:
                await self.renew()
            except LeaseLost:
                if not self._released and self._lost_reason is None:  # expired before we managed to renew
                    self._mark_lost("the lease expired before it could be renewed")
                return
            except LeaseUnavailable as exc:
                # Redis may come back in time; give up only when the next try would come after expiry.
                if time.monotonic() + every >= self._expires_at:
                    self._mark_lost(f"Redis stayed unreachable until the lease expired ({exc.__cause__})")
                    return
                logger.warning("%s; retrying in %.2f s", exc, every)

    async def stop_renewing(self) -> None:
        task, self._renewer = self._renewer, None
        if task is None or task.done():
            return
        task.cancel()
        # `wait`, not `await task`: the renewer's own CancelledError must not end a release that runs in a cleanup
        # after *our* task was cancelled (the lease would then stay held for its whole ttl); a new cancellation of
        # us still interrupts the wait.
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.debug("lease renewer for %s ended with %r", self.session_id, task.exception())

    async def release(self) -> bool:
        """Stop renewing and delete the lease if it is still ours. True if deleted.

        Never raises for Redis failures (it is called from `finally` blocks): a lease we could not delete simply
        expires within its ttl.
        """
        await self.stop_renewing()
        if self._released:
            return False
        self._released = True
        try:
            deleted = await self.manager._release_script(keys=[self.key], args=[self.token])
        except redis.exceptions.RedisError as exc:
            logger.warning(
                "could not release the lease on session %s (%s); it expires within %.1f s",
                self.session_id,
                exc,
                self.ttl,
            )
            return False
        return int(deleted) == 1

    def __repr__(self) -> str:
        state = "released" if self._released else ("lost" if self.lost else "held")
        return f"Lease(session_id={self.session_id!r}, {state})"


class LeaseManager:
    """Acquires leases in one Redis. Build it with `from_url` (fast-failing timeouts) or around your own client."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        key_prefix: str = LEASE_KEY_PREFIX,
        owns_client: bool = False,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl}")
        self.redis = client
        self.ttl = float(ttl)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.key_prefix = key_prefix
        self._owns_client = owns_client
        self._release_script = client.register_script(RELEASE_SCRIPT)
        self._renew_script = client.register_script(RENEW_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        timeout: float = 2.0,
        key_prefix: str = LEASE_KEY_PREFIX,
    ) -> LeaseManager:
        """A manager with its own Redis client; `timeout` bounds each connect and command, one quick retry."""
        client = aioredis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # One immediate retry covers a pooled connection that died with a Redis restart; more would only
            # delay failing closed.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, ttl=ttl, key_prefix=key_prefix, owns_client=True)

    def key(self, session_id: str) -> str:
        return self.key_prefix + session_id

    async def acquire(self, session_id: str, *, wait: float = 0.0) -> Lease:
        """Take the session's lease; wait up to `wait` seconds for a holder to let go, then SessionInUse."""
        validate_session_id(session_id)
        key = self.key(session_id)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + max(0.0, wait)
        delay = 0.05
        while True:
            sent_at = time.monotonic()
            try:
                won = await self.redis.set(key, token, nx=True, px=self.ttl_ms)
                if not won:
                    # A retried SET can find the key that its own first, unanswered attempt created.
                    won = _same(await self.redis.get(key), token)
            except redis.exceptions.RedisError as exc:
                raise LeaseUnavailable(
                    f"cannot take the lease on session {session_id!r}: the lease store (Redis at "
                    f"{_describe(self.redis)}) failed: {exc}. Refusing to attach without a lease."
                ) from exc
            if won:
                return Lease(self, session_id, token, sent_at)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionInUse(
                    f"session {session_id!r} is in use by another client; try again later"
                    + await self._expiry_hint(key)
                )
            await asyncio.sleep(min(delay, remaining))  # the last try lands on the deadline
            delay = min(delay * 2, 0.5)

    async def _expiry_hint(self, key: str) -> str:
        try:
            remaining_ms = int(await self.redis.pttl(key))
        except redis.exceptions.RedisError:
            return ""
        if remaining_ms <= 0:
            return ""
        return f" (its lease runs for up to {remaining_ms / 1000:.1f} s more unless renewed)"

    @asynccontextmanager
    async def hold(self, session_id: str, *, wait: float = 0.0, renew: bool = True) -> AsyncIterator[Lease]:
        """`async with leases.hold(sid) as lease:` acquire, renew in the background, release on exit.

        Raises LeaseLost on exit if the lease was lost while the body ran (and the body raised nothing else), so
        work done under a lost lease is never reported as a clean success.
        """
        lease = await self.acquire(session_id, wait=wait)
        if renew:
            lease.start_renewing()
        try:
            yield lease
        finally:
            was_lost = lease.lost
            await lease.release()
        if was_lost:
            raise lease._lost_error()

    async def ping(self) -> None:
        """Raise LeaseUnavailable unless Redis answers."""
        try:
            await self.redis.ping()
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(f"the lease store (Redis at {_describe(self.redis)}) failed: {exc}") from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> LeaseManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
