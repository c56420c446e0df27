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


_IPV4_LOOPBACK, _IPV4_ANY = "0100007F", "00000000"  # /proc/net/tcp's hex, host byte order


def loopback_listener_uids(port: int) -> set[int]:
    """The owners (uids) of the sockets listening on 127.0.0.1:`port`, or on 0.0.0.0:`port` (which takes it too),
    from /proc/net/tcp."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    uids: set[int] = set()
    for line in lines:
        fields = line.split()
        address, _, hex_port = fields[1].partition(":")
        if fields[3] == _LISTEN and int(hex_port, 16) == port and address in (_IPV4_LOOPBACK, _IPV4_ANY):
            uids.add(int(fields[7]))
    return uids


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


# Ports this process handed out lately, with when: a port is not handed out again until its server has had time to
# bind it (after that, the bind check sees it taken, or it was freed again). Forgetting them keeps blocks findable
# in a long test session that hands out thousands of ports.
_HANDED_OUT_FOR = 120.0  # seconds
_handed_out: dict[int, float] = {}
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
    and fault runs start side by side. A random start below the ephemeral range keeps parallel runs apart and keeps
    the kernel from giving one of the ports to a bind(0) before our server binds it; from there the range is
    scanned (wrapping), skipping past any port that is taken or that this process handed out in the last two
    minutes. `attempts` bounds the blocks whose ports are tried with bind()."""
    low, high = _below_ephemeral_range()
    span = high - low - count
    start = random.Random(os.getpid() ^ time.monotonic_ns()).randrange(span)
    with _handed_out_lock:
        now = time.monotonic()
        for port in [p for p, at in _handed_out.items() if now - at > _HANDED_OUT_FOR]:
            del _handed_out[port]
        offset, tried = 0, 0
        while offset < span and tried < attempts:
            base = low + (start + offset) % span
            recent = [port for port in range(base, base + count) if port in _handed_out]
            if recent:
                offset += recent[-1] - base + 1
                continue
            tried += 1
            taken = _first_taken(base, count)
            if taken is None:
                _handed_out.update(dict.fromkeys(range(base, base + count), now))
                return base
            offset += taken - base + 1
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1 found ({tried} blocks tried)")


def _first_taken(base: int, count: int) -> int | None:
    """The first port of base .. base+count-1 that cannot be bound now (None: all can)."""
    socks: list[socket.socket] = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            socks.append(s)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return port
        return None
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port that is free on 127.0.0.1 now and that this process has not handed out in the last two minutes."""
    return free_port_block(1)
