"""The fleet client: what an application (and the smoke tests) use to talk to a deployed fleet.

Session ids that encode their owner unambiguously, ownership checks before any server call, a Redis lease per
session with owner-only atomic release and renewal, stable routing with failover, and resume that always
re-supplies the BYOK provider. See docs/fleet-client.md.
"""

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
    SessionInUse,
    SessionNotFound,
)
from .fleet import FleetClient
from .handle import FleetSession
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
from .pool import ClientPool
from .routing import Route, Router, rank_replicas

__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "AccessDenied",
    "ClientPool",
    "FleetClient",
    "FleetClientError",
    "FleetSession",
    "InMemoryMembership",
    "InvalidSessionId",
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
    "SessionIdParts",
    "SessionInUse",
    "SessionNotFound",
    "check_access",
    "check_owner",
    "is_fleet_session_id",
    "new_session_id",
    "parse_session_id",
    "rank_replicas",
    "shared_session_id",
    "validate_id_part",
    "validate_session_id",
]
