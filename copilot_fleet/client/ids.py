"""Session ids that say who owns a session, what it is for and when it was made, without ambiguity.

The obvious scheme builds ids as `{user}-{task}-{timestamp}` and recovers the owner with `split("-")[0]`, which gives
"alice" for user "alice-smith" (and lets user "alice" resume "alice-smith"'s sessions). Here the owner is
length-prefixed:

    u-<len(user)>-<user>-<purpose>-<unix seconds>-<nonce>      a user's own session
    s-<name>                                                    a named shared session (membership decides access)

`u-11-alice-smith-code-review-1706932800-3f9a0c1e`: read 11 characters after `u-11-` and the owner is exact;
the purpose may contain `-` because the timestamp and nonce are the last two fields. The nonce (8 hex digits) is
there because the CLI silently starts a new, empty conversation when `create` is given an id that already exists
on disk: two creates by one user for one purpose in the same second must not collide.

Every id is checked against the CLI's rules before anything is sent: ASCII letters, digits, `_` and `-` only,
at most 128 characters (the CLI accepted 129 and rejected 255; we stay below what was seen to work).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from copilot_fleet.sessiondir import MAX_SESSION_ID_LENGTH as MAX_SESSION_ID_LENGTH
from copilot_fleet.sessiondir import SESSION_ID_CHARS_DESCRIPTION as ALLOWED_DESCRIPTION

from .errors import InvalidSessionId

USER_PREFIX = "u-"
SHARED_PREFIX = "s-"
NONCE_HEX_DIGITS = 8

_ALLOWED_RE = re.compile(r"[A-Za-z0-9_-]*")
_NONCE_RE = re.compile(rf"[0-9a-f]{{{NONCE_HEX_DIGITS}}}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")

SessionKind = Literal["user", "shared"]


@dataclass(frozen=True)
class SessionIdParts:
    """What a fleet session id encodes. `owner`/`purpose`/`created_at` for user sessions, `name` for shared ones."""

    kind: SessionKind
    owner: str | None
    purpose: str | None
    created_at: datetime | None
    name: str | None = None
    nonce: str | None = None


def _first_bad_character(value: str) -> tuple[int, str] | None:
    match = _ALLOWED_RE.match(value)
    assert match is not None  # `*` always matches
    end = match.end()
    return None if end == len(value) else (end, value[end])


def validate_id_part(value: object, what: str) -> str:
    """A user, purpose or shared name: a non-empty string of allowed characters."""
    if not isinstance(value, str):
        raise InvalidSessionId(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidSessionId(f"{what} is empty; it needs at least one of {ALLOWED_DESCRIPTION}")
    bad = _first_bad_character(value)
    if bad is not None:
        pos, char = bad
        raise InvalidSessionId(
            f"{what} {value!r} contains {char!r} at position {pos}; session ids allow only {ALLOWED_DESCRIPTION}"
        )
    return value


def validate_session_id(session_id: object) -> str:
    """Check an id against the CLI's rules (characters, length); return it unchanged or raise InvalidSessionId."""
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"session id must be a string, got {type(session_id).__name__}")
    if not session_id:
        raise InvalidSessionId(f"session id is empty; it needs 1 to {MAX_SESSION_ID_LENGTH} of {ALLOWED_DESCRIPTION}")
    bad = _first_bad_character(session_id)
    if bad is not None:
        pos, char = bad
        raise InvalidSessionId(
            f"session id {session_id!r} contains {char!r} at position {pos}; "
            f"the CLI allows only {ALLOWED_DESCRIPTION}"
        )
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(
            f"session id is {len(session_id)} characters long; at most {MAX_SESSION_ID_LENGTH} are allowed"
        )
    return session_id


def _unix_seconds(now: float | datetime | None) -> int:
    if now is None:
        return int(time.time())
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise InvalidSessionId("now= must be timezone-aware (e.g. datetime.now(UTC)) or unix seconds")
        return int(now.timestamp())
    if now < 0:
        raise InvalidSessionId(f"now= must be unix seconds >= 0, got {now}")
    return int(now)


def new_session_id(user: str, purpose: str, now: float | datetime | None = None, *, nonce: str | None = None) -> str:
    """A new id for `user`'s session about `purpose`, created at `now` (default: the current time).

    `nonce` is for reproducible tests only; by default 8 random hex digits keep ids unique.
    """
    validate_id_part(user, "user")
    validate_id_part(purpose, "purpose")
    if nonce is None:
        nonce = secrets.token_hex(NONCE_HEX_DIGITS // 2)
    elif not _NONCE_RE.fullmatch(nonce):
        raise InvalidSessionId(f"nonce {nonce!r} must be {NONCE_HEX_DIGITS} lowercase hex digits")
    session_id = f"{USER_PREFIX}{len(user)}-{user}-{purpose}-{_unix_seconds(now)}-{nonce}"
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        overhead = len(session_id) - len(user) - len(purpose)
        raise InvalidSessionId(
            f"session id would be {len(session_id)} characters; at most {MAX_SESSION_ID_LENGTH} are allowed. "
            f"user ({len(user)}) + purpose ({len(purpose)}) may total at most {MAX_SESSION_ID_LENGTH - overhead}"
        )
    return session_id


def shared_session_id(name: str) -> str:
    """The id of the named shared session `name` (members work in it one writer at a time)."""
    validate_id_part(name, "shared session name")
    session_id = SHARED_PREFIX + name
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(
            f"shared session name is {len(name)} characters; at most {MAX_SESSION_ID_LENGTH - len(SHARED_PREFIX)} "
            "are allowed"
        )
    return session_id


def _not_fleet_id(session_id: str, why: str) -> InvalidSessionId:
    return InvalidSessionId(
        f"session id {session_id!r} is not a fleet session id ({why}); expected "
        f"'u-<len(user)>-<user>-<purpose>-<unix seconds>-<{NONCE_HEX_DIGITS} hex>' or 's-<name>'"
    )


def parse_session_id(session_id: str) -> SessionIdParts:
    """Decode a fleet session id; raise InvalidSessionId if it breaks the CLI's rules or the fleet format."""
    validate_session_id(session_id)
    if session_id.startswith(SHARED_PREFIX):
        name = session_id[len(SHARED_PREFIX) :]
        if not name:
            raise _not_fleet_id(session_id, "the shared session name is empty")
        return SessionIdParts(kind="shared", owner=None, purpose=None, created_at=None, name=name)
    if not session_id.startswith(USER_PREFIX):
        raise _not_fleet_id(session_id, f"it starts with neither {USER_PREFIX!r} nor {SHARED_PREFIX!r}")

    rest = session_id[len(USER_PREFIX) :]
    length_text, sep, rest = rest.partition("-")
    if not sep or not _DECIMAL_RE.fullmatch(length_text) or int(length_text) == 0:
        raise _not_fleet_id(session_id, "no owner length after 'u-'")
    owner_length = int(length_text)
    owner, after_owner = rest[:owner_length], rest[owner_length:]
    if len(owner) != owner_length or not after_owner.startswith("-"):
        raise _not_fleet_id(session_id, f"the owner is not {owner_length} characters followed by '-'")
    fields = after_owner[1:].rsplit("-", 2)
    if len(fields) != 3:
        raise _not_fleet_id(session_id, "purpose, timestamp or nonce missing")
    purpose, ts_text, nonce = fields
    if not purpose:
        raise _not_fleet_id(session_id, "the purpose is empty")
    if not _DECIMAL_RE.fullmatch(ts_text):
        raise _not_fleet_id(session_id, f"timestamp {ts_text!r} is not unix seconds")
    if not _NONCE_RE.fullmatch(nonce):
        raise _not_fleet_id(session_id, f"nonce {nonce!r} is not {NONCE_HEX_DIGITS} lowercase hex digits")
    return SessionIdParts(
        kind="user",
        owner=owner,
        purpose=purpose,
        created_at=datetime.fromtimestamp(int(ts_text), tz=UTC),
        nonce=nonce,
    )


def is_fleet_session_id(session_id: str) -> bool:
    """True when `session_id` parses as a fleet id (used to filter listings that include foreign sessions)."""
    try:
        parse_session_id(session_id)
    except InvalidSessionId:
        return False
    return True
