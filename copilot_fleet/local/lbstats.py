"""What HAProxy thinks of each replica (UP, DOWN, ...), from its admin socket (`show stat`)."""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

from copilot_fleet.local.plan import HAPROXY_BACKEND


def show_stat(socket_path: Path, timeout: float = 2.0) -> list[dict[str, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        s.sendall(b"show stat\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace").lstrip("# ")
    return list(csv.DictReader(io.StringIO(text)))


def backend_rows(socket_path: Path, backend: str = HAPROXY_BACKEND) -> dict[str, dict[str, str]]:
    """Replica name -> its `show stat` row (status, chkfail: failed health checks, downtime, ...). Empty if
    HAProxy does not answer."""
    try:
        rows = show_stat(socket_path)
    except OSError:
        return {}
    return {r["svname"]: r for r in rows
            if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}


def backend_states(socket_path: Path, backend: str = HAPROXY_BACKEND) -> dict[str, str]:
    """Replica name -> HAProxy's status for it (`UP`, `DOWN`, `UP 1/2`, `no check`, ...). Empty if HAProxy does
    not answer."""
    try:
        rows = show_stat(socket_path)
    except OSError:
        return {}
    return {r["svname"]: r["status"] for r in rows
            if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}
