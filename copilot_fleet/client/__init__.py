"""The fleet client: what an application (and the smoke tests) use to talk to a deployed fleet.

Session ids that encode their owner unambiguously, ownership checks before any server call, a Redis lease per
session with owner-only atomic release and renewal, stable routing with failover, and resume that always
re-supplies the BYOK provider. See docs/fleet-client.md. Operating it (session cap, infinite sessions): see
docs/operations.md.

The parts that need the Copilot SDK (FleetClient, FleetSession, ClientPool, SessionCap, InfiniteSessions) are
imported on first use: `import copilot` costs 0.7 s or more, and the janitor (a CronJob) needs only the leases.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AccessDenied,
    FleetClientError,
    InvalidSessionId,
    LeaseLost,
    LeaseUnavailable,
    MembershipUnavailable,
    NoRoute,
    ProviderMissing,
    ReplicaUnavailable,
    SessionDisconnected,
    SessionInUse,
    SessionNotFound,
    SessionStateUnwritable,
    is_storage_error,
)
from .ids import (
    MAX_SESSION_ID_LENGTH,
    SessionIdParts,
    is_fleet_session_id,
    new_session_id,
    parse_session_id,
    shared_session_id,
    validate_id_part,
    validate_session_id,
)
from .lease import Lease, LeaseManager
from .ownership import InMemoryMembership, MembershipStore, RedisMembership, check_access, check_owner
from .routing import Route, Router, rank_replicas

if TYPE_CHECKING:
    from .cap import Eviction, SessionCap, SessionCapReached
    from .fleet_client import FleetClient
    from .handle import FleetSession
    from .options import InfiniteSessions, InvalidSessionOption
    from .permissions import UnsafeSessionOption, allow_kinds, approve_all, deny_all
    from .pool import ClientPool

# Names from modules that import the SDK: loaded by __getattr__ when first used.
_LAZY = {
    "Eviction": "cap",
    "SessionCap": "cap",
    "SessionCapReached": "cap",
    "FleetClient": "fleet_client",
    "FleetSession": "handle",
    "InfiniteSessions": "options",
    "InvalidSessionOption": "options",
    "ClientPool": "pool",
    "UnsafeSessionOption": "permissions",
    "allow_kinds": "permissions",
    "approve_all": "permissions",
    "deny_all": "permissions",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "AccessDenied",
    "ClientPool",
    "Eviction",
    "FleetClient",
    "FleetClientError",
    "FleetSession",
    "InMemoryMembership",
    "InfiniteSessions",
    "InvalidSessionId",
    "InvalidSessionOption",
    "Lease",
    "LeaseLost",
    "LeaseManager",
    "LeaseUnavailable",
    "MembershipStore",
    "MembershipUnavailable",
    "NoRoute",
    "ProviderMissing",
    "RedisMembership",
    "ReplicaUnavailable",
    "Route",
    "Router",
    "SessionCap",
    "SessionCapReached",
    "SessionDisconnected",
    "SessionIdParts",
    "SessionInUse",
    "SessionNotFound",
    "SessionStateUnwritable",
    "UnsafeSessionOption",
    "allow_kinds",
    "approve_all",
    "check_access",
    "check_owner",
    "deny_all",
    "is_fleet_session_id",
    "is_storage_error",
    "new_session_id",
    "parse_session_id",
    "rank_replicas",
    "shared_session_id",
    "validate_id_part",
    "validate_session_id",
]
