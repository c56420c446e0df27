"""What a tool run inside one user's CLI can reach: started by the isolation test with the CLI's own user and
environment, it tries every way to another user's history and prints what happened, as JSON.

Standard library only (it runs as an unprivileged user under the system's python3, which cannot see the
project's virtualenv): Redis is spoken in its plain text protocol.

argv[1]: a JSON object with `files` (paths to try to read: credentials, the provider's /proc entries), `redis_port`,
`foreign_keys` (another user's history keys), `own_user` and `own_password` (the user's own store credentials, as
if they had leaked).
"""

from __future__ import annotations

import json
import os
import socket
import sys


def resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Redis:
    """One connection; `call` returns the first line of the reply ("-NOPERM ...", "$-1", "+OK", ...)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, *parts: str) -> str:
        self.sock.sendall(resp(*parts))
        line = self.file.readline().decode().rstrip("\r\n")
        if line.startswith("$") and line != "$-1":
            self.file.read(int(line[1:]) + 2)
            return "read: a value"
        if line.startswith("*"):
            return "read: a list"
        return line


def read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(64)
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    return "read"


def main() -> None:
    plan = json.loads(sys.argv[1])
    report: dict[str, object] = {"uid": os.getuid()}
    report["env_credentials"] = sorted(
        k for k, v in os.environ.items() if "REDIS" in k or "STORE" in k or "redis://" in v
    )
    report["files"] = {path: read_file(path) for path in plan["files"]}
    anonymous = Redis(plan["redis_port"])
    report["anonymous"] = {key: anonymous.call("GET", key) for key in plan["foreign_keys"]}
    own = Redis(plan["redis_port"])
    report["own_auth"] = own.call("AUTH", plan["own_user"], plan["own_password"])
    report["with_own_credentials"] = {key: own.call("GET", key) for key in plan["foreign_keys"]}
    report["list_keys"] = own.call("KEYS", "*")
    report["scan_keys"] = own.call("SCAN", "0")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
