"""Is a port on 127.0.0.1 free, and if not, which process listens on it (from /proc/net/tcp and /proc/*/fd)."""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time
from pathlib import Path

from copilot_fleet.pod import procfs

_LISTEN = "0A"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could bind host:port now. SO_REUSEADDR ignores connections in TIME_WAIT (what the OS
    and our servers do too), so only a real listener or bound socket counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, st, inode = fields[1], fields[3], fields[9]
            if st == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def port_holder_pid(port: int) -> int | None:
    """The PID of the process listening on `port`; None if nothing listens or it is another user's (only root
    sees those)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for pid in procfs.all_pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    return pid
            except OSError:
                continue
    return None


def port_holder(port: int) -> str | None:
    """`pid 123 (redis-server *:6390)` for the process listening on `port`, if it can be told (other users'
    processes are only visible to root)."""
    pid = port_holder_pid(port)
    if pid is not None:
        return procfs.describe(pid)
    return "a process this user cannot see" if _listening_inodes(port) else None


# Ports handed out by this process: a block is never handed out twice, even before its server has bound it.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _below_ephemeral_range() -> tuple[int, int]:
    """Where to pick from: below the kernel's ephemeral range, which bind(port 0) and outgoing connections draw
    from, so that a port we pick and free for a moment is never given to someone else's bind(0) meanwhile."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = min(ephemeral_low, 32768) - 768
    return (20000, high) if high - 20000 >= 4096 else (10000, max(high, 14096))


def free_port_block(count: int, attempts: int = 200) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1 now: for fleets that tests, benchmarks
    and fault runs start side by side. Random bases below the ephemeral range keep parallel runs apart and keep
    the kernel from giving one of them to a bind(0) before our server binds it; this process never gets the
    same port twice."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    low, high = _below_ephemeral_range()
    with _handed_out_lock:
        for _ in range(attempts):
            base = rng.randrange(low, high - count)
            block = range(base, base + count)
            if _handed_out.intersection(block):
                continue
            socks: list[socket.socket] = []
            try:
                for port in block:
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
            _handed_out.update(block)
            return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1 found in {attempts} attempts")


def free_port() -> int:
    """One port that is free on 127.0.0.1 now and that this process has not handed out before."""
    return free_port_block(1)
