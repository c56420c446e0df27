"""A per-replica cap on attached sessions, with least-recently-used eviction (a session manager for the fleet).

Every attached session costs its CLI memory (about 3.7 MiB each, never given back after detach; measured with CLI
1.0.102), so an
application keeps at most `max_per_replica` sessions attached on each CLI server. When a replica is full, the
session used least recently there is disconnected to make room: its history stays on disk and its lease is
released, so it resumes later - on any replica - with its whole history.

    cap = SessionCap(max_per_replica=spec.max_sessions_per_replica)      # one per process, like the ClientPool
    async with FleetClient(target, user="alice", pool=pool, session_cap=cap) as fleet:
        session = await cap.get(fleet, session_id)    # the attached one, or resumed (evicting the LRU if full)

Differences from a plain per-process session manager with a limit, each deliberate:
- counted per replica address (where the memory is), not per process;
- "recently used" is the last event the session produced (a turn, a reply), not the order of attach;
- a session in the middle of a turn is never evicted (its reply would be cut off); if every session on a full
  replica is busy, the attach fails with `SessionCapReached` instead of overshooting the cap;
- eviction waits for the detach to finish before the new session attaches, so the cap holds at every moment.

The cap counts the sessions attached through this object, i.e. by one application process. Several processes
sharing a replica each keep their own count (N processes: at most N x cap there).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import FleetClientError
from .handle import FleetSession
from .ownership import check_access

if TYPE_CHECKING:
    from copilot.session_events import SessionEvent

    from .fleet_client import FleetClient

logger = logging.getLogger(__name__)

DEFAULT_MAX_PER_REPLICA = 50  # FleetSpec.max_sessions_per_replica's default
_BUSY_EVENTS = frozenset({"user.message", "assistant.turn_start"})
_IDLE_EVENTS = frozenset({"session.idle"})


class SessionCapReached(FleetClientError, RuntimeError):
    """The replica is at its cap and every session attached there is in the middle of a turn."""


@dataclass(frozen=True)
class Eviction:
    """One session disconnected to make room."""

    session_id: str
    address: str
    idle_seconds: float  # how long it had been unused
    seconds: float  # how long the disconnect (detach + lease release) took


class _Entry:
    """One attached session and how recently it was used. Event callbacks may come from the SDK's reader thread,
    so they only assign plain attributes."""

    def __init__(self, handle: FleetSession, now: float, clock: Callable[[], float]) -> None:
        self.handle = handle
        self.last_used = now
        self.busy = False
        self.evicting = False
        self._clock = clock
        self._unsubscribe: Callable[[], None] | None = handle.on(self._on_event)

    def _on_event(self, event: SessionEvent) -> None:
        kind = getattr(event.type, "value", event.type)
        if kind in _BUSY_EVENTS:
            self.busy = True
        elif kind in _IDLE_EVENTS:
            self.busy = False
        self.last_used = self._clock()

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception:  # the session may be gone already
                logger.debug("unsubscribing from %s failed", self.handle.session_id, exc_info=True)
            self._unsubscribe = None

    @property
    def gone(self) -> bool:
        return self.handle.closed


class Slot:
    """Room reserved on a replica for one attach; `fill` it with the attached session or `cancel` it."""

    def __init__(self, cap: SessionCap, address: str) -> None:
        self._cap = cap
        self.address = address
        self._done = False

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._cap._pending[self.address] -= 1

    async def fill(self, handle: FleetSession) -> None:
        if self._done:
            raise RuntimeError("this slot was already used")
        self.cancel()
        await self._cap._add(handle)


class SessionCap:
    """At most `max_per_replica` sessions attached per CLI server by this process; LRU eviction when full.

    Give it to FleetClients (`FleetClient(..., session_cap=cap)`): every create, resume and join then reserves
    room first. Share one SessionCap between all FleetClients of a process (like the ClientPool).
    """

    def __init__(self, max_per_replica: int = DEFAULT_MAX_PER_REPLICA, *,
                 clock: Callable[[], float] = time.monotonic, keep_evictions: int = 1000) -> None:
        if isinstance(max_per_replica, bool) or not isinstance(max_per_replica, int) or max_per_replica < 1:
            raise ValueError(f"max_per_replica must be a whole number >= 1, got {max_per_replica!r}")
        self.max_per_replica = max_per_replica
        self._clock = clock
        self._entries: dict[str, list[_Entry]] = {}
        self._pending: dict[str, int] = {}
        self.evictions: deque[Eviction] = deque(maxlen=keep_evictions)
        self.evicted_total = 0

    # -- what is attached --------------------------------------------------------------------------------------

    def _live(self, address: str) -> list[_Entry]:
        """The address's entries, dropping sessions that were closed (by their owner) or lost their lease."""
        entries = self._entries.get(address, [])
        live = [e for e in entries if not e.gone or e.evicting]
        for e in entries:
            if e not in live:
                e.unsubscribe()
        if live:
            self._entries[address] = live
        else:
            self._entries.pop(address, None)
        return live

    def attached(self, address: str | None = None) -> list[FleetSession]:
        """Sessions attached through this cap (on one replica, or all), least recently used first."""
        addresses = [address] if address is not None else list(self._entries)
        entries = [e for a in addresses for e in self._live(a) if not e.evicting]
        return [e.handle for e in sorted(entries, key=lambda e: e.last_used)]

    def counts(self) -> dict[str, int]:
        """Attached sessions per replica address."""
        return {a: n for a in list(self._entries) if (n := len(self._live(a)))}

    def find(self, session_id: str) -> FleetSession | None:
        """The handle of `session_id` if it is attached through this cap."""
        for address in list(self._entries):
            for e in self._live(address):
                if e.handle.session_id == session_id and not e.evicting:
                    return e.handle
        return None

    def touch(self, session: FleetSession | str) -> None:
        """Mark a session used now (done automatically on every event it produces and by `get`)."""
        sid = session if isinstance(session, str) else session.session_id
        for entries in self._entries.values():
            for e in entries:
                if e.handle.session_id == sid:
                    e.last_used = self._clock()

    # -- attaching ---------------------------------------------------------------------------------------------

    async def get(self, fleet: FleetClient, session_id: str, **opts: Any) -> FleetSession:
        """The session attached through this cap if there is one (after the same access check a resume makes),
        otherwise `fleet.resume_session(session_id, **opts)`, which evicts the LRU session if the replica is full."""
        if fleet.session_cap is not self:
            raise ValueError("this FleetClient does not use this SessionCap; create it with session_cap=cap")
        handle = self.find(session_id)
        if handle is not None:
            await check_access(session_id, fleet.user, fleet.members)  # another user never gets the handle
            self.touch(handle)
            return handle
        return await fleet.resume_session(session_id, **opts)

    async def reserve(self, address: str) -> Slot:
        """Make room for one more session on `address` (evicting LRU idle sessions) and hold it for an attach."""
        victims = self._choose_victims(address, room_for=1)
        self._pending[address] = self._pending.get(address, 0) + 1
        try:
            for victim in victims:
                await self._evict(victim)
        except BaseException:
            self._pending[address] -= 1
            raise
        return Slot(self, address)

    def _choose_victims(self, address: str, room_for: int) -> list[_Entry]:
        """Pick (and mark) the LRU idle sessions to evict so that `room_for` more fit. Synchronous on purpose:
        no other task can pick the same victims or overfill the replica in between."""
        live = self._live(address)
        used = len(live) + self._pending.get(address, 0)
        need = used + room_for - self.max_per_replica
        if need <= 0:
            return []
        # A session whose lease was lost is still attached in the CLI (its turn was aborted): evict it first.
        candidates = sorted((e for e in live if not e.evicting and (e.handle.lost or not e.busy)),
                            key=lambda e: (not e.handle.lost, e.last_used))
        if len(candidates) < need:
            busy = sum(1 for e in live if e.busy)
            raise SessionCapReached(
                f"CLI server {address} is at its cap of {self.max_per_replica} attached sessions and {busy} of them "
                "are in the middle of a turn, so none can be evicted; retry when a turn has finished, or raise "
                "fleet:maxSessionsPerReplica"
            )
        victims = candidates[:need]
        for v in victims:
            v.evicting = True
        return victims

    async def _evict(self, entry: _Entry) -> None:
        started = self._clock()
        idle = started - entry.last_used
        try:
            await entry.handle.close()  # detach (history stays on disk), then release the lease
        finally:
            entry.unsubscribe()
            entries = self._entries.get(entry.handle.address, [])
            if entry in entries:
                entries.remove(entry)
        took = self._clock() - started
        self.evictions.append(Eviction(entry.handle.session_id, entry.handle.address, idle, took))
        self.evicted_total += 1
        logger.info("evicted session %s from %s (idle %.1f s, detach took %.3f s) to stay within %d sessions",
                    entry.handle.session_id, entry.handle.address, idle, took, self.max_per_replica)

    async def _add(self, handle: FleetSession) -> None:
        """Track a newly attached session. If failover put it on another replica than reserved, make room there
        too (best effort: a busy replica stays one over rather than failing an attach that already happened)."""
        try:
            victims = self._choose_victims(handle.address, room_for=1)
        except SessionCapReached as exc:
            logger.warning("session %s attached over the cap: %s", handle.session_id, exc)
            victims = []
        for victim in victims:
            await self._evict(victim)
        self._entries.setdefault(handle.address, []).append(_Entry(handle, self._clock(), self._clock))
