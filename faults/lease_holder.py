"""An application process that holds a session's lease and takes one turn on one CLI server; a test pauses it.

Run by the paused-holder round (faults/store_pause.py) as its own process, so SIGSTOP freezes its lease renewal the
way a stalled application server would. It prints JSON lines: `attached`, `turn_started` (the CLI began the turn),
then `reply` or `error`, then `lease` (lost or not). Connection token: $COPILOT_CONNECTION_TOKEN; Redis URL:
$STORE_TEST_REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import redis.asyncio as aioredis
from copilot import PermissionHandler

from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.nodelay import cli_client
from copilot_fleet.sessionstore.fencing import bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys


def say(event: str, **data: object) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


async def main(args: argparse.Namespace) -> int:
    client_redis = aioredis.from_url(os.environ["STORE_TEST_REDIS_URL"])
    leases = LeaseManager(client_redis, ttl=args.ttl)
    lease = await leases.acquire(args.session, wait=30)
    lease.start_renewing()
    if args.bind:
        await bind_lease(client_redis, StoreKeys(args.scope), args.session, lease.token, args.server_id)
    client = cli_client(args.address, os.environ["COPILOT_CONNECTION_TOKEN"])
    await client.start()
    try:
        session = await client.resume_session(
            args.session,
            provider={"type": "openai", "base_url": args.base_url, "api_key": args.api_key},
            model="copilot-fleet-test",
            on_permission_request=PermissionHandler.approve_all,
        )
        say("attached")
        def on_event(event: object) -> None:
            kind = getattr(event, "type", None)
            if getattr(kind, "value", kind) == "assistant.turn_start":
                say("turn_started")

        session.on(on_event)
        try:
            message = await session.send_and_wait(args.prompt, timeout=120)
            say("reply", text=getattr(message.data, "content", None) if message is not None else None)
        except Exception as exc:  # the outcome is what the test reads
            say("error", error=str(exc))
        say("lease", lost=lease.lost, reason=lease.lost_reason)
    finally:
        await client.force_stop()
        await lease.release()
        await client_redis.aclose()
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--session", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--server-id", default="*")
    p.add_argument("--scope", default="shared")
    p.add_argument("--bind", action="store_true")
    p.add_argument("--ttl", type=float, required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    sys.exit(asyncio.run(main(p.parse_args())))
