"""Sessions as the fault scenarios drive them: small requests, `remember:`/`recall` bookkeeping, and a reply that
notices a server that died mid-turn.

Why `reply_watching`: with SDK 1.0.25, when the CLI server behind a TCP connection dies during a turn, the SDK's
reader thread fails the pending JSON-RPC requests and marks the client disconnected, but `send_and_wait` is
waiting for the session's idle *event*, which never comes: it returns only at its timeout (60 s by default). An
application would wait that long for every crash. The scenarios wait for the reply or the connection's end,
whichever comes first, so a crash costs milliseconds (docs/reliability.md reports both).
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copilot_fleet.client import FleetSession

# No tools and a one-line system prompt instead of the CLI's 21 KB one: cheaper turns, same persistence path.
SMALL: dict[str, Any] = {
    "available_tools": [],
    "system_message": {"mode": "replace", "content": "You are the copilot-fleet fault-run assistant."},
}

_RECALLED = re.compile(r"recalled: (.*)$", re.MULTILINE)


class ReplicaGone(ConnectionError):
    """The connection to the session's CLI server ended while we waited for a reply."""


def recalled_words(reply: str | None) -> list[str] | None:
    """The words of a test-model `recall` answer, oldest first; None if the reply is not a recall answer."""
    if reply is None:
        return None
    m = _RECALLED.search(reply)
    if m is None:
        return None
    body = m.group(1).strip()
    return [] if body == "(nothing)" else [w.strip() for w in body.split(",") if w.strip()]


def connection_closed(session: FleetSession) -> bool:
    """Whether the SDK client the session is attached through has lost its connection (private SDK state: the
    pinned SDK has no public accessor; unknown reads as open)."""
    client = getattr(session, "_client", None)
    return getattr(client, "_state", "connected") == "disconnected"


async def reply_watching(session: FleetSession, prompt: str, *, timeout: float = 60.0,
                         poll: float = 0.05) -> str | None:
    """`session.reply(prompt)`, but raise ReplicaGone as soon as the connection to its server ends."""
    task = asyncio.ensure_future(session.reply(prompt, timeout=timeout))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if connection_closed(session):
                raise ReplicaGone(f"CLI server {session.address} went away during the turn")
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - the cancelled call's own error does not matter any more
                pass


async def close_quietly(session: FleetSession | None) -> None:
    """Detach and release the lease; a dead server makes detaching fail, which is expected here."""
    if session is None:
        return
    try:
        await asyncio.wait_for(session.close(), 30)
    except Exception:  # noqa: BLE001 - the lease is released in close()'s finally block either way
        pass


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    mode: int
    kind: str  # f, d, l


def snapshot_tree(root: Path) -> dict[str, Entry]:
    """Every file, directory and link under `root` (relative path -> size, mtime, mode): for before/after checks."""
    out: dict[str, Entry] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            try:
                st = full.lstat()
            except FileNotFoundError:
                continue
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            # A directory's size and mtime change with its entries, which the file entries already show.
            size = 0 if kind == "d" else st.st_size
            mtime = 0 if kind == "d" else st.st_mtime_ns
            out[str(full.relative_to(root))] = Entry(size, mtime, stat.S_IMODE(st.st_mode), kind)
    return out


def tree_changes(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """What differs between two snapshots, one line per path."""
    out = [f"+ {p}" for p in sorted(set(after) - set(before))]
    out += [f"- {p}" for p in sorted(set(before) - set(after))]
    out += [f"~ {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return out
