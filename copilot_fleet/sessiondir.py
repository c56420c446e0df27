"""What the Copilot CLI keeps in a `session-state/` directory, in one place (measured with CLI 1.0.102):

```
session-state/
  <id>/                                  one session: a real directory (never a link) named by a session id
    events.jsonl                         the history, append-only: every turn appends to it; resume replays it
    workspace.yaml                       id, cwd, client name, created_at, updated_at (flat `key: value` lines)
    inuse.<pid>.lock                     the CLI with that PID has the session attached (removed on disconnect)
    inuse.<pid>.hold                     flocked by that CLI while it has the session attached (the lock dies
                                         with the process, so a crashed CLI holds nothing)
    checkpoints/ files/ research/
  .session-operation-locks/<id>.lock     empty; the CLI leaves it behind, also after its own delete
```

Session ids follow the CLI's rule: ASCII letters, digits, `_` and `-` (the CLI accepted 129 characters and refused
255; we stay at 128). Every other name in `session-state/` (the dot-directories above, the janitor's trash, and
anything a session's tool run may plant: links, files, odd names) is not a session.

Everything here is the standard library only: the programs beside each CLI server (copilot_fleet.pod), the local
fleet, the fleet client and the tests all read the format through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

EVENTS = "events.jsonl"
WORKSPACE = "workspace.yaml"
LOCKS_DIR = ".session-operation-locks"
INUSE_HOLD_GLOB = "inuse.*.hold"
INUSE_LOCK_GLOB = "inuse.*.lock"
MAX_SESSION_ID_LENGTH = 128
SESSION_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
SESSION_ID_CHARS_DESCRIPTION = "ASCII letters, digits, '_' and '-'"

# Events after which a session waits for its user: no turn in flight.
IDLE_EVENTS = frozenset({"assistant.turn_end", "session.start", "session.resume", "session.shutdown",
                         "session.idle", "session.model_change", "session.info", "session.error"})


def is_session_id(name: str) -> bool:
    """Whether `name` is a session id the CLI accepts, so a directory of that name may be a session."""
    return 0 < len(name) <= MAX_SESSION_ID_LENGTH and not name.startswith(".") and set(name) <= SESSION_ID_CHARS


def inuse_lock(pid: int) -> str:
    """The marker a CLI with `pid` keeps in a session directory while it has the session attached."""
    return f"inuse.{pid}.lock"


def operation_lock(session_id: str) -> str:
    """The name of a session's lock file in LOCKS_DIR."""
    return f"{session_id}.lock"


def session_dirs(session_state: Path) -> list[Path]:
    """The sessions in `session-state/`: real directories (a link is never followed) named by a session id, sorted.
    Empty if the directory cannot be read."""
    try:
        entries = list(session_state.iterdir())
    except OSError:
        return []
    return sorted(d for d in entries if is_session_id(d.name) and d.is_dir() and not d.is_symlink())


def attached_dirs(session_state: Path, pid: int) -> list[Path]:
    """The sessions the CLI with `pid` has attached (its in-use marker is in the session directory)."""
    marker = inuse_lock(pid)
    return [d for d in session_dirs(session_state) if (d / marker).exists()]


def last_event_type(events: Path) -> str | None:
    """The `type` of the last complete event in an events.jsonl (None if it has none or cannot be read). Only the
    file's tail is read: a history grows for as long as the session lives."""
    try:
        with open(events, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return str(json.loads(line).get("type"))
        except ValueError:
            continue  # a partial line being written, or the cut start of the tail
    return None
