"""`copilot-fleet drain | undrain | recycle`: take a CLI server of a local fleet out of service without losing a
turn, bring it back, and restart servers that grew too big or served too many sessions.

Cheap to import: the work is in copilot_fleet.local.operate, imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from copilot_fleet.argtypes import positive
from copilot_fleet.commands.local import _project_dir, _seconds, _stack_arg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("drain", help="take a CLI server out of rotation, let its turns finish, stop it",
                       description="HAProxy stops sending it new connections and target.json stops listing it; "
                                   "once no attached session is in a turn (or --timeout passed) supervisord stops "
                                   "it. `undrain` or `up` brings it back.")
    _stack_arg(p)
    p.add_argument("--server", required=True, help="the CLI server (supervisord program), e.g. copilot-cli-0")
    p.add_argument("--timeout", type=_seconds, default=60.0,
                   help="seconds to wait for turns in flight before stopping anyway (default 60)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("undrain", help="start a drained CLI server and put it back in rotation")
    _stack_arg(p)
    p.add_argument("--server", required=True, help="the CLI server, e.g. copilot-cli-0")
    p.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait until it answers (default 60)")
    p.set_defaults(func=cmd_undrain)

    p = sub.add_parser("recycle", help="drain and restart CLI servers over a memory or session bound (one-shot)",
                       description="A server whose resident memory passed --max-rss-mb, or that served "
                                   "--max-sessions creates + resumes since it started, is drained and started "
                                   "again, one server at a time. Defaults: fleet:recycle in the stack file. Safe "
                                   "to run from cron.")
    _stack_arg(p)
    p.add_argument("--max-rss-mb", type=positive(float), default=None, metavar="MIB",
                   help="recycle above this resident memory (default fleet:recycle.maxRssMb)")
    p.add_argument("--max-sessions", type=positive(int), default=None, metavar="N",
                   help="recycle after this many sessions served (default fleet:recycle.maxSessions)")
    p.add_argument("--drain-timeout", type=_seconds, default=60.0, help="per server, as drain --timeout")
    p.add_argument("--dry-run", action="store_true", help="report what would be recycled; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON (with --every: one line per check)")
    p.add_argument("--every", type=positive(float), default=None, metavar="SECONDS",
                   help="keep checking, every SECONDS, until SIGTERM (how the fleet's supervised recycler runs); "
                        "a check that finds another command changing the fleet is skipped")
    p.add_argument("--max-runs", type=positive(int), default=None, metavar="N", help="with --every: stop after N")
    p.set_defaults(func=cmd_recycle)


def _print(text: str) -> None:
    print(text, flush=True)


def cmd_drain(args: argparse.Namespace) -> int:
    from copilot_fleet.local.operate import drain

    result = drain(_project_dir(args), args.stack, args.server, timeout=args.timeout,
                   out=None if args.json else _print)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    return 1 if result.cut_turns else 0


def cmd_undrain(args: argparse.Namespace) -> int:
    from copilot_fleet.local.operate import undrain

    undrain(_project_dir(args), args.stack, args.server, timeout=args.timeout, out=_print)
    return 0


def cmd_recycle(args: argparse.Namespace) -> int:
    from copilot_fleet.local.stack import load_local_spec

    project = _project_dir(args)
    bounds = load_local_spec(project, args.stack).recycle
    max_rss_mb = args.max_rss_mb if args.max_rss_mb is not None else bounds.max_rss_mb
    max_sessions = args.max_sessions if args.max_sessions is not None else bounds.max_sessions
    if args.every is None:
        _recycle_once(args, project, max_rss_mb, max_sessions, wait_for_lock=True)
        return 0
    return _recycle_loop(args, project, max_rss_mb, max_sessions)


def _recycle_once(args: argparse.Namespace, project: Path, max_rss_mb: float | None, max_sessions: int | None,
                  *, wait_for_lock: bool) -> None:
    from copilot_fleet.local.operate import recycle

    result = recycle(project, args.stack, max_rss_mb=max_rss_mb, max_sessions=max_sessions,
                     dry_run=args.dry_run, drain_timeout=args.drain_timeout,
                     out=None if args.json else _print, wait_for_lock=wait_for_lock)
    if args.json:  # one document per check; with --every one line each (JSON Lines)
        print(json.dumps([c.to_json() for c in result], indent=None if args.every else 2), flush=True)
    elif not result:
        print("no running CLI server to check", file=sys.stderr, flush=True)


def _recycle_loop(args: argparse.Namespace, project: Path, max_rss_mb: float | None,
                  max_sessions: int | None) -> int:
    """Check every `args.every` seconds until SIGTERM/SIGINT (or --max-runs); the first check comes after one
    interval, since `up` holds the fleet while it starts. A failed check is reported and retried."""
    import signal
    import threading

    from copilot_fleet.local import LocalFleetError
    from copilot_fleet.local.operate import FleetBusy

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runs, ok = 0, True
    while not stop.wait(args.every):
        try:
            _recycle_once(args, project, max_rss_mb, max_sessions, wait_for_lock=False)
            ok = True
        except FleetBusy:
            print("recycle: another command is changing the fleet; checking again in "
                  f"{args.every:g} s", file=sys.stderr, flush=True)
        except LocalFleetError as exc:
            print(f"recycle: check failed: {exc}", file=sys.stderr, flush=True)
            ok = False
        runs += 1
        if args.max_runs is not None and runs >= args.max_runs:
            break
    return 0 if ok else 1
