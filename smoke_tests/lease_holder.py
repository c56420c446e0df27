"""A member that joins a shared session, takes one turn, then sits on the lease until it is killed.

Started by test_shared_session.py as a separate process so that it can die the hard way (SIGKILL) while holding
the lease: nothing in it gets to release anything, which is what a crashed application server looks like.
Prints one line per step, so that the test waits for each step as an event and can say which one did not come:
`READY` (started, target read), `JOINED <address>` (holds the lease), `HOLDING <address> <answer>` (its turn is
answered), or `FAILED <error>`. Exits on its own after --hold seconds if nobody kills it (a bound, not the expected
path).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from copilot_fleet.client import FleetClient
from copilot_fleet.target import load_target


async def hold(args: argparse.Namespace) -> int:
    target = load_target(args.target)
    print("READY", flush=True)
    async with FleetClient(target, user=args.user, lease_ttl=args.ttl, call_timeout=args.timeout) as fleet:
        session = await fleet.join_shared_session(args.name, wait=args.timeout)
        print(f"JOINED {session.address}", flush=True)
        answer = await session.reply(args.prompt, timeout=args.timeout)
        print(f"HOLDING {session.address} {answer!r}", flush=True)
        await asyncio.sleep(args.hold)  # the lease renews in the background meanwhile
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--name", required=True, help="the shared session's name (its id is s-<name>)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--ttl", type=float, default=2.0, help="lease ttl in seconds")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=60.0)
    args = parser.parse_args()
    try:
        return asyncio.run(hold(args))
    except Exception as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
