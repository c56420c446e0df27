"""The CLI's per-start log files: each start of a CLI server writes `$COPILOT_HOME/logs/process-<ms>-<pid>.log`
(CLI 1.0.102), and nothing removes them, so a server that restarts often (a crash loop, recycling) fills its home.
`prune` keeps the newest few, and never the log of a process that still runs.

The directory belongs to the CLI's user, and so to anything a session's tool run does: it is opened without
following links (from its parent), and each file is removed by name relative to it, never through a link.
Used by `copilot-fleet up` and by the janitor (`--cli-logs DIR`) of local fleets, and by the CLI container's command
in a pod (copilot_fleet/pod/start.py), as the process about to become the CLI.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

KEEP = 5  # per server: the current start and the few before it, for a crash's story
_LOG = re.compile(r"process-([0-9]{1,16})-([0-9]{1,10})\.log", re.ASCII)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it exists
    return True


def prune(logs_dir: Path, keep: int = KEEP, starting_pid: int | None = None) -> list[str]:
    """Remove all but the newest `keep` per-start logs in `logs_dir`; returns the names removed. A missing
    directory, or a link where it should be, removes nothing. `starting_pid`: the PID the CLI is about to start
    as (the caller's, before it execs the CLI): logs with that PID are earlier processes', whatever runs now (in a
    container every start is PID 1)."""
    try:
        parent = os.open(logs_dir.parent, _DIR_FLAGS)
    except OSError:
        return []
    try:
        try:
            fd = os.open(logs_dir.name, _DIR_FLAGS, dir_fd=parent)
        except OSError:
            return []
    finally:
        os.close(parent)
    removed: list[str] = []
    try:
        logs = []
        for name in os.listdir(fd):
            if (match := _LOG.fullmatch(name)) is None:
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                logs.append((int(match.group(1)), int(match.group(2)), name))
        logs.sort(reverse=True)  # newest start first
        for _, pid, name in logs[keep:]:
            if pid != starting_pid and _alive(pid):
                continue
            try:
                os.unlink(name, dir_fd=fd)
                removed.append(name)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed
