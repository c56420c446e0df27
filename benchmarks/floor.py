"""The CLI's own floor: one session, turns one after another against the instant test model, over a TCP_NODELAY
connection straight to replica 0 (no fleet client, no HAProxy, nothing else in the way); and a JSON-RPC `ping`,
the smallest request the CLI answers.

The other ends of the two hops a turn crosses are not ours to configure in production: the CLI's end of the
application's connection, and the model server's end of the CLI's request. As an experiment (root only: through
benchmarks/sockopts.py) TCP_NODELAY is switched on those ends before each turn, alternating arms turn by turn on
the same session, so what each end's Nagle costs is measured side by side:

- `client`: TCP_NODELAY on the application's end only (what copilot_fleet.nodelay gives);
- `+ CLI end`: also on the CLI's end of that connection;
- `+ model end`: also on the test model's ends of the CLI's connections to it;
- `all ends`: both: the floor with no Nagle anywhere.

    .venv/bin/python benchmarks/floor.py [--quick]     (brings up its own 1-replica fleet)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

import common
import sockopts

ARMS = {"client": (False, False), "+ CLI end": (True, False), "+ model end": (False, True), "all ends": (True, True)}


@dataclass
class FloorResult:
    turn: dict[str, list[float]] = field(default_factory=dict)
    ping: dict[str, list[float]] = field(default_factory=dict)
    skipped: str = ""  # why only the `client` arm was measured
    model_sockets: int = 0  # model-side sockets switched per turn (the CLI's keep-alive connections to it)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"turn": {a: common.summary(v) for a, v in self.turn.items()},
                "ping": {a: common.summary(v) for a, v in self.ping.items()},
                "skipped": self.skipped, "model_sockets": self.model_sockets, "errors": self.errors,
                "error_examples": self.error_examples[:5]}


async def measure(fleet: common.LocalFleet, turns: int = 40, seconds: float = 90.0) -> FloorResult:
    from copilot_fleet.nodelay import client_socket

    target = fleet.target
    assert target is not None
    result = FloorResult()
    cli_pid, model_pid = fleet.pid("copilot-cli-0"), fleet.pid("model")
    why = sockopts.available(cli_pid) or sockopts.available(model_pid)
    arms = dict(ARMS) if why is None else {"client": ARMS["client"]}
    result.skipped = why or ""
    client = await common.sdk_client(target.replicas[0], common.token_of(target))
    sock = client_socket(client)
    assert sock is not None, "the seam's client has no socket to read"
    mine = sock.getsockname()[:2]
    sid = common.new_id("floor")
    session = await client.create_session(session_id=sid, name="floor", **common.session_options(target))

    def ends(cli_end: bool, model_end: bool) -> None:
        if why is None:
            sockopts.set_nodelay(cli_pid, mine, cli_end)
            result.model_sockets = sockopts.set_nodelay(model_pid, None, model_end)

    try:
        await common.send(session, "echo: warm-up")
        for arm in arms:
            result.turn[arm], result.ping[arm] = [], []
        budget = common.Budget(turns, seconds)
        names = list(arms)
        while budget.next():
            shift = budget.count % len(names)
            for arm in names[shift:] + names[:shift]:
                ends(*arms[arm])
                try:
                    t, _ = await common.timed(lambda: common.send(session, "echo: floor"))
                    result.turn[arm].append(t)
                    t, _ = await common.timed(client.ping)
                    result.ping[arm].append(t)
                except Exception as exc:
                    result.errors += 1
                    result.error_examples.append(f"{arm}: {type(exc).__name__}: {str(exc)[:160]}")
    finally:
        ends(False, False)  # as they were: neither the CLI nor the test model sets TCP_NODELAY itself
        await session.disconnect()
        await client.delete_session(sid)
        await common.close_client(client)
    return result


def report(r: FloorResult) -> str:
    rows = []
    for arm in r.turn:
        t, p = common.summary(r.turn[arm]), common.summary(r.ping[arm])
        rows.append([arm, int(t["n"]), common.fmt(t["p50"] * 1000), common.fmt(t["p95"] * 1000),
                     common.fmt(p["p50"] * 1000), common.fmt(p["p95"] * 1000)])
    text = common.table(["TCP_NODELAY on", "turns", "turn p50 ms", "turn p95 ms", "ping p50 ms", "ping p95 ms"], rows)
    if r.skipped:
        text += f"\n\nOnly the `client` arm: the other ends cannot be reached from here ({r.skipped})."
    else:
        text += (f"\n\nThe test model's end: {r.model_sockets} socket(s) switched before each turn (the CLI's "
                 "keep-alive connections to it).")
    if r.errors:
        text += f"\n\nErrors: {r.errors}; first: " + "; ".join(f"`{e}`" for e in r.error_examples[:3])
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fleet = common.LocalFleet.create(replicas=1)
    try:
        fleet.up()
        r = common.run(measure(fleet, turns=3 if args.quick else 40))
        print(report(r))
        print(json.dumps(r.to_json(), indent=1))
    finally:
        fleet.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
