"""The fleet client against the raw SDK as shipped (Nagle on), op by op, interleaved in one process.

Each arm runs the same cycle: create, send (`remember: apple`), disconnect, resume, send (`recall`, checked),
disconnect, delete, timing create, both sends, resume and delete. The arms take turns in a rotating order, so
drift in machine load hits all of them alike:

- `raw`: the SDK's own `CopilotClient`, what an application on the raw SDK gets (Nagle on);
- `nodelay`: the same SDK client made through copilot_fleet.nodelay (TCP_NODELAY), no fleet client;
- `fleet`: `FleetClient` (ownership check, routing, Redis lease, the pool's TCP_NODELAY client);
- `both ends` (replica 0 only, root only): `nodelay` with TCP_NODELAY also set on the CLI's end of the connection
  from outside (benchmarks/sockopts.py): what the CLI's own socket costs, which no client can change.

Routes: replica 0 (`same`), through HAProxy (`haproxy`, the fleet client given only the endpoint), replica 1
(`other`). Targets, p50 of fleet / raw: at most 0.6 for create and resume, at most 1 for every op.

    .venv/bin/python benchmarks/vs_raw_sdk.py [--quick]     (brings up its own 2-replica fleet)
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import common
import sockopts
from copilot_fleet.target import Target

OPS = ("create", "send", "resume", "delete")
ARMS = ("raw", "nodelay", "fleet", "both ends")
ARM_LABELS = {
    "raw": "raw SDK as shipped (Nagle on)",
    "nodelay": "raw SDK + TCP_NODELAY (copilot_fleet.nodelay)",
    "fleet": "FleetClient",
    "both ends": "raw SDK + TCP_NODELAY on both ends (CLI's set from outside)",
}
ROUTES = {"same": "replica 0", "haproxy": "through HAProxy", "other": "replica 1"}
TARGETS = {"create": 0.6, "resume": 0.6, "send": 1.0, "delete": 1.0}

Samples = dict[str, list[float]]


@dataclass
class RouteResult:
    route: str
    samples: dict[str, Samples] = field(default_factory=dict)  # arm -> op -> seconds
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    cycles: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> why it was not measured

    def arms(self) -> list[str]:
        return [a for a in ARMS if a in self.samples]

    def p50(self, arm: str, op: str) -> float:
        return common.percentile(self.samples.get(arm, {}).get(op, []), 50)

    def ratio(self, arm: str, op: str, base: str = "raw") -> float:
        return common.ratio(self.samples.get(arm, {}).get(op, []), self.samples.get(base, {}).get(op, []))

    def met(self, op: str) -> bool:
        return self.ratio("fleet", op) <= TARGETS[op]

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "cycles": self.cycles, "errors": self.errors,
                "error_examples": self.error_examples[:5], "skipped": self.skipped,
                "stats": {arm: {op: common.summary(v) for op, v in ops.items()} for arm, ops in self.samples.items()},
                "ratio_fleet_raw": {op: self.ratio("fleet", op) for op in OPS},
                "ratio_nodelay_raw": {op: self.ratio("nodelay", op) for op in OPS}}


def _new_samples() -> Samples:
    return {op: [] for op in OPS}


async def _sdk_cycle(client: Any, opts: dict[str, Any], out: Samples) -> None:
    sid = common.new_id("vs")
    try:
        t, session = await common.timed(lambda: client.create_session(session_id=sid, name="vs", **opts))
        out["create"].append(t)
        t, _ = await common.timed(lambda: common.send(session, "remember: apple"))
        out["send"].append(t)
        await session.disconnect()
        t, session = await common.timed(lambda: client.resume_session(sid, **opts))
        out["resume"].append(t)
        t, reply = await common.timed(lambda: common.send(session, "recall"))
        if "apple" not in reply:
            raise RuntimeError(f"resumed session lost its history: {reply!r}")
        out["send"].append(t)
        await session.disconnect()
        t, _ = await common.timed(lambda: client.delete_session(sid))
        out["delete"].append(t)
        sid = ""
    finally:
        if sid:  # failed part-way: leave nothing behind
            with contextlib.suppress(Exception):
                await client.delete_session(sid)


async def _fleet_cycle(fleet: Any, out: Samples) -> None:
    t, session = await common.timed(lambda: fleet.create_session("vs"))
    sid = session.session_id
    try:
        out["create"].append(t)
        t, _ = await common.timed(lambda: session.reply("remember: apple"))
        out["send"].append(t)
        await session.close()
        t, session = await common.timed(lambda: fleet.resume_session(sid))
        out["resume"].append(t)
        t, reply = await common.timed(lambda: session.reply("recall"))
        if "apple" not in (reply or ""):
            raise RuntimeError(f"resumed session lost its history: {reply!r}")
        out["send"].append(t)
        await session.close()
        t, _ = await common.timed(lambda: fleet.delete_session(sid))
        out["delete"].append(t)
        sid = ""
    finally:
        if sid:
            try:
                await session.close()
                await fleet.delete_session(sid)
            except Exception:
                pass


def user_on(target: Target, address: str) -> str:
    """A user whose sessions the fleet routes to `address` first."""
    from copilot_fleet.client import Router

    router = Router(target)
    for i in range(1000):
        if router.route(f"vs{i}").primary == address:
            return f"vs{i}"
    raise RuntimeError(f"no user routed to {address} among 1000 tries")


async def _run_route(result: RouteResult, cycles: dict[str, Callable[[Samples], Awaitable[None]]],
                     budget: common.Budget) -> None:
    arms = list(cycles)
    for arm in arms:
        result.samples[arm] = _new_samples()
        result.errors[arm] = 0
    for arm in arms:  # warm-up, not recorded: first calls pay connection and session-store set-up
        try:
            await cycles[arm](_new_samples())
        except Exception as exc:
            result.error_examples.append(f"warm-up {arm}: {type(exc).__name__}: {str(exc)[:160]}")
    while budget.next():
        shift = budget.count % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            try:
                await cycles[arm](result.samples[arm])
            except Exception as exc:
                result.errors[arm] += 1
                result.error_examples.append(f"{arm}: {type(exc).__name__}: {str(exc)[:160]}")
        result.cycles += 1


async def measure(target: Target, fleet: common.LocalFleet | None = None, iterations: int = 30,
                  seconds_per_route: float = 150.0, profile: bool = True) -> tuple[list[RouteResult], str]:
    """The three routes; returns them and, where a target is missed, a profile of the fleet-client cycle."""
    from copilot_fleet.client import ClientPool, FleetClient
    from copilot_fleet.nodelay import client_socket

    assert target.endpoint is not None and len(target.replicas) >= 2, "needs an endpoint and two replicas"
    token, opts = common.token_of(target), common.session_options(target)
    r0, r1 = target.replicas[0], target.replicas[1]
    addresses = {"same": r0, "haproxy": target.endpoint, "other": r1}
    fleet_targets = {"same": target, "other": target,
                     "haproxy": target.model_copy(update={"replicas": [], "endpoint": target.endpoint})}
    users = {"same": user_on(target, r0), "other": user_on(target, r1), "haproxy": "vshaproxy"}
    made: list[Any] = []
    pool = ClientPool()
    fleets: list[Any] = []
    results: list[RouteResult] = []
    profile_text = ""
    try:
        for route, address in addresses.items():
            result = RouteResult(route)
            raw = await common.sdk_client(address, token, as_shipped=True)
            ours = await common.sdk_client(address, token)
            made += [raw, ours]
            fc = FleetClient(fleet_targets[route], user=users[route], pool=pool)
            fleets.append(fc)
            cycles: dict[str, Callable[[Samples], Awaitable[None]]] = {
                "raw": partial(_sdk_cycle, raw, opts),
                "nodelay": partial(_sdk_cycle, ours, opts),
                "fleet": partial(_fleet_cycle, fc),
            }
            if route == "same":
                why = "no fleet processes to reach" if fleet is None else sockopts.available(fleet.pid("copilot-cli-0"))
                if why is None and fleet is not None:
                    both = await common.sdk_client(address, token)
                    made.append(both)
                    sock = client_socket(both)
                    changed = sockopts.set_nodelay(fleet.pid("copilot-cli-0"), sock.getsockname()[:2], True) \
                        if sock is not None else 0
                    if changed == 1:
                        cycles["both ends"] = partial(_sdk_cycle, both, opts)
                    else:
                        why = f"the CLI's end of the connection was not found ({changed} sockets matched)"
                if why is not None:
                    result.skipped["both ends"] = why
            await _run_route(result, cycles, common.Budget(iterations, seconds_per_route))
            results.append(result)
        same = results[0]
        if profile and not all(same.met(op) for op in OPS):
            import overheads  # its profiler settings: wall clock, async-aware

            fc = fleets[0]
            profile_text = await overheads._profile(lambda: _fleet_cycle(fc, _new_samples()), min(10, iterations))
    finally:
        for fc in fleets:
            await fc.aclose()
        await pool.aclose()
        for client in made:
            await common.close_client(client)
    return results, profile_text


# --- output ---------------------------------------------------------------------------------------------------

def attribution(result: RouteResult, op: str, same: RouteResult | None = None) -> str:
    """Whose the op's p50 is, from the arms measured side by side: ours is what the fleet client adds to the same
    SDK client; the CLI's socket is what TCP_NODELAY on its end saves (measured on replica 0 only); the rest is
    the CLI's own work (with the SDK's Python, which the profile splits out)."""
    ms = {arm: result.p50(arm, op) * 1000 for arm in result.arms()}
    parts = [f"ours {ms['fleet'] - ms['nodelay']:+.0f} ms (fleet client - SDK with TCP_NODELAY)"]
    both = (same or result).p50("both ends", op) * 1000 if "both ends" in (same or result).samples else None
    if both is not None:
        base = (same or result).p50("nodelay", op) * 1000
        parts.append(f"the CLI's socket without TCP_NODELAY {base - both:.0f} ms; the CLI's own work and the SDK "
                     f"{both:.0f} ms")
    else:
        parts.append(f"the CLI and the SDK {ms['nodelay']:.0f} ms")
    return "; ".join(parts)


def _ms(value: float) -> str:
    return common.fmt(value * 1000)


def report(results: list[RouteResult]) -> str:
    """One table per route: p50 per arm and op, the ratios to the raw SDK, and the targets."""
    parts = []
    for r in results:
        arms = r.arms()
        rows = []
        for op in OPS:
            fleet_ratio = r.ratio("fleet", op)
            row = [op] + [_ms(r.p50(arm, op)) for arm in arms] + [f"{fleet_ratio:.3f}", f"{r.ratio('nodelay', op):.3f}",
                                                                 f"<= {TARGETS[op]:g}",
                                                                 "met" if r.met(op) else "**MISSED**"]
            rows.append(row)
        head = ["op"] + [f"{ARM_LABELS[a]} p50 ms" for a in arms] + ["fleet / raw", "nodelay / raw", "target", ""]
        errors = ", ".join(f"{a} {n}" for a, n in r.errors.items())
        text = f"**{ROUTES[r.route]}** ({r.cycles} cycles per arm; errors: {errors})\n\n" + common.table(head, rows)
        if r.skipped:
            text += "\n\n" + "; ".join(f"`{a}` not measured: {why}" for a, why in r.skipped.items())
        if r.error_examples:
            text += "\n\nFirst errors: " + "; ".join(f"`{e}`" for e in r.error_examples[:3])
        parts.append(text)
    return "\n\n".join(parts)


def plot_before_after(results: list[RouteResult], path: Path) -> Path:
    """Each op's p50 before (raw SDK as shipped) and after (the fleet client), side by side, per route."""
    series: dict[str, tuple[Sequence[Any], Sequence[float]]] = {}
    short = {"same": "r0", "haproxy": "HAProxy", "other": "r1"}
    names = [f"{op}\n{short[r.route]}" for r in results for op in OPS]
    series["before: raw SDK (Nagle on)"] = (names, [r.p50("raw", op) * 1000 for r in results for op in OPS])
    series["after: FleetClient"] = (names, [r.p50("fleet", op) * 1000 for r in results for op in OPS])
    return common.plot(path, "Each op before and after (p50 ms, interleaved in one run)",
                       "op / route (r0, r1: replicas 0 and 1 directly)", "ms", series, kind="bar", size=(12, 4.5))


def plot_arms(result: RouteResult, path: Path) -> Path:
    """Replica 0, every arm: where each op's time goes (connection, ours, the CLI's socket)."""
    arms = result.arms()
    return common.plot(path, f"{ROUTES[result.route]}: p50 ms by client", "op", "ms",
                       {ARM_LABELS[a]: (list(OPS), [result.p50(a, op) * 1000 for op in OPS]) for a in arms},
                       kind="bar", size=(9, 4.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fleet = common.LocalFleet.create(replicas=2)
    try:
        target = fleet.up()
        results, prof = common.run(measure(target, fleet, iterations=2 if args.quick else 30,
                                           profile=not args.quick))
        print(report(results))
        print(json.dumps([r.to_json() for r in results], indent=1))
        if prof:
            print(prof)
    finally:
        fleet.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
