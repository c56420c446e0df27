"""How worn a CLI server is, and whether it is past its recycle bounds (`fleet:recycle`).

The CLI never gives memory back, and headless servers are reported to slow down over time until restarted, so a
server is recycled (drained, then started again) once its resident memory passes `maxRssMb` or it has served
`maxSessions` session creates + resumes. The same measurement and the same rule serve the local fleet's
`copilot-fleet recycle` and, on Kubernetes, the health probe: a pod over a bound turns unready (no new
connections) and then fails liveness, so the kubelet restarts the container after running the preStop drain.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from copilot_fleet.pod import procfs

# What the CLI logs (at info) when a process attaches a session.
_SESSION_LOG = re.compile(rb"\[INFO\] (?:Created|Resumed) session: ")
_MATCH_MAX = len(b"[INFO] Resumed session: ")  # every match is this long (Created/Resumed)
_CHUNK = 1 << 20


def _started_at(pid: int) -> float | None:
    age = procfs.age_seconds(pid)
    return None if age is None else time.time() - age


def sessions_served(home: Path, pid: int) -> int | None:
    """Creates + resumes the server logged since it started: its own `logs/process-<ms>-<pid>.log` (the CLI
    writes one per process). None when there is no such log (logLevel none/error log no sessions).

    Only logs named after the process's own start count: in a container the CLI gets the same small PID after
    every restart, and counting the last process's log would recycle the new one again at once."""
    started = _started_at(pid)
    logs = []
    for log in sorted((home / "logs").glob(f"process-*-{pid}.log")):
        stamp = log.name.split("-")[1]
        # The CLI names its log when it starts, after the exec: never before the process's start (1 s of slack
        # for the tick granularity of /proc).
        if started is None or (stamp.isdigit() and int(stamp) / 1000 >= started - 1.0):
            logs.append(log)
    if not logs:
        return None
    total = 0
    for log in logs:
        count = _count_sessions(log)
        if count is None:
            return None
        total += count
    return total


def _count_sessions(log: Path) -> int | None:
    """Session lines in one log, read in bounded pieces. The log sits in the server's home, which a session's tool
    run can write: a link there (to /dev/zero, a FIFO, another user's file) is not followed and anything but a
    regular file is not read, so a local recycler (root) can neither be hung nor made to read without end."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        count, tail = 0, b""
        while chunk := f.read(_CHUNK):
            data = tail + chunk
            count += len(_SESSION_LOG.findall(data))
            # Carry the end of the piece over, for a line cut in two: shorter than a match, it never counts twice.
            tail = data[-(_MATCH_MAX - 1):]
    return count


@dataclass(frozen=True)
class Wear:
    pid: int
    rss_mib: float | None  # None: the process is gone or /proc is unreadable
    sessions_served: int | None  # None: no log to count from

    def over(self, max_rss_mb: float | None, max_sessions: int | None) -> list[str]:
        """Why the server should be recycled (empty: it should not). A bound that cannot be measured is not met."""
        reasons = []
        if max_rss_mb is not None and self.rss_mib is not None and self.rss_mib > max_rss_mb:
            reasons.append(f"RSS {self.rss_mib:.0f} MiB > {max_rss_mb:g} MiB")
        if max_sessions is not None and self.sessions_served is not None and self.sessions_served >= max_sessions:
            reasons.append(f"served {self.sessions_served} sessions >= {max_sessions}")
        return reasons


def measure(pid: int, home: Path | None) -> Wear:
    """`home`: the server's COPILOT_HOME (its logs count the sessions); None: sessions are not counted."""
    rss = procfs.rss_kib(pid)
    return Wear(pid=pid, rss_mib=round(rss / 1024, 1) if rss is not None else None,
                sessions_served=sessions_served(home, pid) if home is not None else None)
