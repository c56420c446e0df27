"""The isolation patterns, and which of them share state, defined once.

- `per-user`: one CLI server per user, with its own credentials, storage, endpoint and connection token.
- `shared-cli`: N replicas behind a load balancer on one shared `session-state/`; a session belongs to the user
  its id names.
- `shared-session`: as shared-cli; many users work in one named session, one writer at a time.

Every pattern whose replicas share one `session-state/` needs a lease per session, not only shared-session: two CLI
servers on one volume can attach the same session at once (nothing in the CLI locks across processes) and corrupt
its history. `build_topology` (copilot_fleet/topology.py) turns this into servers, volumes and a lease store; the
stack config (spec), the target, the local fleet and the fleet client all take the pattern names and the
shared-state rule from here.
"""

from __future__ import annotations

from typing import Literal, get_args

Isolation = Literal["per-user", "shared-cli", "shared-session"]
ISOLATIONS: tuple[Isolation, ...] = get_args(Isolation)

# The patterns whose replicas share one session-state/: every session needs a lease before it is attached.
SHARED_STATE_ISOLATIONS: frozenset[str] = frozenset({"shared-cli", "shared-session"})


def shares_session_state(isolation: str) -> bool:
    """Whether a fleet of this pattern keeps every session on one volume that several CLI servers attach from."""
    return isolation in SHARED_STATE_ISOLATIONS
