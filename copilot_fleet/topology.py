"""The topology: which servers a fleet runs and what they share, decided once, as plain data.

Renderers (Kubernetes, Azure, the local fleet) only translate a Topology; none of them decides who gets which
server, how many replicas run, or what is shared. Nothing here needs Pulumi or a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from copilot_fleet.spec import FleetSpec, SessionStateMode

Credential = Literal["github-token", "user-github-token", "provider", "test-model"]
LeaseStoreKind = Literal["in-cluster", "external", "local"]


@dataclass(frozen=True)
class CliGroup:
    """A set of identical CLI servers: the shared replicas, or one user's own server."""

    name: str  # resource base name, a DNS label: "copilot-cli" or "copilot-user-<id>"
    user: str | None  # the only user allowed on it (per-user), None for shared replicas
    replicas: int
    credential: Credential  # what authenticates its sessions' model calls
    token_key: str  # which generated connection token it uses: "fleet" or the user id
    # The volume holding session-state/ (shared by every replica, or the user's own); None in store mode.
    session_volume: str | None
    # Store mode: the store scope its servers read and write (the user id, or `shared`); None in volume mode.
    store_scope: str | None = None

    def replica_names(self) -> list[str]:
        """Stable per-replica identities (StatefulSet pod names; local process names)."""
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    def volume_name(self) -> str:
        """The session volume, for renderers that mount one; a group in store mode has none."""
        if self.session_volume is None:
            raise ValueError(f"{self.name} keeps its session state in the store (fleet:sessionState.mode store): "
                             "it has no session volume")
        return self.session_volume


@dataclass(frozen=True)
class Topology:
    spec: FleetSpec
    groups: tuple[CliGroup, ...]
    lease_store: LeaseStoreKind | None  # None: no session-state is shared and none is in a store: no lease needed
    load_balanced: bool  # one client entry point in front of the replicas
    session_state: SessionStateMode = "volume"

    @property
    def store_mode(self) -> bool:
        """Session state in the store: no session volume, a provider beside every CLI, writes fenced by leases."""
        return self.session_state == "store"

    @property
    def shares_session_state(self) -> bool:
        """One group of replicas on one session-state/ volume (the shared patterns): sessions need leases."""
        return self.shared_group is not None

    @property
    def shared_group(self) -> CliGroup | None:
        return next((g for g in self.groups if g.user is None), None)

    def group_for_user(self, user: str) -> CliGroup:
        for g in self.groups:
            if g.user == user:
                return g
        raise KeyError(f"no server for user {user!r} in this {self.spec.isolation} fleet")

    @property
    def session_volumes(self) -> list[str]:
        return sorted({g.session_volume for g in self.groups if g.session_volume is not None})


SHARED_GROUP = "copilot-cli"
SHARED_SESSION_VOLUME = "copilot-sessions"
SHARED_STORE_SCOPE = "shared"  # copilot_fleet.sessionstore.keys.SHARED_SCOPE (not imported: it pulls in redis)


def user_group_name(user: str) -> str:
    return f"copilot-user-{user}"


def _credential(spec: FleetSpec, user_token: bool) -> Credential:
    if user_token:
        return "user-github-token"
    if spec.provider is not None:
        return "provider"
    if spec.github_token is not None:
        return "github-token"
    return "test-model"  # only reachable on the local platform: validation requires a credential elsewhere


def build_topology(spec: FleetSpec) -> Topology:
    """The one place that maps an isolation pattern onto servers, volumes, store scopes and a lease store.

    Store mode: no group has a session volume; each has a store scope (the user's id, or `shared`), and every
    pattern gets the lease store, per-user included: the store lives in it, and its writes are fenced by leases."""
    store = spec.store_mode
    lease: LeaseStoreKind = "local" if spec.platform == "local" else spec.redis.mode
    if not spec.shares_session_state:
        groups = tuple(
            CliGroup(
                name=user_group_name(u.id),
                user=u.id,
                replicas=1,
                credential=_credential(spec, user_token=u.github_token is not None),
                token_key=u.id,
                session_volume=None if store else f"{user_group_name(u.id)}-sessions",
                store_scope=u.id if store else None,
            )
            for u in spec.users
        )
        return Topology(spec=spec, groups=groups, lease_store=lease if store else None, load_balanced=False,
                        session_state=spec.session_state.mode)

    shared = CliGroup(
        name=SHARED_GROUP,
        user=None,
        replicas=spec.replicas,
        credential=_credential(spec, user_token=False),
        token_key="fleet",
        session_volume=None if store else SHARED_SESSION_VOLUME,
        store_scope=SHARED_STORE_SCOPE if store else None,
    )
    # Two servers on one session-state/ can attach the same session at once (CLI 1.0.102): shared-cli needs the lease
    # store as much as shared-session does.
    return Topology(spec=spec, groups=(shared,), lease_store=lease, load_balanced=True,
                    session_state=spec.session_state.mode)
