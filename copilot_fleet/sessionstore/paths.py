"""Where a path the CLI sends lands in the store: one relative path per file of one session, or a refusal.

A CLI server with a session filesystem provider sends every path of a session's state in one of two forms,
measured with CLI 1.0.102:

    <session_state_path>/events.jsonl                              the path registered with sessionFs.setProvider
    <COPILOT_HOME>/session-state/<session id>/workspace.yaml       the server's own absolute path (a few files)

The second form differs between servers (each has its own COPILOT_HOME), so both must map to the same key, here
the path relative to the session (`events.jsonl`, `checkpoints/index.md`; the session's root is `""`). The CLI
also stats its initial working directory (`initialCwd`) when it resumes a session; that one path is answered as
an empty directory that is not part of the store.

Anything else is refused before the store is touched, with the session and the reason: a `..` or `.` segment, a
relative path, a NUL byte, the directory of another session, any other absolute path. The check is lexical (the
protocol interprets paths lexically too, and the store has no symlinks to follow).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from copilot_fleet.client.ids import validate_session_id
from copilot_fleet.errors import FleetError

# Bounds that keep one key name and one session's tree small; far above what the CLI uses (longest seen: 72).
MAX_RELATIVE_PATH_BYTES = 1024
MAX_DEPTH = 32


class PathRefused(FleetError, ValueError):
    """A path that is not inside the session it was sent for; the message names the session, path and why."""


@dataclass(frozen=True)
class Resolved:
    """`kind="state"`: a file or directory of the session at `relative`, sent in the `form` "registered"
    (under session_state_path) or "home" (under COPILOT_HOME/session-state/<id>); `kind="cwd"`: the initial
    working directory (a directory with nothing in the store)."""

    kind: Literal["state", "cwd"]
    relative: str = ""
    form: Literal["registered", "home", "cwd"] = "registered"


def _clean_absolute(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute POSIX path, got {path!r}")
    if "\x00" in path:
        raise ValueError(f"{what} contains a NUL byte")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{what} {path!r} contains '.' or '..'")
    return "/" + "/".join(parts)


class SessionPaths:
    """Maps the CLI's paths for one server: `session_state_path` as registered, the server's COPILOT_HOME."""

    def __init__(self, session_state_path: str, copilot_home: str, initial_cwd: str) -> None:
        self.session_state_path = _clean_absolute(session_state_path, "session_state_path")
        self.home_state_dir = _clean_absolute(copilot_home, "COPILOT_HOME") + "/session-state"
        self.initial_cwd = _clean_absolute(initial_cwd, "initial working directory")
        if self.session_state_path == "/":
            raise ValueError("session_state_path must not be '/': every other path would be inside it")
        if _under(self.session_state_path, self.home_state_dir) is not None or _under(
            self.home_state_dir, self.session_state_path
        ) is not None:
            raise ValueError(
                f"session_state_path {self.session_state_path} and the server's {self.home_state_dir} must not "
                "contain each other: a path under both would name two different files"
            )

    def resolve(self, session_id: str, path: object) -> Resolved:
        """The store location of `path` for session `session_id`; PathRefused if it is not the session's."""
        try:
            validate_session_id(session_id)
        except ValueError as exc:
            raise PathRefused(f"refused sessionFs request: {exc}") from None
        if not isinstance(path, str):
            raise PathRefused(f"session {session_id}: a path must be a string, got {type(path).__name__}")
        if not path.startswith("/"):
            raise PathRefused(f"session {session_id}: path {path!r} is not absolute; only absolute paths are served")
        if "\x00" in path:
            raise PathRefused(f"session {session_id}: path {path!r} contains a NUL byte")
        segments = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in segments):
            raise PathRefused(
                f"session {session_id}: path {path!r} contains a '.' or '..' segment; it could leave the session's "
                "directory, so it is refused"
            )
        normal = "/" + "/".join(segments)
        relative = _under(normal, self.session_state_path)
        if relative is not None:
            return Resolved("state", _check_relative(session_id, path, relative), "registered")
        relative = _under(normal, f"{self.home_state_dir}/{session_id}")
        if relative is not None:
            return Resolved("state", _check_relative(session_id, path, relative), "home")
        if normal == self.initial_cwd:
            return Resolved("cwd", "", "cwd")
        other = _under(normal, self.home_state_dir)
        if other:
            owner = other.split("/", 1)[0]
            raise PathRefused(
                f"session {session_id}: path {path!r} belongs to session {owner!r}; a session may only touch its own "
                "files"
            )
        raise PathRefused(
            f"session {session_id}: path {path!r} is outside the session's state ({self.session_state_path}/... or "
            f"{self.home_state_dir}/{session_id}/...); only the session's own files are served"
        )


def _under(path: str, root: str) -> str | None:
    """`path` relative to `root` ('' for the root itself), or None if it is not inside."""
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None


def _check_relative(session_id: str, original: str, relative: str) -> str:
    if len(relative.encode()) > MAX_RELATIVE_PATH_BYTES:
        raise PathRefused(
            f"session {session_id}: path {original!r} is {len(relative.encode())} bytes below the session's "
            f"directory; at most {MAX_RELATIVE_PATH_BYTES} are allowed"
        )
    if relative.count("/") >= MAX_DEPTH:
        raise PathRefused(f"session {session_id}: path {original!r} is nested deeper than {MAX_DEPTH} levels")
    return relative


def parent_of(relative: str) -> str:
    """The parent directory of a relative path ('' for top-level entries and for the root itself)."""
    return posixpath.dirname(relative)
