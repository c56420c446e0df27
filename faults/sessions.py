"""Sessions as the fault scenarios drive them: small requests, `remember:`/`recall` bookkeeping, and a reply that
reports a server that died mid-turn as `ReplicaGone`.

With SDK 1.0.25 alone, a turn on a CLI server that dies returns only at its timeout (the SDK does not wake
`send_and_wait` when the connection drops). The fleet client ends such a turn itself with `SessionDisconnected`
(client/liveness.py); the scenarios rely on that, as an application would, so their `detect` figures measure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copilot_fleet.client import SessionDisconnected
from copilot_fleet.errors import FleetError
from copilot_fleet.timescale import scaled

if TYPE_CHECKING:
    from copilot_fleet.client import FleetSession

# No tools and a one-line system prompt instead of the CLI's 21 KB one: cheaper turns, same persistence path.
SMALL: dict[str, Any] = {
    "available_tools": [],
    "system_message": {"mode": "replace", "content": "You are the copilot-fleet fault-run assistant."},
}

_RECALLED = re.compile(r"recalled: (.*)$", re.MULTILINE)


def call_timeout() -> float:
    """The fleet client's bound on one call to a CLI server in the scenarios: 30 s on an idle machine, times the
    machine's time scale. A create or a turn takes several times longer on a busy machine; the scenarios judge how
    the fleet handles faults, not how fast the machine is."""
    return scaled(30)


class ReplicaGone(FleetError, ConnectionError):
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


async def reply_watching(session: FleetSession, prompt: str, *, timeout: float | None = None) -> str | None:
    """`session.reply(prompt)`, with the end of the connection to its server raised as ReplicaGone (`timeout`:
    by default 60 s times the machine's time scale)."""
    try:
        return await session.reply(prompt, timeout=scaled(60) if timeout is None else timeout)
    except SessionDisconnected as exc:
        raise ReplicaGone(str(exc)) from exc


async def close_quietly(session: FleetSession | None) -> None:
    """Detach and release the lease; a dead server makes detaching fail, which is expected here."""
    if session is None:
        return
    # A failure is expected and harmless: the lease is released in close()'s finally block either way.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.close(), 30)


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
