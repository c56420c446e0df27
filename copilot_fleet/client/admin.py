"""The operator's view of a fleet: every session on it (not one user's), and deletion that refuses attached ones.

`FleetClient` is one user's client and shows only that user's sessions; operators need all of them, with the
owner read from the id, and a delete that never pulls a session out from under a client:

- shared-state fleets (shared-cli, shared-session): the admin takes the session's lease - the very key a
  `FleetClient` holds while the session is attached - before deleting, so a held lease means "attached: refused",
  and no client can attach it while the delete runs;
- every fleet: each reachable CLI is asked `sessions.checkInUse` (the CLI's own in-use locks, which another CLI
  process holds from a session's creation or first turn after a resume), and a session in use is refused too;
- per-user fleets have no lease store, and a CLI does not report its own attached sessions through checkInUse, so
  deleting there is refused unless the operator accepts that risk (`allow_unleased=True`).

Store mode (target.session_state.mode store): the sessions are listed from the store, every scope of the fleet (the
CLI lists none of them), a session counts as attached while a client holds its lease (every attach is leased in
this mode, per-user too), and it is deleted from the store under the admin's own lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis.exceptions
from copilot import CopilotClient

from copilot_fleet.isolation import shares_session_state
from copilot_fleet.target import Target

from .errors import FleetClientError, LeaseUnavailable, ReplicaUnavailable, SessionInUse, SessionNotFound
from .handle import translate_sdk_error
from .ids import parse_session_id
from .lease import LeaseManager
from .pool import ClientPool
from .store import SessionStoreAccess

logger = logging.getLogger(__name__)

Outcome = Literal["deleted", "would-delete", "refused", "not-found", "error"]


@dataclass(frozen=True)
class Server:
    """One place sessions live: the shared replicas (any of them sees the shared session-state/), or one user's
    own server in a per-user fleet."""

    name: str  # "shared" or the user id
    addresses: tuple[str, ...]
    token: str | None


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    kind: Literal["user", "shared", "foreign"]  # foreign: not made by the fleet client; no owner known
    owner: str | None  # the user in a fleet id, "shared:<name>" for shared sessions
    created: datetime
    modified: datetime
    server: str  # Server.name
    attached: bool | None  # None: cannot be known here (see `attached_by`)
    attached_by: str  # why it counts as attached, or why that is unknown

    def idle_seconds(self, now: datetime | None = None) -> float:
        return max(0.0, ((now or datetime.now(UTC)) - self.modified).total_seconds())


@dataclass(frozen=True)
class DeleteResult:
    session_id: str
    outcome: Outcome
    reason: str


def _owner(session_id: str) -> tuple[Literal["user", "shared", "foreign"], str | None]:
    try:
        parts = parse_session_id(session_id)
    except FleetClientError:
        return "foreign", None
    if parts.kind == "shared":
        return "shared", f"shared:{parts.name}"
    return "user", parts.owner


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class FleetAdmin:
    """Operator access to one fleet (a Target). `async with FleetAdmin(target) as admin: ...`"""

    def __init__(
        self,
        target: Target,
        *,
        pool: ClientPool | None = None,
        leases: LeaseManager | None = None,
        connect_timeout: float = 5.0,
        call_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.call_timeout = call_timeout
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else ClientPool(connect_timeout=connect_timeout)
        self._owns_leases = False
        needs_leases = shares_session_state(target.isolation) or target.store_mode
        if leases is None and needs_leases and target.redis_url is not None:
            leases = LeaseManager.from_url(target.redis_url.get_secret_value())
            self._owns_leases = True
        self.leases = leases
        if target.store_mode and leases is None:
            raise LeaseUnavailable(f"target {target.stack!r} keeps session state in the store but has no redis_url: "
                                   "its sessions cannot be listed or deleted")
        self.store = SessionStoreAccess(target, leases.redis) if target.store_mode and leases is not None else None

    async def __aenter__(self) -> FleetAdmin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_pool:
            await self.pool.aclose()
        if self._owns_leases and self.leases is not None:
            await self.leases.aclose()

    # -- where sessions are ------------------------------------------------------------------------------------

    def servers(self) -> list[Server]:
        t = self.target
        if t.isolation == "per-user":
            return [Server(user, (address,), t.token_for(user)) for user, address in sorted(t.users.items())]
        addresses = list(dict.fromkeys(t.replicas))
        if t.endpoint is not None and t.endpoint not in addresses:
            addresses.append(t.endpoint)
        if not addresses:
            raise ReplicaUnavailable(f"target {t.stack!r} lists neither replicas nor an endpoint")
        return [Server("shared", tuple(addresses), t.token_for(None))]

    async def _clients(self, server: Server) -> list[tuple[str, CopilotClient]]:
        """Connected SDK clients for every reachable replica of the server (checkInUse has to reach each CLI
        process), connecting in parallel; the load-balanced endpoint only when no replica answers (an operator
        outside the cluster may reach nothing else)."""
        endpoint = self.target.endpoint
        direct = [a for a in server.addresses if a != endpoint]
        fallback = [a for a in server.addresses if a == endpoint]
        failures: list[str] = []
        for group in (direct, fallback):
            if not group:
                continue
            answers = await asyncio.gather(*(self.pool.get(a, server.token) for a in group), return_exceptions=True)
            out: list[tuple[str, CopilotClient]] = []
            for address, answer in zip(group, answers, strict=True):
                if isinstance(answer, ReplicaUnavailable):
                    failures.append(str(answer))
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    out.append((address, answer))
            if out:
                return out
        raise ReplicaUnavailable(f"no CLI server of {server.name!r} answered: " + "; ".join(failures))

    async def _in_use(self, clients: list[tuple[str, CopilotClient]], ids: list[str]) -> dict[str, str] | None:
        """{session id: which CLI holds it} from every CLI's `sessions.checkInUse`; None if none could answer."""
        from copilot.generated.rpc import SessionsCheckInUseRequest  # experimental API of the pinned SDK

        if not ids:
            return {}
        held: dict[str, str] = {}
        answered = False
        for address, client in clients:
            try:
                result = await asyncio.wait_for(
                    client.rpc.sessions.check_in_use(SessionsCheckInUseRequest(session_ids=ids)), self.call_timeout
                )
            except Exception as exc:  # an older/newer CLI without the method, or a dying server: unknown
                logger.debug("sessions.checkInUse on %s failed: %s", address, exc)
                continue
            answered = True
            for sid in result.in_use:
                held.setdefault(sid, f"a CLI process other than {address} holds its in-use lock")
        return held if answered else None

    async def _leased(self, ids: list[str]) -> set[str] | None:
        if self.leases is None or not ids:
            return None if self.leases is None else set()
        try:
            flags = await self.leases.redis.mget([self.leases.key(sid) for sid in ids])
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(f"the lease store failed while listing leases: {exc}") from exc
        return {sid for sid, value in zip(ids, flags, strict=True) if value is not None}

    # -- listing -----------------------------------------------------------------------------------------------

    async def list_sessions(self) -> list[SessionRow]:
        """Every session of the fleet, newest first, with its owner and whether it is attached."""
        if self.store is not None:
            return await self._list_store(self.store)
        rows: list[SessionRow] = []
        for server in self.servers():
            clients = await self._clients(server)
            _, client = clients[0]
            listed = await asyncio.wait_for(client.list_sessions(), self.call_timeout)
            ids = [m.session_id for m in listed]
            leased = await self._leased(ids)
            in_use = await self._in_use(clients, ids)
            for meta in listed:
                kind, owner = _owner(meta.session_id)
                attached, why = self._attachment(meta.session_id, leased, in_use, single_cli=len(clients) == 1)
                rows.append(SessionRow(meta.session_id, kind, owner, _aware(meta.start_time),
                                       _aware(meta.modified_time), server.name, attached, why))
        rows.sort(key=lambda r: r.modified, reverse=True)
        return rows

    async def _list_store(self, store: SessionStoreAccess) -> list[SessionRow]:
        rows: list[SessionRow] = []
        for user, keys in store.scopes():
            for stored in await store.list(keys):
                kind, owner = _owner(stored.session_id)
                moment = stored.modified or stored.created or datetime.fromtimestamp(0, tz=UTC)
                where = f" on {stored.bound_server}" if stored.bound_server not in (None, "-") else ""
                rows.append(SessionRow(stored.session_id, kind, owner, stored.created or moment, moment,
                                       user or "shared", stored.leased,
                                       f"a client holds its lease{where}" if stored.leased else "no lease held"))
        rows.sort(key=lambda r: r.modified, reverse=True)
        return rows

    @staticmethod
    def _attachment(
        sid: str, leased: set[str] | None, in_use: dict[str, str] | None, single_cli: bool
    ) -> tuple[bool | None, str]:
        if leased is not None and sid in leased:
            return True, "a client holds its lease"
        if in_use is not None and sid in in_use:
            return True, in_use[sid]
        if leased is not None:
            return False, "no lease held"
        # Without leases, a CLI's own attached sessions are invisible to checkInUse on that same CLI.
        return None, "unknown: no lease store" + (" and only one CLI to ask" if single_cli else "")

    # -- deleting ----------------------------------------------------------------------------------------------

    async def delete_older_than(
        self,
        seconds: float,
        *,
        owner: str | None = None,
        dry_run: bool = False,
        allow_unleased: bool = False,
        now: datetime | None = None,
    ) -> list[DeleteResult]:
        """Delete every session idle for more than `seconds` (optionally only `owner`'s), refusing attached ones."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        moment = now or datetime.now(UTC)
        rows = [r for r in await self.list_sessions()
                if r.idle_seconds(moment) > seconds and (owner is None or r.owner == owner)]
        return [await self._delete_row(r, dry_run=dry_run, allow_unleased=allow_unleased) for r in rows]

    async def delete(self, session_id: str, *, dry_run: bool = False, allow_unleased: bool = False) -> DeleteResult:
        """Delete one session, unless it is attached."""
        (result,) = await self.delete_sessions([session_id], dry_run=dry_run, allow_unleased=allow_unleased)
        return result

    async def delete_sessions(self, session_ids: list[str], *, owner: str | None = None, dry_run: bool = False,
                              allow_unleased: bool = False) -> list[DeleteResult]:
        """Delete the sessions named, each under its lease and unless attached, as `delete_older_than` does; with
        `owner`, a session of anyone else is refused (one listing for all of them)."""
        rows = {r.session_id: r for r in await self.list_sessions()}
        results = []
        for sid in dict.fromkeys(session_ids):
            row = rows.get(sid)
            if row is None:
                results.append(DeleteResult(sid, "not-found", "no such session on the fleet"))
            elif owner is not None and row.owner != owner:
                results.append(DeleteResult(sid, "refused", f"belongs to {row.owner or 'no known owner'}, not "
                                                            f"{owner}"))
            else:
                results.append(await self._delete_row(row, dry_run=dry_run, allow_unleased=allow_unleased))
        return results

    async def _delete_row(self, row: SessionRow, *, dry_run: bool, allow_unleased: bool) -> DeleteResult:
        sid = row.session_id
        server = next(s for s in self.servers() if s.name == row.server)
        if self.leases is None and not allow_unleased:
            return DeleteResult(sid, "refused", "this fleet has no lease store, so whether the session is attached "
                                                "cannot be known; pass --unleased to delete anyway")
        lease = None
        if self.leases is not None:
            try:
                lease = await self.leases.acquire(sid, wait=0)
            except SessionInUse:
                return DeleteResult(sid, "refused", "attached: a client holds its lease")
        try:
            if self.store is not None and lease is not None:
                if dry_run:
                    return DeleteResult(sid, "would-delete", f"idle {row.idle_seconds():.0f} s, not leased")
                keys = self.store.keys(None if row.server == "shared" else row.server)
                if not await self.store.delete(keys, sid, lease.token):
                    return DeleteResult(sid, "not-found", "already gone")
                return DeleteResult(sid, "deleted", f"idle {row.idle_seconds():.0f} s, not leased")
            clients = await self._clients(server)
            in_use = await self._in_use(clients, [sid])  # asked under the lease: nobody can attach meanwhile
            if in_use and sid in in_use:
                return DeleteResult(sid, "refused", f"attached: {in_use[sid]}")
            if dry_run:
                return DeleteResult(sid, "would-delete", f"idle {row.idle_seconds():.0f} s, not attached")
            _, client = clients[0]
            try:
                await asyncio.wait_for(client.delete_session(sid), self.call_timeout)
            except Exception as exc:
                translated = translate_sdk_error(exc, sid)
                if isinstance(translated, SessionNotFound):
                    return DeleteResult(sid, "not-found", "already gone")
                return DeleteResult(sid, "error", f"delete failed: {exc}")
            return DeleteResult(sid, "deleted", f"idle {row.idle_seconds():.0f} s, not attached")
        finally:
            if lease is not None:
                await lease.release()
