"""Is a session's `events.jsonl` one coherent history?

The CLI appends one JSON event per line; every event names its predecessor (`parentId`), and the first is the
session's one `session.start`. A single writer therefore produces a chain: each line's `parentId` is the id of the
line before it. A second writer that attached the same session appends events whose parents are the last event
*it* saw, so the chain breaks (a fork), and `create_session` on an existing id appends a second `session.start`.

Verified on CLI 1.0.102: two raw SDK clients on two replicas writing one session produce forks, while a lease
serialising them does not. A last line cut short by a crash or a full disk (a torn tail) is dropped by the CLI on
the next resume, so it is reported but is not a divergence; a torn line *followed by* more events is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class History:
    path: str
    events: int = 0
    starts: int = 0  # session.start events: exactly 1 in a coherent history
    forks: int = 0  # events whose parent is not the line before
    torn_tail: bool = False  # the last line is not complete JSON (tolerated: the CLI drops it on resume)
    torn_inside: int = 0  # unparseable lines followed by more events (never tolerated)
    wrong_session: int = 0  # a session.start naming another session id
    missing: bool = False
    types: list[str] = field(default_factory=list)

    @property
    def coherent(self) -> bool:
        return not self.missing and self.starts == 1 and self.forks == 0 and self.torn_inside == 0 \
            and self.wrong_session == 0

    def describe(self) -> str:
        if self.missing:
            return f"{self.path}: no events.jsonl"
        return (f"{self.path}: {self.events} events, {self.starts} session.start, {self.forks} fork(s), "
                f"{self.torn_inside} torn line(s) inside{', torn tail' if self.torn_tail else ''}")


def check_history(events_file: Path, session_id: str | None = None) -> History:
    """Read one events.jsonl and report how coherent it is (see the module docstring)."""
    result = History(path=str(events_file))
    try:
        raw = events_file.read_bytes()
    except FileNotFoundError:
        result.missing = True
        return result
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    previous: str | None = None
    pending_torn = 0
    for index, line in enumerate(lines):
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError:
            if index == len(lines) - 1:
                result.torn_tail = True
            else:
                pending_torn += 1
            continue
        result.torn_inside += pending_torn
        pending_torn = 0
        result.events += 1
        kind = str(event.get("type"))
        result.types.append(kind)
        if kind == "session.start":
            result.starts += 1
            data = event.get("data") or {}
            if session_id is not None and data.get("sessionId") not in (None, session_id):
                result.wrong_session += 1
            if previous is not None:
                result.forks += 1  # a second start is a second history on top of the first
        elif event.get("parentId") != previous:
            result.forks += 1
        previous = event.get("id")
    return result


def turn_contents(events_file: Path) -> list[str]:
    """The `user.message` contents in file order (what the CLI will replay to the model on resume)."""
    out: list[str] = []
    try:
        text = events_file.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == "user.message":
            content = (event.get("data") or {}).get("content")
            if isinstance(content, str):
                out.append(content)
    return out
