"""`python -m copilot_fleet.sessionstore`: run a Copilot CLI server whose session state lives in the store.

    python -m copilot_fleet.sessionstore --cli PATH --home DIR --server-id ID --scope SCOPE
        [--host 127.0.0.1] [--port 0] [--workdir DIR] [--redis-url-file F] [--token-file F]
        [--ready-file F] [--session-state-path /session-state] [--cli-user USER] [--allow-unleased-writes]
        [--registration-ttl S] [--stop-grace S] [--start-timeout S]
        [--max-file-bytes N] [--max-session-bytes N] [--max-entries N] [--hold-inspector-port] [-- EXTRA CLI ARGS]

Credentials never on the command line: the Redis URL (with the ACL user's password) from `--redis-url-file`, else
$COPILOT_FLEET_STORE_REDIS_URL (every COPILOT_FLEET_STORE_* variable is removed from the CLI's environment); the
connection token from `--token-file`, else $COPILOT_CONNECTION_TOKEN (what the CLI itself reads).

Prints `session store provider ready: server ID on port N (cli pid P)` once registered; exit status: the CLI's
when it stopped on SIGTERM, 1 on any failure (the reason is logged), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from copilot_fleet.argtypes import positive, secret_from_file_or_env
from copilot_fleet.pod.inspector_guard import INSPECTOR_PORT, hold

from .cli_process import make_undumpable
from .fencing import DEFAULT_REGISTRATION_TTL_SECONDS, validate_server_id
from .keys import DEFAULT_PREFIX, StoreKeys
from .paths import SessionPaths
from .server import DEFAULT_SESSION_STATE_PATH, Provider, ProviderConfig
from .store import Limits

REDIS_URL_ENV = "COPILOT_FLEET_STORE_REDIS_URL"
TOKEN_ENV = "COPILOT_CONNECTION_TOKEN"


def _server_id(value: str) -> str:
    try:
        return validate_server_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0 to 65535; 0 picks a free one)")
    return int(value)


def _user(value: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user {value!r} on this machine") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m copilot_fleet.sessionstore", description=__doc__.split("\n\n")[0])
    p.add_argument("--cli", type=Path, default=os.environ.get("COPILOT_CLI_PATH"),
                   help="the Copilot CLI executable (default: $COPILOT_CLI_PATH)")
    p.add_argument("--home", type=Path, required=True, help="the CLI's COPILOT_HOME (kept per server)")
    p.add_argument("--workdir", type=Path, default=Path.cwd(), help="the CLI's working directory (default: here)")
    p.add_argument("--server-id", type=_server_id, required=True,
                   help="what clients call this server (its address as the target lists it)")
    p.add_argument("--scope", required=True, help="the store scope: the user (per-user) or 'shared'")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=0)
    p.add_argument("--redis-url-file")
    p.add_argument("--token-file")
    p.add_argument("--ready-file", type=Path)
    p.add_argument("--session-state-path", default=DEFAULT_SESSION_STATE_PATH)
    p.add_argument("--key-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--cli-user", type=_user, help="run the CLI (and its tools) as this user")
    p.add_argument("--allow-unleased-writes", action="store_true",
                   help="accept writes to sessions nobody leased (fencing then only protects leased sessions)")
    p.add_argument("--registration-ttl", type=positive(float), default=DEFAULT_REGISTRATION_TTL_SECONDS)
    p.add_argument("--stop-grace", type=positive(float), default=30.0)
    p.add_argument("--start-timeout", type=positive(float), default=60.0)
    defaults = Limits()
    p.add_argument("--max-file-bytes", type=positive(int), default=defaults.max_file_bytes)
    p.add_argument("--max-session-bytes", type=positive(int), default=defaults.max_session_bytes)
    p.add_argument("--max-entries", type=positive(int), default=defaults.max_entries)
    p.add_argument("--hold-inspector-port", action="store_true",
                   help="hold 127.0.0.1:9229 while this process runs, so that SIGUSR1 cannot open the CLI's Node "
                        "debugger (in a pod; copilot_fleet/pod/inspector_guard.py says why)")
    p.add_argument("cli_args", nargs="*", help="extra arguments for the CLI (after --)")
    return p


def config_from_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> ProviderConfig:
    if args.cli is None:
        p.error("--cli is required (or set $COPILOT_CLI_PATH)")
    try:
        redis_url = secret_from_file_or_env(args.redis_url_file, "--redis-url-file", REDIS_URL_ENV)
        token = secret_from_file_or_env(args.token_file, "--token-file", TOKEN_ENV)
    except ValueError as exc:
        p.error(str(exc))
    if redis_url is None:
        p.error(f"no Redis URL: give --redis-url-file or set ${REDIS_URL_ENV}")
    user = args.cli_user
    try:
        StoreKeys(args.scope, args.key_prefix)
        SessionPaths(args.session_state_path, str(args.home.resolve()), str(args.workdir.resolve()))
        return ProviderConfig(
            cli=args.cli, copilot_home=args.home.resolve(), workdir=args.workdir.resolve(), redis_url=redis_url,
            scope=args.scope, server_id=args.server_id, token=token, host=args.host, port=args.port,
            cli_args=(*(() if "--log-level" in args.cli_args else ("--log-level", "info")), *args.cli_args),
            session_state_path=args.session_state_path,
            key_prefix=args.key_prefix, ready_file=args.ready_file, registration_ttl=args.registration_ttl,
            start_timeout=args.start_timeout, stop_grace=args.stop_grace,
            require_lease=not args.allow_unleased_writes,
            limits=Limits(args.max_file_bytes, args.max_session_bytes, args.max_entries),
            cli_user=user.pw_uid if user else None, cli_group=user.pw_gid if user else None,
        )
    except ValueError as exc:
        p.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, before the store URL is read from the environment or a file: nothing of this process is
    # readable by other processes of its user from here on.
    make_undumpable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    p = parser()
    args = p.parse_args(argv)
    config = config_from_args(args, p)
    # In a pod this process is the one a tool run can neither reach (non-dumpable: not its sockets either) nor
    # outlive the CLI of (the CLI dies with it), so it holds the port; the CLI does not inherit the socket.
    inspector_port = _hold_inspector_port(p) if args.hold_inspector_port else None
    try:
        return asyncio.run(Provider(config).run())
    finally:
        if inspector_port is not None:
            inspector_port.close()


def _hold_inspector_port(p: argparse.ArgumentParser) -> socket.socket:
    try:
        return hold("127.0.0.1", INSPECTOR_PORT)
    except OSError as exc:
        p.error(f"--hold-inspector-port: cannot hold 127.0.0.1:{INSPECTOR_PORT} ({exc}); the CLI is not started "
                "while its debugger port is free for the taking")


if __name__ == "__main__":
    sys.exit(main())
