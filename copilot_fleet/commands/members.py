"""`copilot-fleet members list | add | remove`: who may join a named shared session (`s-<name>`).

The same store the fleet client checks before every join, resume, list and delete of a shared session: a Redis
set `copilot-fleet:members:<name>` in the fleet's lease store (`copilot_fleet.client.RedisMembership`). Only
fleets with isolation `shared-session` have shared sessions. Cheap to import: Redis and the client are imported
when a command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from copilot_fleet.commands.access import add_fleet_arguments, reachable_target
from copilot_fleet.errors import CommandError

if TYPE_CHECKING:
    from copilot_fleet.client.ownership import RedisMembership
    from copilot_fleet.target import Target

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "members", help="who may join a shared session: list, add, remove (shared-session fleets)",
        description="Membership of named shared sessions (s-<name>), in the fleet's lease store, where the fleet "
                    "client checks it before any server call: a user who is not a member is refused. Changes take "
                    "effect on the next join or resume; a member already attached keeps the session until they "
                    "close it.")
    actions = p.add_subparsers(dest="members_command", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="the members of one shared session, or of every shared session")
    add_fleet_arguments(ls)
    ls.add_argument("--session", metavar="NAME", type=_name, help="the shared session's name (s-<name>); "
                                                                   "default: every shared session with members")
    ls.add_argument("--json", action="store_true", help="print JSON: {name: [users]}")
    ls.set_defaults(func=cmd_list)

    for action, verb in (("add", "let these users join"), ("remove", "stop these users joining")):
        change = actions.add_parser(action, help=f"{verb} a shared session")
        add_fleet_arguments(change)
        change.add_argument("--session", metavar="NAME", type=_name, required=True,
                            help="the shared session's name (s-<name>)")
        change.add_argument("users", nargs="+", metavar="USER", type=_user, help="user ids, as the application "
                                                                                 "passes them to FleetClient")
        change.set_defaults(func=cmd_change, action=action)


def _validated(value: str, what: str) -> str:
    from copilot_fleet.client.errors import FleetClientError
    from copilot_fleet.client.ids import validate_id_part

    try:
        return validate_id_part(value.removeprefix("s-") if what == "shared session name" else value, what)
    except FleetClientError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name(value: str) -> str:
    return _validated(value, "shared session name")


def _user(value: str) -> str:
    return _validated(value, "user")


def _check_shared_sessions(target: Target) -> None:
    if target.isolation != "shared-session":
        raise CommandError(f"fleet {target.stack!r} has isolation {target.isolation}: only shared-session fleets "
                           "have shared sessions and members")
    if target.redis_url is None:
        raise CommandError(f"the target of {target.stack!r} has no redis_url: membership lives in the lease store")


async def _with_store(target: Target, work: Callable[[RedisMembership], Awaitable[T]]) -> T:
    from copilot_fleet.client.lease import LeaseManager
    from copilot_fleet.client.ownership import RedisMembership

    assert target.redis_url is not None
    leases = LeaseManager.from_url(target.redis_url.get_secret_value())
    try:
        return await work(RedisMembership(leases.redis))
    finally:
        await leases.aclose()


def _run(target: Target, work: Callable[[RedisMembership], Awaitable[T]]) -> T:
    import asyncio

    from copilot_fleet.client.errors import FleetClientError

    try:
        return asyncio.run(_with_store(target, work))
    except FleetClientError as exc:
        raise CommandError(str(exc)) from exc


def cmd_list(args: argparse.Namespace) -> int:
    async def listing(store: RedisMembership) -> dict[str, list[str]]:
        names = [args.session] if args.session else await store.names()
        return {name: sorted(await store.members(name)) for name in names}

    with reachable_target(args, "members", servers=False) as target:
        _check_shared_sessions(target)
        found = _run(target, listing)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print(f"no shared session of {target.stack} has members (add some: copilot-fleet members add --session "
              "NAME USER...)")
    for name, users in found.items():
        print(f"s-{name}: {len(users)} member(s)" + (": " + ", ".join(users) if users else ""))
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    async def change(store: RedisMembership) -> tuple[set[str], set[str]]:
        before = await store.members(args.session)
        if args.action == "add":
            await store.add_members(args.session, args.users)
        else:
            await store.remove_members(args.session, args.users)
        return before, await store.members(args.session)

    with reachable_target(args, "members", servers=False) as target:
        _check_shared_sessions(target)
        before, after = _run(target, change)
    changed = sorted(after - before) if args.action == "add" else sorted(before - after)
    unchanged = sorted(set(args.users) - set(changed))
    done = "added" if args.action == "add" else "removed"
    why = "already members" if args.action == "add" else "not members"
    print(f"s-{args.session}: {done} {', '.join(changed) or 'nobody'}"
          + (f" ({why}: {', '.join(unchanged)})" if unchanged else ""))
    print(f"s-{args.session}: {len(after)} member(s)" + (": " + ", ".join(sorted(after)) if after else ""))
    return 0
