"""`copilot-fleet sessions list | delete`: the sessions on a fleet, for operators.

Cheap to import: the SDK, Redis and the local fleet are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copilot_fleet.errors import CommandError
from copilot_fleet.stacknames import DEFAULT_STACK, add_stack_argument

if TYPE_CHECKING:
    from copilot_fleet.client.admin import DeleteResult, SessionRow
    from copilot_fleet.target import Target


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sessions", help="list the sessions on a fleet, or delete idle ones (never an attached one)",
        description="Operator access to every session of a fleet (all users): list them with owner, times and "
                    "whether a client has them attached; delete the ones idle for longer than a duration. A "
                    "session whose lease a client holds, or that a CLI reports in use, is refused, never deleted.")
    actions = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="every session on the fleet: id, owner, created, modified, attached")
    _where(ls)
    ls.add_argument("--owner", help="only this user's sessions (or shared:<name>)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    rm = actions.add_parser(
        "delete", help="delete sessions idle for longer than --older-than; attached ones are refused",
        description="Delete every session not modified for longer than DURATION. Each is deleted under its lease "
                    "(the key a fleet client holds while attached), so a session in use is refused and nobody can "
                    "attach it while it goes. Exit status 1 if any delete failed (refusals are not failures).")
    _where(rm)
    rm.add_argument("--older-than", required=True, type=_duration, metavar="DURATION",
                    help="idle for longer than this: 90s, 30m, 24h, 7d (0s: every idle session)")
    rm.add_argument("--owner", help="only this user's sessions (or shared:<name>)")
    rm.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    rm.add_argument("--unleased", action="store_true",
                    help="per-user fleets (no lease store): delete even though attachment cannot be verified")
    rm.add_argument("--json", action="store_true", help="print JSON instead of text")
    rm.set_defaults(func=cmd_delete)


def _where(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    add_stack_argument(where, default=None, help=f"stack name; its target comes from the local fleet or Pulumi "
                                                 f"outputs (default {DEFAULT_STACK})")
    where.add_argument("--target", metavar="FILE", dest="target_file",
                       help="a target JSON file instead of a stack")


def _duration(value: str) -> int:
    from copilot_fleet.spec import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_target(args: argparse.Namespace) -> Target:
    """The target from --target FILE, or of --stack (the local fleet's state, or Pulumi stack outputs)."""
    from copilot_fleet.target import TargetError, load_target

    if args.target_file:
        try:
            return load_target(args.target_file)
        except TargetError as exc:
            raise CommandError(str(exc)) from exc
    stack = args.stack or DEFAULT_STACK
    try:
        from copilot_fleet.local.targets import read_target
    except ImportError as exc:  # a partial install without the local fleet
        raise CommandError(f"cannot resolve stack {stack} here ({exc}); pass --target FILE") from exc
    from copilot_fleet.stackfile import find_project_dir

    project = find_project_dir(Path(args.project_dir) if getattr(args, "project_dir", None) else None)
    target, warning = read_target(project, stack, "--target")
    if warning:
        print(f"copilot-fleet sessions: warning: {warning}", file=sys.stderr)
    return target


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_table(rows: list[SessionRow], now: datetime) -> str:
    header = ("SESSION", "OWNER", "CREATED", "MODIFIED", "IDLE", "ATTACHED")
    lines = [header]
    for r in rows:
        attached = {True: "yes", False: "no", None: "?"}[r.attached]
        if r.attached:
            attached += f" ({r.attached_by})"
        lines.append((r.session_id, r.owner or "-", _utc(r.created), _utc(r.modified), _age(r.idle_seconds(now)),
                       attached))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in lines]
    unknown = [r for r in rows if r.attached is None]
    out.append(f"{len(rows)} session(s)" + (f"; attachment unknown for {len(unknown)}: {unknown[0].attached_by}"
                                             if unknown else ""))
    return "\n".join(out)


def _row_json(r: SessionRow) -> dict[str, Any]:
    return {"session_id": r.session_id, "kind": r.kind, "owner": r.owner, "created": r.created.isoformat(),
            "modified": r.modified.isoformat(), "server": r.server, "attached": r.attached,
            "attached_by": r.attached_by}


def _run(coro: Any) -> Any:
    import asyncio

    from copilot_fleet.client.errors import FleetClientError

    try:
        return asyncio.run(coro)
    except FleetClientError as exc:
        raise CommandError(str(exc)) from exc


async def _list(target: Target, owner: str | None) -> list[SessionRow]:
    from copilot_fleet.client.admin import FleetAdmin

    async with FleetAdmin(target) as admin:
        rows = await admin.list_sessions()
    return [r for r in rows if owner is None or r.owner == owner]


def cmd_list(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    rows = _run(_list(target, args.owner))
    if args.json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
    else:
        print(format_table(rows, datetime.now(UTC)))
    return 0


async def _delete(target: Target, args: argparse.Namespace) -> list[DeleteResult]:
    from copilot_fleet.client.admin import FleetAdmin

    async with FleetAdmin(target) as admin:
        return await admin.delete_older_than(args.older_than, owner=args.owner, dry_run=args.dry_run,
                                             allow_unleased=args.unleased)


def cmd_delete(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    results = _run(_delete(target, args))
    counts = {k: sum(1 for r in results if r.outcome == k)
              for k in ("deleted", "would-delete", "refused", "not-found", "error")}
    if args.json:
        print(json.dumps({"results": [r.__dict__ for r in results], "counts": counts}, indent=2))
    else:
        for r in results:
            print(f"{r.outcome:12} {r.session_id}: {r.reason}")
        done = f"would delete {counts['would-delete']}" if args.dry_run else f"deleted {counts['deleted']}"
        print(f"{done} session(s) idle longer than {_age(args.older_than)}; refused {counts['refused']} "
              f"(attached or unverifiable); {counts['not-found']} already gone; {counts['error']} error(s)")
    return 1 if counts["error"] else 0
