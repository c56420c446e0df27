"""TCP options of another process's sockets: what HAProxy, the CLI and the test model set on their ends of a
connection, and (as an experiment) TCP_NODELAY set on the CLI's end from outside, to attribute what its own socket
costs. Linux only; needs ptrace rights over the process (root, or CAP_SYS_PTRACE): `available()` says.

Through `pidfd_getfd(2)`: it duplicates a descriptor of another process into this one, so the option is read (or
set) on the very socket that process uses. Python's os module has `pidfd_open` but not `pidfd_getfd`, hence the
raw syscall (number 438 on every architecture: it came after the syscall tables were unified).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from dataclasses import dataclass

_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class TcpSocket:
    """One connected TCP socket of a process: its addresses (host, port) and whether TCP_NODELAY is on."""

    fd: int
    local: tuple[str, int]
    peer: tuple[str, int]
    nodelay: bool


def _dup_from(pidfd: int, fd: int) -> socket.socket | None:
    new = _libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
    if new < 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            raise PermissionError(err, f"pidfd_getfd: no ptrace rights over the process ({os.strerror(err)})")
        return None  # closed meanwhile
    return socket.socket(fileno=new)


def _sockets(pid: int) -> list[tuple[int, socket.socket]]:
    """Duplicates of the process's connected TCP sockets (the caller closes them)."""
    out: list[tuple[int, socket.socket]] = []
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            sock = _dup_from(pidfd, int(name))
            if sock is None:
                continue
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                sock.close()
                continue
            try:
                sock.getpeername()
            except OSError:  # listening, or not connected
                sock.close()
                continue
            out.append((int(name), sock))
    finally:
        os.close(pidfd)
    return out


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """Every connected TCP socket of process `pid` with its TCP_NODELAY."""
    found = []
    for fd, sock in _sockets(pid):
        with sock:
            found.append(TcpSocket(fd, sock.getsockname()[:2], sock.getpeername()[:2],
                                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0))
    return found


def set_nodelay(pid: int, peer: tuple[str, int] | None, on: bool) -> int:
    """Set (or clear) TCP_NODELAY on process `pid`'s sockets connected to `peer` (None: all of its connected TCP
    sockets); how many were changed."""
    changed = 0
    for _, sock in _sockets(pid):
        with sock:
            if peer is None or sock.getpeername()[:2] == peer:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if on else 0)
                changed += 1
    return changed


def available(pid: int) -> str | None:
    """None when the sockets of `pid` can be read from here; else why not."""
    try:
        tcp_sockets(pid)
    except PermissionError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot inspect process {pid}: {exc}"
    return None
