"""`python -m copilot_fleet.testmodel`: run the test model until SIGTERM or SIGINT.

Prints `test model listening on HOST:PORT` to stdout once the socket is bound (with the real port for --port 0),
logs one line per request to stderr, and exits 0 on SIGTERM after closing the socket.
"""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import sys
import threading
from types import FrameType

from copilot_fleet.testmodel.keys import ENV_VAR, ApiKeyError, load_api_key
from copilot_fleet.testmodel.server import DEFAULT_MODEL, TestModelServer


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535; 0 picks a free port)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m copilot_fleet.testmodel",
        description="Deterministic OpenAI-compatible test model (chat completions + responses).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument(
        "--api-key-file",
        help=f"file (mode 0600) holding the API key clients must send; default ${ENV_VAR}, else no auth",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model id listed by /v1/models ({DEFAULT_MODEL})")
    parser.add_argument("--run-as", metavar="USER",
                        help="started as root: switch to this user once the key is read and the port bound")
    args = parser.parse_args(argv)

    try:
        api_key = load_api_key(args.api_key_file)
    except ApiKeyError as exc:
        print(f"testmodel: {exc}", file=sys.stderr)
        return 2
    try:
        server = TestModelServer(args.host, args.port, api_key, args.model)
    except OSError as exc:
        print(f"testmodel: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.run_as:
        try:
            drop_privileges(args.run_as)
        except (KeyError, PermissionError) as exc:
            print(f"testmodel: cannot switch to user {args.run_as!r}: {exc}", file=sys.stderr)
            return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    auth = "API key required" if api_key else "no authentication"
    # The log line first: whoever waits for the ready line on stdout then finds it written (a test under load
    # read the log between the two lines and found it empty).
    print(f"testmodel: serving {server.base_url} ({auth})", file=sys.stderr, flush=True)
    print(f"test model listening on {server.host}:{server.port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()
    print("testmodel: stopped", file=sys.stderr, flush=True)
    return 0


def drop_privileges(user: str) -> None:
    """Become `user` for good (groups, gid, then uid). Everything the server needs is imported and open by then:
    with the key in memory and the socket bound, nothing of the fleet's is within this process's reach."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0 or os.getegid() == 0:
        raise PermissionError("still root after switching")


if __name__ == "__main__":
    sys.exit(main())
