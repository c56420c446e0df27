"""Health of a Copilot CLI server: a real round trip, not a TCP connect.

The check opens a TCP connection, authenticates with the connection token (JSON-RPC `connect`, which answers
`{"ok": true, "version", "protocolVersion"}`), then asks `status.get`. Both go over the CLI's wire protocol:
JSON-RPC 2.0 with `Content-Length` framing. One deadline bounds the whole exchange, so a server that accepts
TCP but never answers (hung event loop, a black-holed port, something else listening) fails within `timeout`.

Done by hand instead of through the SDK on purpose: `import copilot` alone costs about 0.7 s, a `CopilotClient`
start/stop about as much again, while this check takes a few milliseconds on loopback (docs/operations.md). That
matters for a Kubernetes exec probe that runs every few seconds in every pod.

Command line (Kubernetes exec probe, HAProxy external check, scripts):

    python -m copilot_fleet.pod.health --host 127.0.0.1 --port 4321 [--token-file F] [--timeout 2] [--json]
        [--recycle-rss-mb MIB] [--recycle-sessions N] [--home DIR] [--ready-file FILE]

With `--ready-file` (store mode) the server is healthy only once its session store provider registered: the file
exists, names this port and a live provider (copilot_fleet/pod/provider_ready.py).

With recycle bounds, a server that answers but whose process (found from the listening port, so on this machine)
is past a bound fails too: that is how a Kubernetes pod gets recycled (copilot_fleet/pod/wear.py).

The token comes from `--token-file`, else `$COPILOT_CONNECTION_TOKEN` (the variable the CLI server itself reads,
so inside the CLI's container the probe needs no extra configuration). Exit 0 when healthy, 1 when not, 2 on
bad usage; one line of output either way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from copilot_fleet.argtypes import positive, secret_from_file_or_env
from copilot_fleet.errors import FleetError
from copilot_fleet.nodelay import open_tcp

DEFAULT_TIMEOUT = 2.0
TOKEN_ENV = "COPILOT_CONNECTION_TOKEN"
HOME_ENV = "COPILOT_HOME"
# An answer to `connect`/`status.get` is about 100 bytes; anything huge is not a CLI server talking.
MAX_MESSAGE_BYTES = 1 << 20
MAX_HEADER_LINES = 32
AUTH_FAILED_CODE = -32002


class HealthCheckError(FleetError):
    """Why a check failed; the message is what the one-line report says."""


@dataclass(frozen=True)
class HealthResult:
    """One check of one server."""

    address: str
    ok: bool
    latency_ms: float
    version: str | None = None
    protocol_version: int | None = None
    error: str | None = None

    def line(self) -> str:
        """One line for a probe's output or a log."""
        if self.ok:
            return (f"ok {self.address}: CLI {self.version} (protocol {self.protocol_version}) answered in "
                    f"{self.latency_ms:.1f} ms")
        return f"FAIL {self.address}: {self.error} (after {self.latency_ms:.1f} ms)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError naming the problem otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (for example 127.0.0.1:4321)")
    return host.strip("[]"), int(port)


class _Connection:
    """Content-Length framed JSON-RPC over one socket, every read and write bounded by one deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._buffer = b""
        self._next_id = 0

    def _remaining(self, what: str) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise HealthCheckError(f"no answer to {what} in time")
        return left

    def _recv_more(self, what: str) -> None:
        self._sock.settimeout(self._remaining(what))
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            raise HealthCheckError(f"no answer to {what} in time (the server accepted the connection but did "
                                   "not reply)") from None
        if not chunk:
            raise HealthCheckError(f"the server closed the connection during {what}")
        self._buffer += chunk

    def _read_message(self, what: str) -> dict[str, Any]:
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 64 * 1024:
                raise HealthCheckError(f"{what}: no JSON-RPC header in the first 64 KiB; not a Copilot CLI server?")
            self._recv_more(what)
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        length: int | None = None
        for line in head.split(b"\r\n")[:MAX_HEADER_LINES]:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise HealthCheckError(f"{what}: bad Content-Length {value.strip()!r}") from None
        if length is None or not 0 <= length <= MAX_MESSAGE_BYTES:
            raise HealthCheckError(f"{what}: the answer has no usable Content-Length; not a Copilot CLI server?")
        while len(self._buffer) < length:
            self._recv_more(what)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        try:
            message = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HealthCheckError(f"{what}: the answer is not JSON; not a Copilot CLI server?") from None
        if not isinstance(message, dict):
            raise HealthCheckError(f"{what}: the answer is not a JSON-RPC message")
        return message

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()
        self._sock.settimeout(self._remaining(method))
        try:
            self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except TimeoutError:
            raise HealthCheckError(f"could not send {method} in time") from None
        while True:  # the server may interleave notifications or requests of its own: skip them
            message = self._read_message(method)
            if message.get("id") != request_id or ("result" not in message and "error" not in message):
                continue
            if "error" in message:
                error = message["error"] if isinstance(message["error"], dict) else {}
                code, text = error.get("code"), error.get("message", "?")
                if code == AUTH_FAILED_CODE or text in ("AUTHENTICATION_FAILED", "AUTHENTICATION_REQUIRED"):
                    raise HealthCheckError(f"{method}: the server rejected the connection token ({text}); check "
                                           f"{TOKEN_ENV} / --token-file")
                raise HealthCheckError(f"{method}: JSON-RPC error {code}: {text}")
            result = message["result"]
            if not isinstance(result, dict):
                raise HealthCheckError(f"{method}: unexpected result {result!r}")
            return result


def check(address: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> HealthResult:
    """Connect, authenticate, ask `status.get`; healthy only if all of it answers within `timeout` seconds."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    host, port = parse_address(address)
    started = time.monotonic()
    deadline = started + timeout

    def elapsed_ms() -> float:
        return (time.monotonic() - started) * 1000

    try:
        try:
            sock = open_tcp(host, port, timeout)
        except TimeoutError:
            raise HealthCheckError(f"TCP connect timed out after {timeout:g} s") from None
        except OSError as exc:
            raise HealthCheckError(f"TCP connect failed: {exc.strerror or exc}") from None
        with sock:
            conn = _Connection(sock, deadline)
            hello = conn.call("connect", {"token": token} if token else {})
            if hello.get("ok") is not True:
                raise HealthCheckError(f"connect: the server did not answer ok ({hello!r})")
            status = conn.call("status.get", {})
    except HealthCheckError as exc:
        return HealthResult(address, False, elapsed_ms(), error=str(exc))
    except OSError as exc:  # reset mid-exchange and the like
        return HealthResult(address, False, elapsed_ms(), error=f"connection failed: {exc.strerror or exc}")
    version = status.get("version")
    protocol = status.get("protocolVersion")
    return HealthResult(
        address,
        True,
        elapsed_ms(),
        version=str(version) if version is not None else None,
        protocol_version=int(protocol) if isinstance(protocol, int) else None,
    )


def check_many(addresses: Sequence[str], token: str | None, timeout: float = DEFAULT_TIMEOUT) -> list[HealthResult]:
    """Check several servers at once (threads), results in the order given: a status table costs one timeout."""
    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        return list(pool.map(lambda a: check(a, token, timeout), addresses))


def read_token(token_file: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The connection token: the file's content (stripped) if given, else $COPILOT_CONNECTION_TOKEN, else None."""
    return secret_from_file_or_env(token_file, "--token-file", TOKEN_ENV, environ)


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError(f"{value} is out of range: more than 0 and at most 60 seconds")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m copilot_fleet.pod.health",
        description="Check one Copilot CLI server with a real JSON-RPC round trip (connect with the connection "
                    "token, then status.get). Exit 0 if healthy, 1 if not; one line of output.",
    )
    p.add_argument("--host", help="server host (default 127.0.0.1, or the address given with --address)")
    p.add_argument("--port", type=int, help="server port")
    p.add_argument("--address", help="host:port instead of --host/--port")
    p.add_argument("--token-file", help=f"file holding the connection token (default: ${TOKEN_ENV})")
    p.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT,
                   help=f"seconds for the whole check (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--ready-file", type=Path, default=None, metavar="FILE",
                   help="store mode: the session store provider's ready file; the server counts as healthy only "
                        "once its provider registered (copilot_fleet.pod.provider_ready)")
    bounds = p.add_argument_group(
        "recycle bounds (fleet:recycle)",
        "fail, although the server answers, once the CLI listening on --port on this machine is past a bound: on "
        "Kubernetes the pod then leaves the Service (readiness) and is restarted after its preStop drain (liveness)")
    bounds.add_argument("--recycle-rss-mb", type=positive(int), default=None, metavar="MIB",
                        help="resident memory (VmRSS) above this many MiB")
    bounds.add_argument("--recycle-sessions", type=positive(int), default=None, metavar="N",
                        help="this many session creates + resumes served since the process started")
    bounds.add_argument("--pid", type=positive(int), default=None,
                        help="the CLI's PID (default: the process listening on --port). In a pod the CLI is PID 1 "
                             "and non-dumpable: its sockets cannot be traced to it, so the probe names it")
    bounds.add_argument("--home", default=None, metavar="DIR",
                        help=f"the server's COPILOT_HOME, whose logs count the sessions (default ${HOME_ENV})")
    return p


def recycle_reasons(port: int, home: Path | None, max_rss_mb: int | None, max_sessions: int | None,
                    pid: int | None = None, ready_file: Path | None = None) -> list[str]:
    """Why the CLI (`pid`; in store mode the provider's child named in its ready file; else the one listening on
    `port` here) is past its recycle bounds (empty: it is not, or it cannot be told)."""
    from copilot_fleet.pod.ports import port_holder_pid
    from copilot_fleet.pod.provider_ready import cli_pid
    from copilot_fleet.pod.wear import measure

    if pid is None:
        pid = cli_pid(ready_file) if ready_file is not None else port_holder_pid(port)
    if pid is None:
        return []  # not visible from here (another user's process, another host): the bound cannot be judged
    return measure(pid, home).over(max_rss_mb, max_sessions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.address and (args.host or args.port):
        parser.error("give either --address or --host/--port, not both")
    if args.address:
        address = args.address
    elif args.port is not None:
        address = f"{args.host or '127.0.0.1'}:{args.port}"
    else:
        parser.error("which server? give --port (and --host) or --address")
    try:
        parse_address(address)
        token = read_token(args.token_file)
    except ValueError as exc:
        parser.error(str(exc))
    result = check(address, token, args.timeout)
    if result.ok and args.ready_file is not None:
        from copilot_fleet.pod.provider_ready import not_ready

        waiting = not_ready(args.ready_file, parse_address(address)[1])
        if waiting is not None:
            result = replace(result, ok=False, error=f"answers, but {waiting}: no session may start before")
    if result.ok and (args.recycle_rss_mb is not None or args.recycle_sessions is not None):
        home = args.home or os.environ.get(HOME_ENV)
        reasons = recycle_reasons(parse_address(address)[1], Path(home) if home else None,
                                  args.recycle_rss_mb, args.recycle_sessions, args.pid, args.ready_file)
        if reasons:
            result = replace(result, ok=False, error=f"answers, but is past its recycle bound ({'; '.join(reasons)}): "
                                                     "drain and restart it")
    print(json.dumps(result.to_dict()) if args.json else result.line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
