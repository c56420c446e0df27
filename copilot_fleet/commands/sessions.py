"""`copilot-fleet sessions list | delete`: the sessions on a fleet, for operators.

Cheap to import: the SDK, Redis and the local fleet are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from copilot_fleet.commands.access import add_fleet_arguments, reachable_target
from copilot_fleet.errors import CommandError

if TYPE_CHECKING:
    from copilot_fleet.client.admin import DeleteResult, SessionRow
    from copilot_fleet.target import Target


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sessions", help="list the sessions on a fleet, or delete some (never an attached one)",
        description="Operator access to every session of a fleet (all users): list them with owner, times and "
                    "whether a client has them attached; delete one by id, or the ones idle for longer than a "
                    "duration. A session whose lease a client holds, or that a CLI reports in use, is refused, "
                    "never deleted.")
    actions = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="every session on the fleet: id, owner, created, modified, attached")
    add_fleet_arguments(ls)
    ls.add_argument("--owner", help="only this user's sessions (or shared:<name>)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_list)

    rm = actions.add_parser(
        "delete", help="delete sessions by id, or those idle for longer than --older-than; attached ones are refused",
        description="Delete the sessions named by id, or every session not modified for longer than DURATION. "
                    "Each is deleted under its lease (the key a fleet client holds while attached), so a session "
                    "in use is refused and nobody can attach it while it goes. Exit status 1 if a delete failed, "
                    "or if a session named by id was not deleted (refused, not found, another owner's); with "
                    "--older-than, refusals are not failures.")
    add_fleet_arguments(rm)
    rm.add_argument("session_ids", nargs="*", metavar="SESSION_ID", type=_session_id,
                    help="the sessions to delete (as `sessions list` shows them)")
    rm.add_argument("--older-than", type=_duration, metavar="DURATION",
                    help="instead of ids: every session idle for longer than this: 90s, 30m, 24h, 7d (0s: every "
                         "idle session)")
    rm.add_argument("--owner", help="only this user's sessions (or shared:<name>); with ids, a session of another "
                                    "owner is refused")
    rm.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    rm.add_argument("--unleased", action="store_true",
                    help="per-user fleets (no lease store): delete even though attachment cannot be verified")
    rm.add_argument("--json", action="store_true", help="print JSON instead of text")
    rm.set_defaults(func=cmd_delete)


def _duration(value: str) -> int:
    from copilot_fleet.spec import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _session_id(value: str) -> str:
    from copilot_fleet.client.errors import FleetClientError
    from copilot_fleet.client.ids import validate_session_id

    try:
        return validate_session_id(value)
    except FleetClientError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    with reachable_target(args, "sessions") as target:
        rows = _run(_list(target, args.owner))
    if args.json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
    else:
        print(format_table(rows, datetime.now(UTC)))
    return 0


async def _delete(target: Target, args: argparse.Namespace) -> list[DeleteResult]:
    from copilot_fleet.client.admin import FleetAdmin

    async with FleetAdmin(target) as admin:
        if args.session_ids:
            return await admin.delete_sessions(args.session_ids, owner=args.owner, dry_run=args.dry_run,
                                               allow_unleased=args.unleased)
        return await admin.delete_older_than(args.older_than, owner=args.owner, dry_run=args.dry_run,
                                             allow_unleased=args.unleased)


def cmd_delete(args: argparse.Namespace) -> int:
    if bool(args.session_ids) == (args.older_than is not None):
        raise CommandError("say which sessions: one or more SESSION_IDs, or --older-than DURATION (not both)")
    with reachable_target(args, "sessions") as target:
        results = _run(_delete(target, args))
    counts = {k: sum(1 for r in results if r.outcome == k)
              for k in ("deleted", "would-delete", "refused", "not-found", "error")}
    if args.json:
        print(json.dumps({"results": [r.__dict__ for r in results], "counts": counts}, indent=2))
    else:
        for r in results:
            print(f"{r.outcome:12} {r.session_id}: {r.reason}")
        done = f"would delete {counts['would-delete']}" if args.dry_run else f"deleted {counts['deleted']}"
        which = (f"of {len(args.session_ids)} named" if args.session_ids
                 else f"idle longer than {_age(args.older_than)}")
        print(f"{done} session(s) {which}; refused {counts['refused']} (attached, unverifiable or another "
              f"owner's); {counts['not-found']} not found; {counts['error']} error(s)")
    if counts["error"]:
        return 1
    # Sessions named one by one that were not deleted are the user's to know about: not a silent success.
    return 1 if args.session_ids and (counts["refused"] or counts["not-found"]) else 0
