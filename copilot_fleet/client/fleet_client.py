"""`FleetClient`: one user's view of a deployed fleet (a `Target`), with the checks an app would otherwise make.

Every attach goes the same way, and every check that can be made locally is made before any server call:

    validate the id ─► check access (owner in the id / shared membership) ─► route (replica ranking for the user)
        ─► take the session's lease (fleets with shared session-state, and every fleet in store mode) ─► [store
        mode: bind the lease to the replica about to be tried] ─► create/resume on the first replica that answers,
        always with the target's provider ─► FleetSession (close: detach, then release the lease)

Store mode (target.session_state.mode store, client/store.py): every attach is leased, throw-away sessions too
(with an id the client chooses: the store can fence only a session it can name), and listing and deleting work on
the store, since the CLI lists and deletes nothing for provider-backed sessions.

All attaches funnel through `_attach`; with a `SessionCap` it first makes room on the replica (LRU eviction).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from copilot import CopilotClient, CopilotSession, SessionListFilter, SessionMetadata

from copilot_fleet.isolation import shares_session_state
from copilot_fleet.target import Target

from .cap import SessionCap, Slot
from .creates import CreateRequests
from .draining import DrainingReplicas
from .errors import AccessDenied, FleetClientError, LeaseUnavailable, ReplicaUnavailable, SessionNotFound
from .handle import FleetSession, translate_sdk_error
from .ids import SessionIdParts, new_session_id, parse_session_id, shared_session_id, validate_id_part
from .lease import DEFAULT_TTL_SECONDS, Lease, LeaseManager
from .options import InfiniteSessions, infinite_sessions_option
from .ownership import MembershipStore, RedisMembership, check_access
from .permissions import SERVER_EXECUTION_OPTIONS, PermissionPolicy, check_session_options, deny_all
from .pool import ClientPool, is_transport_failure
from .routing import Route, Router
from .store import SessionStoreAccess, as_metadata

logger = logging.getLogger(__name__)

T = TypeVar("T")

NAME_MAX_LENGTH = 100  # the CLI's limit for `name=`
EPHEMERAL_PURPOSE = "ephemeral"  # store mode: the purpose in a throw-away session's id


class FleetClient:
    """A user's client for one fleet. `async with FleetClient(target, user="alice") as fleet: ...`

    - `pool`: share one ClientPool between FleetClients of a process (one SDK client per server); by default the
      FleetClient owns a private pool and stops it on close.
    - `leases`: defaults to a LeaseManager on `target.redis_url`; required (fail closed) for shared-cli and
      shared-session fleets, optional for per-user.
    - `members`: shared-session membership; defaults to Redis sets in the same Redis.
    - `on_permission_request`: the permission policy of every session: which tool calls (shell commands, file
      writes, URL fetches, MCP tools) run. The default, `deny_all`, refuses every one; pass `allow_kinds(...)`, a
      handler of your own, or `approve_all` (client/permissions.py, docs/security.md). A per-call value wins.
    - `allow_options`: session options that make the CLI start processes or load code from its own file system
      (`mcp_servers`, `custom_agents`, hook, plugin and config directories: `SERVER_EXECUTION_OPTIONS`) are refused
      unless named here.
    - `session_cap`: a SessionCap shared by the process: at most N sessions attached per replica, LRU eviction.
    - `infinite_sessions`: default infinite-session settings (InfiniteSessions, the stack's InfiniteSessionsSpec
      or a dict) for every create and resume; validated, as is a per-call `infinite_sessions=`.
    """

    def __init__(
        self,
        target: Target,
        *,
        user: str,
        pool: ClientPool | None = None,
        leases: LeaseManager | None = None,
        members: MembershipStore | None = None,
        lease_ttl: float = DEFAULT_TTL_SECONDS,
        lease_wait: float = 0.0,
        on_permission_request: PermissionPolicy | None = deny_all,
        allow_options: frozenset[str] | set[str] = frozenset(),
        connect_timeout: float = 5.0,
        call_timeout: float = 60.0,
        session_cap: SessionCap | None = None,
        infinite_sessions: InfiniteSessions | object | None = None,
    ) -> None:
        self.target = target
        self.session_cap = session_cap
        self.infinite_sessions = infinite_sessions_option(infinite_sessions)
        self.user = validate_id_part(user, "user")
        self.router = Router(target)
        self.lease_wait = lease_wait
        self.call_timeout = call_timeout
        self._on_permission_request = on_permission_request
        unknown = sorted(set(allow_options) - SERVER_EXECUTION_OPTIONS)
        if unknown:
            raise ValueError(f"allow_options: {unknown} need no allowing; the options it takes are "
                             f"{sorted(SERVER_EXECUTION_OPTIONS)}")
        self.allow_options = frozenset(allow_options)
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else ClientPool(connect_timeout=connect_timeout)
        self._owns_leases = False
        if leases is None and (shares_session_state(target.isolation) or target.store_mode):
            if target.redis_url is None:
                why = ("keeps session state in the store (session_state.mode store), where only a leased session "
                       "can be written" if target.store_mode else
                       f"has isolation {target.isolation!r} (replicas share session-state)")
                raise LeaseUnavailable(
                    f"target {target.stack!r} {why} but has no redis_url: sessions cannot be leased, so none will "
                    "be attached. Deploy the lease store or pass leases=LeaseManager(...)"
                )
            leases = LeaseManager.from_url(target.redis_url.get_secret_value(), ttl=lease_ttl)
            self._owns_leases = True
        self.leases = leases
        self.store = SessionStoreAccess(target, leases.redis) if target.store_mode and leases is not None else None
        if members is None and target.isolation == "shared-session" and leases is not None:
            members = RedisMembership(leases.redis)
        self.members = members
        # Replicas being drained are tried last (the mark lives next to the leases).
        self.draining = DrainingReplicas(leases.redis) if leases is not None else None
        self._open: set[FleetSession] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close this client's open sessions (detach, release leases), then what it owns (pool, Redis client)."""
        for handle in list(self._open):
            await handle.close()
        if self._owns_pool:
            await self.pool.aclose()
        if self._owns_leases and self.leases is not None:
            await self.leases.aclose()

    @property
    def open_sessions(self) -> list[FleetSession]:
        return list(self._open)

    # -- operations --------------------------------------------------------------------------------------------

    async def create_session(self, purpose: str, *, wait: float | None = None, **opts: Any) -> FleetSession:
        """Create a new session for this user (id: `new_session_id(user, purpose)`) on the user's replica.

        `opts` go to `CopilotClient.create_session` (model, system_message, available_tools, streaming, ...).
        `name` defaults to the purpose so the session is persisted (resumable) before its first turn.
        """
        if "session_id" in opts:
            raise TypeError("create_session makes the session id itself; pass a purpose, not session_id=")
        session_id = new_session_id(self.user, purpose)
        opts.setdefault("name", purpose[:NAME_MAX_LENGTH])
        route = self.router.route(self.user)
        kwargs = self._session_options(opts)
        creates = CreateRequests(session_id)
        return await self._attach(session_id, route, wait, lambda client: creates.send(client, **kwargs), creates)

    async def resume_session(self, session_id: str, *, wait: float | None = None, **opts: Any) -> FleetSession:
        """Resume one of this user's sessions (or a shared session they belong to), with the provider re-supplied.

        Raises InvalidSessionId / AccessDenied before any server call, SessionInUse / LeaseUnavailable before
        attaching, SessionNotFound when the fleet has no such session. `wait`: seconds to wait for the lease.
        """
        kwargs = self._session_options(opts)
        parts = await self._authorize(session_id)
        route = self._route(parts, session_id)
        return await self._attach(
            session_id, route, wait, lambda client: client.resume_session(session_id, **kwargs)
        )

    async def join_shared_session(
        self, name: str, *, wait: float | None = None, create: bool = True, **opts: Any
    ) -> FleetSession:
        """Attach the named shared session `s-<name>` as its one writer, creating it if missing (`create`)."""
        session_id = shared_session_id(name)
        kwargs = self._session_options(opts)
        parts = await self._authorize(session_id)
        route = self._route(parts, session_id)
        create_kwargs = {**kwargs, "name": kwargs.get("name", name[:NAME_MAX_LENGTH])}

        creates = CreateRequests(session_id)

        async def resume_or_create(client: CopilotClient) -> CopilotSession:
            # We hold the lease, so nobody else can be creating or deleting it at this moment. Ask first: the SDK
            # logs a failed resume as a warning with two tracebacks, which every first join would print although
            # nothing is wrong; the lookup answers "none" without an error.
            if create and not await self._exists(client, session_id):
                return await creates.send(client, **create_kwargs)
            try:
                return await client.resume_session(session_id, **kwargs)
            except Exception as exc:
                # Listed but not resumable (a session whose first event never reached disk): start it afresh.
                if create and isinstance(translate_sdk_error(exc, session_id), SessionNotFound):
                    return await creates.send(client, **create_kwargs)
                raise

        return await self._attach(session_id, route, wait, resume_or_create, creates)

    async def create_ephemeral_session(self, **opts: Any) -> FleetSession:
        """A throw-away session, deleted when closed. Volume mode: a CLI-generated id and no lease. Store mode: an
        id of this user's (purpose `ephemeral`) under a lease like any other, since the store writes only leased
        sessions."""
        if "session_id" in opts:
            raise TypeError("ephemeral sessions get their id from the CLI; do not pass session_id=")
        kwargs = self._session_options(opts)
        if self.store is not None:
            session_id = new_session_id(self.user, EPHEMERAL_PURPOSE)
            creates = CreateRequests(session_id)
            return await self._attach(session_id, self.router.route(self.user), None,
                                      lambda client: creates.send(client, **kwargs), creates, ephemeral=True)
        route = await self._avoid_draining(self.router.route(self.user))
        slot = await self._reserve(route)
        try:
            client, address, sdk = await self._on_replicas(route, None, lambda c: c.create_session(**kwargs))
        except BaseException:
            if slot is not None:
                slot.cancel()
            raise
        return await self._admit(
            self._track(FleetSession(sdk=sdk, client=client, address=address, lease=None, ephemeral=True)), slot
        )

    async def list_sessions(
        self, filter: SessionListFilter | None = None, *, include_shared: bool = True
    ) -> list[SessionMetadata]:
        """This user's sessions on the fleet (and shared sessions they belong to); others' are left out. In store
        mode they are listed from the store (the CLI lists none of them); `filter` selects by the CLI's record of
        a session's working directory and repository, which store mode does not keep, so it is refused there."""
        listed: list[SessionMetadata]
        if self.store is not None:
            if filter is not None:
                raise ValueError("list_sessions(filter=...) selects by the CLI's own record of each session, which a "
                                 "fleet in store mode does not keep; list without a filter")
            listed = [as_metadata(row) for row in await self.store.list(self.store.keys(self.user))]
        else:
            route = self.router.route(self.user)
            _, _, listed = await self._on_replicas(route, None, lambda c: c.list_sessions(filter))
        visible: list[SessionMetadata] = []
        for meta in listed:
            try:
                parts = parse_session_id(meta.session_id)
            except FleetClientError:
                continue  # not made by the fleet client: no owner to check against
            if parts.kind == "user" and parts.owner == self.user:
                visible.append(meta)
            elif parts.kind == "shared" and include_shared and self.members is not None:
                assert parts.name is not None
                if await self.members.is_member(parts.name, self.user):
                    visible.append(meta)
        return visible

    async def delete_session(self, session_id: str, *, wait: float | None = None) -> None:
        """Delete one of this user's sessions from disk, under its lease (an attached session is not deleted)."""
        parts = await self._authorize(session_id)
        route = self._route(parts, session_id)
        lease = await self._take_lease(session_id, wait)
        try:
            if self.store is not None and lease is not None:
                if not await self.store.delete(self.store.keys(self.user), session_id, lease.token):
                    raise SessionNotFound(f"session {session_id!r} not found in the fleet's session store")
            else:
                await self._on_replicas(route, session_id, lambda c: c.delete_session(session_id))
        finally:
            if lease is not None:
                await lease.release()

    async def _exists(self, client: CopilotClient, session_id: str) -> bool:
        """Whether the session exists: in the store (the CLI knows no provider-backed session it has not loaded),
        else as the CLI sees it."""
        if self.store is not None:
            return await self.store.exists(self.store.keys(self.user), session_id)
        return await client.get_session_metadata(session_id) is not None

    # -- the common path ---------------------------------------------------------------------------------------

    async def _authorize(self, session_id: str) -> SessionIdParts:
        # The fleet's isolation first: on a fleet without shared sessions, membership is not the problem.
        if parse_session_id(session_id).kind == "shared" and self.target.isolation != "shared-session":
            raise AccessDenied(
                f"{session_id!r} is a shared session, but fleet {self.target.stack!r} has isolation "
                f"{self.target.isolation!r}; shared sessions need isolation 'shared-session'"
            )
        return await check_access(session_id, self.user, self.members)

    def _route(self, parts: SessionIdParts, session_id: str) -> Route:
        # A shared session goes where its id hashes, so all its members meet on one replica.
        return self.router.route(self.user, key=session_id if parts.kind == "shared" else None)

    def _session_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        check_session_options(opts, self.allow_options)
        kwargs = dict(opts)
        if kwargs.get("infinite_sessions") is not None:
            kwargs["infinite_sessions"] = infinite_sessions_option(kwargs["infinite_sessions"])
        elif self.infinite_sessions is not None:
            kwargs["infinite_sessions"] = self.infinite_sessions
        if "on_permission_request" not in kwargs and self._on_permission_request is not None:
            kwargs["on_permission_request"] = self._on_permission_request
        if kwargs.get("model") is None and self.target.model is not None:
            kwargs["model"] = self.target.model
        # The CLI does not store the provider: every create *and* resume must carry it.
        if kwargs.get("provider") is None and not kwargs.get("providers") and self.target.provider is not None:
            kwargs["provider"] = self.target.provider.to_sdk()
        return kwargs

    async def _take_lease(self, session_id: str, wait: float | None) -> Lease | None:
        if self.leases is None:
            return None
        lease = await self.leases.acquire(session_id, wait=self.lease_wait if wait is None else wait)
        lease.start_renewing()
        return lease

    async def _attach(
        self,
        session_id: str,
        route: Route,
        wait: float | None,
        operation: Callable[[CopilotClient], Awaitable[CopilotSession]],
        creates: CreateRequests | None = None,
        *,
        ephemeral: bool = False,
    ) -> FleetSession:
        """`creates`: the create requests `operation` sends, undone if the caller does not get the session
        (cancelled, timed out, lease lost): the server may make it after we gave up, and its id is known only here.
        Undone while the lease is still held, so nobody can attach it in between."""
        lease = await self._take_lease(session_id, wait)
        store_delete = self._store_deleter(session_id, lease)
        if creates is not None and store_delete is not None:
            creates.delete_with(lambda client: store_delete())
        slot: Slot | None = None
        route = await self._avoid_draining(route)
        try:
            slot = await self._reserve(route)  # after the lease: never evict for an attach that cannot happen
            client, address, sdk = await self._on_replicas(route, session_id, operation, lease=lease)
            if lease is not None:
                lease.check()  # lost while attaching (e.g. Redis gone for a whole ttl): do not hand it out
        except BaseException:
            try:
                if creates is not None:
                    await creates.undo()
            finally:  # even if the undo is interrupted in turn
                if slot is not None:
                    slot.cancel()
                if lease is not None:
                    await lease.release()
            raise
        created = creates is not None and creates.made(sdk)  # join_shared_session may have resumed instead
        handle = FleetSession(sdk=sdk, client=client, address=address, lease=lease, created=created,
                              ephemeral=ephemeral, store_delete=store_delete)
        return await self._admit(self._track(handle), slot)

    def _store_deleter(self, session_id: str, lease: Lease | None) -> Callable[[], Awaitable[bool]] | None:
        """Store mode: how a handle (ephemeral, stillborn) or an undone create deletes its session, under the lease
        it holds; None in volume mode (the CLI deletes)."""
        store = self.store
        if store is None or lease is None:
            return None
        keys = store.keys(self.user)
        return lambda: store.delete(keys, session_id, lease.token)

    async def _avoid_draining(self, route: Route) -> Route:
        if self.draining is None or len(route.addresses) < 2:
            return route  # nowhere else to go (a per-user server, a single replica)
        return route.avoiding(await self.draining.among(route.addresses))

    async def _reserve(self, route: Route) -> Slot | None:
        """Room on the route's first replica, if a session cap is set (evicts that replica's LRU session if full)."""
        return None if self.session_cap is None else await self.session_cap.reserve(route.primary)

    async def _admit(self, handle: FleetSession, slot: Slot | None) -> FleetSession:
        if slot is not None:
            await slot.fill(handle)
        return handle

    def _track(self, handle: FleetSession) -> FleetSession:
        self._open.add(handle)
        handle._on_close = self._open.discard
        return handle

    async def _on_replicas(
        self,
        route: Route,
        session_id: str | None,
        operation: Callable[[CopilotClient], Awaitable[T]],
        *,
        lease: Lease | None = None,
    ) -> tuple[CopilotClient, str, T]:
        """Run `operation` on the first replica of the route that answers.

        Fails over only when a replica cannot be reached or its connection dies (it cannot have acted then);
        a timeout is not failed over, because the slow replica may still complete the operation. Store mode: the
        lease is bound to each replica just before the operation is tried there, so only that replica may write
        the session (a failover rebinds it to the next one).
        """
        failures: list[str] = []
        for address in route.addresses:
            try:
                client = await self.pool.get(address, route.token)
            except ReplicaUnavailable as exc:
                failures.append(str(exc))
                continue
            if self.store is not None and lease is not None:
                await self.store.bind(lease, self.store.keys(self.user), address)
            try:
                result = await asyncio.wait_for(operation(client), self.call_timeout)
            except TimeoutError as exc:
                raise ReplicaUnavailable(
                    f"CLI server {address} did not answer within {self.call_timeout:g} s"
                ) from exc
            except Exception as exc:
                translated = translate_sdk_error(exc, session_id)
                if translated is not exc:
                    raise translated from exc
                if not is_transport_failure(exc):
                    raise
                logger.warning("CLI server %s went away (%s); trying the next replica", address, exc)
                await self.pool.discard(address, route.token, client)
                failures.append(f"CLI server {address} went away: {exc}")
                continue
            return client, address, result
        raise ReplicaUnavailable(
            f"no CLI server answered for user {self.user!r} (tried {len(route.addresses)}): " + "; ".join(failures)
        )
