"""The fleet client's errors: one type per thing that can go wrong, each with a message that says what to do.

Every error derives from `FleetClientError` (itself a copilot_fleet.errors.FleetError) and from the builtin that
best describes it, so callers can catch either (`except PermissionError` still catches `AccessDenied`).
"""

from __future__ import annotations

from copilot_fleet.errors import FleetError


class FleetClientError(FleetError):
    """Base class of every error the fleet client raises on purpose."""


class InvalidSessionId(FleetClientError, ValueError):
    """A session id (or a part of one) breaks the CLI's rules or the fleet's id format; nothing was sent."""


class AccessDenied(FleetClientError, PermissionError):
    """The user may not touch this session; raised before any server call."""


class SessionInUse(FleetClientError):
    """Another client holds the session's lease."""


class LeaseUnavailable(FleetClientError, RuntimeError):
    """The lease store (Redis) cannot be reached or refused us: fail closed, nothing was attached."""


class LeaseLost(FleetClientError, RuntimeError):
    """The lease expired or was taken over while we held it: stop writing to the session."""


class MembershipUnavailable(FleetClientError, RuntimeError):
    """The membership store cannot be reached: fail closed, access is not granted."""


class ProviderMissing(FleetClientError, ValueError):
    """The session needs a BYOK provider that was not supplied (the CLI does not store it)."""


class SessionNotFound(FleetClientError, LookupError):
    """The CLI has no session with this id (never persisted, or deleted)."""


class ReplicaUnavailable(FleetClientError, ConnectionError):
    """No CLI server of the route answered (connection refused, timed out, or it went away)."""


class SessionDisconnected(ReplicaUnavailable):
    """The connection to an attached session's CLI server ended (the server crashed, restarted or is shutting
    down), mid-turn or before the call. The session is kept on disk: close the handle and resume the session."""


class SessionStateUnwritable(FleetClientError, TimeoutError):
    """A turn got no answer within its timeout, and the session's CLI server cannot write its session-state
    (full or read-only): nothing of the turn could be saved. A TimeoutError, so code that handles turn timeouts
    still catches it. CLI 1.0.102 reports neither (docs/reliability.md, finding 5); the handle asks the server
    to write a small file in the session's workspace, and this is what the server answered."""


class NoRoute(FleetClientError, LookupError):
    """The target has no CLI server for this user (per-user fleet without the user, or no addresses at all)."""


# What the CLI (and the OS under it) says when session-state/ is full or read-only, matched as substrings,
# case-insensitively: "ENOSPC: No space left on device (os error 28)", "Read-only file system (os error 30)".
STORAGE_ERROR_MARKERS = (
    "no space left",
    "enospc",
    "read-only file system",
    "erofs",
    "os error 28",
    "os error 30",
)


def is_storage_error(exc: BaseException | str) -> bool:
    """True when an error's text names a full or read-only file system (the CLI could not write session-state)."""
    text = str(exc).lower()
    return any(marker in text for marker in STORAGE_ERROR_MARKERS)
