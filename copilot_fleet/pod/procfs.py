"""What /proc says about a process: alive or not, its session, start time, command line, memory.

Linux only (the local fleet runs on Linux). Every reader returns None when the process is gone or unreadable
instead of raising: processes come and go between two reads.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces and parentheses)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def state(pid: int) -> str | None:
    """One-letter state (R, S, D, T, Z, ...), or None when there is no such process."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def is_alive(pid: int) -> bool:
    """True for a process that exists and is not a zombie (a zombie has exited; only its exit status is left)."""
    s = state(pid)
    return s is not None and s not in ("Z", "X")


def session_id(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the PID, it identifies a process across PID reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def environ(pid: int) -> dict[str, str] | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            out[key] = value
    return out


def user_name(pid: int) -> str | None:
    """The name of the process's real user (or its uid if it has no name), None when the process is gone. From
    `status`, not from the owner of /proc/<pid>: that is root for a non-dumpable process (the CLI, sealed_cli.py)."""
    try:
        uid = next(int(line.split()[1]) for line in (PROC / str(pid) / "status").read_text().splitlines()
                   if line.startswith("Uid:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) in KiB."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir(PROC) if d.isdigit()]


def session_members(sid: int) -> list[int]:
    """Live processes in session `sid`. Linux never hands out a PID still used as a session id, so every member
    of the session a supervisord led belongs to that fleet, even after supervisord itself is gone."""
    return [pid for pid in all_pids() if session_id(pid) == sid and is_alive(pid)]


def describe(pid: int) -> str:
    """`pid 123 (redis-server 127.0.0.1:6390)` for messages."""
    args = cmdline(pid)
    return f"pid {pid} ({' '.join(args)[:120]})" if args else f"pid {pid}"


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def uptime_seconds() -> float:
    return float((PROC / "uptime").read_text().split()[0])


def age_seconds(pid: int) -> float | None:
    """How long the process has been running."""
    started = start_time(pid)
    if started is None:
        return None
    return max(0.0, uptime_seconds() - started / clock_ticks())
