"""What the fleet adds, as ratios of medians measured side by side in one run, interleaved (ABAB, BABA, ...):

- endpoint: one session cycle through HAProxy vs straight to a replica;
- fleet client: the same cycle through FleetClient (ownership check, routing, Redis lease) vs the SDK client it
  uses (copilot_fleet.nodelay: TCP_NODELAY) on the replica FleetClient routes to: only our own work differs
  (against the raw SDK as shipped, Nagle on: benchmarks/vs_raw_sdk.py);
- cross-replica resume: resume + send on the other replica vs on the replica that created the session.

A cycle is create, send, disconnect, delete. Targets: ratio at p50 <= 1.05 (1.2 for cross-replica resume).

    .venv/bin/python benchmarks/overheads.py [--quick]     (brings up its own 2-replica fleet)
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from copilot_fleet.target import Target

TARGETS = {"endpoint": 1.05, "fleet_client": 1.05, "cross_replica_resume": 1.2}
LABELS = {"endpoint": ("through HAProxy", "direct to a replica"),
          "fleet_client": ("FleetClient (routing + lease)", "SDK client (TCP_NODELAY), same replica"),
          "cross_replica_resume": ("resume on the other replica", "resume on the same replica")}


@dataclass
class Comparison:
    name: str
    a: list[float] = field(default_factory=list)  # the thing measured
    b: list[float] = field(default_factory=list)  # its baseline
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return common.ratio(self.a, self.b)

    @property
    def target(self) -> float:
        return TARGETS[self.name]

    @property
    def met(self) -> bool:
        return self.ratio <= self.target

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ratio_p50": self.ratio, "target": self.target, "met": self.met,
                "a": common.summary(self.a), "b": common.summary(self.b), "errors": self.errors,
                "error_examples": self.error_examples[:3]}


async def _interleave(comp: Comparison, a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]],
                      budget: common.Budget) -> None:
    """A then B, then B then A, ...: drift in machine load hits both sides equally."""
    while budget.next():
        order = ((a, comp.a), (b, comp.b)) if budget.count % 2 else ((b, comp.b), (a, comp.a))
        for call, samples in order:
            try:
                t, _ = await common.timed(call)
                samples.append(t)
            except Exception as exc:
                comp.errors += 1
                comp.error_examples.append(f"{type(exc).__name__}: {str(exc)[:160]}")


async def _sdk_cycle(client: Any, opts: dict[str, Any]) -> None:
    sid = common.new_id("ovh")
    session = await client.create_session(session_id=sid, name="ovh", **opts)
    await common.send(session)
    await session.disconnect()
    await client.delete_session(sid)


def user_on(target: Target, address: str) -> str:
    """A user whose sessions the fleet routes to `address` first."""
    from copilot_fleet.client import Router

    router = Router(target)
    for i in range(1000):
        if router.route(f"bench{i}").primary == address:
            return f"bench{i}"
    raise RuntimeError(f"no user routed to {address} among 1000 tries")


async def measure(target: Target, iterations: int = 30, seconds: float = 120.0,
                  profile: bool = True, locate: Callable[[str], str | None] | None = None,
                  ) -> tuple[list[Comparison], str]:
    """Runs the three comparisons; returns them and, for a missed fleet-client target, a pyinstrument profile.

    `locate(session_id)` -> address of the replica that has it attached: the HAProxy comparison then uses a
    direct client to the replica the endpoint connection reached (replicas differ: one that served many sessions
    is slower), else replica 0."""
    from copilot_fleet.client import ClientPool, FleetClient

    assert target.endpoint is not None and len(target.replicas) >= 2, "needs an endpoint and two replicas"
    token, opts = common.token_of(target), common.session_options(target)
    r0, r1 = target.replicas[0], target.replicas[1]
    direct0 = await common.sdk_client(r0, token)
    direct1 = await common.sdk_client(r1, token)
    via_lb = await common.sdk_client(target.endpoint, token)
    pool = ClientPool()
    user = user_on(target, r0)
    fleet = FleetClient(target, user=user, pool=pool)
    comps: list[Comparison] = []
    profile_text = ""

    async def fleet_cycle() -> None:
        session = await fleet.create_session("ovh")
        await session.reply("echo: ping")
        await session.close()
        await fleet.delete_session(session.session_id)

    try:
        for client in (direct0, direct1, via_lb):  # warm-up: first calls pay connection set-up
            await _sdk_cycle(client, opts)
        await fleet_cycle()

        endpoint = Comparison("endpoint")
        direct_same = direct0
        if locate is not None:
            sid = common.new_id("where")
            probe = await via_lb.create_session(session_id=sid, name="where", **opts)
            reached = locate(sid)
            await probe.disconnect()
            await via_lb.delete_session(sid)
            direct_same = direct1 if reached == r1 else direct0
        await _interleave(endpoint, lambda: _sdk_cycle(via_lb, opts), lambda: _sdk_cycle(direct_same, opts),
                          common.Budget(iterations, seconds / 3))
        comps.append(endpoint)

        via_fleet = Comparison("fleet_client")
        await _interleave(via_fleet, fleet_cycle, lambda: _sdk_cycle(direct0, opts),
                          common.Budget(iterations, seconds / 3))
        comps.append(via_fleet)

        cross = Comparison("cross_replica_resume")

        async def made_on_r0() -> str:
            # Made (and not timed) before the measured part: only resume + send + disconnect is compared.
            sid = common.new_id("xr")
            session = await direct0.create_session(session_id=sid, name="xr", **opts)
            await common.send(session, "remember: apple")
            await session.disconnect()
            return sid

        async def resume_send(client: Any, sid: str) -> None:
            resumed = await client.resume_session(sid, **opts)
            reply = await common.send(resumed, "recall")
            await resumed.disconnect()
            if "apple" not in reply:
                raise RuntimeError(f"resumed session lost its history: {reply!r}")

        budget = common.Budget(iterations, seconds / 3)
        while budget.next():
            sid_other, sid_same = await made_on_r0(), await made_on_r0()
            await _interleave(cross, functools.partial(resume_send, direct1, sid_other),
                              functools.partial(resume_send, direct0, sid_same),
                              common.Budget(budget.count, seconds, count=budget.count - 1))  # one pair; ABAB/BABA order
            for sid in (sid_other, sid_same):
                await direct0.delete_session(sid)
        comps.append(cross)

        if profile and not via_fleet.met:
            profile_text = await _profile(fleet_cycle, min(10, iterations))
    finally:
        await fleet.aclose()
        await pool.aclose()
        for client in (direct0, direct1, via_lb):
            await common.close_client(client)
    return comps, profile_text


async def _profile(call: Callable[[], Awaitable[None]], count: int) -> str:
    """Wall-clock profile of the fleet-client cycle: where the extra time goes (ours vs the SDK/CLI)."""
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled", interval=0.0005)
    profiler.start()
    for _ in range(count):
        await call()
    profiler.stop()
    return str(profiler.output_text(unicode=False, color=False, show_all=False))


def report(comps: list[Comparison]) -> str:
    rows = []
    for c in comps:
        a_label, b_label = LABELS[c.name]
        rows.append([a_label, b_label, len(c.a), common.fmt(common.percentile(c.a, 50) * 1000),
                     common.fmt(common.percentile(c.b, 50) * 1000), f"{c.ratio:.3f}", f"<= {c.target}",
                     "met" if c.met else "MISSED", c.errors])
    return common.table(["measured (A)", "baseline (B)", "pairs", "A p50 ms", "B p50 ms", "ratio A/B p50",
                         "target", "", "errors"], rows)


def plot(comps: list[Comparison], path: Path) -> Path:
    names = [c.name.replace("_", " ") for c in comps]
    return common.plot(path, "Overheads (p50 ms, measured side by side)", "comparison", "ms", {
        "A (measured)": (names, [common.percentile(c.a, 50) * 1000 for c in comps]),
        "B (baseline)": (names, [common.percentile(c.b, 50) * 1000 for c in comps]),
    }, kind="bar")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fleet = common.LocalFleet.create(replicas=2)
    try:
        target = fleet.up()
        comps, prof = common.run(measure(target, iterations=2 if args.quick else 30, profile=not args.quick))
        print(report(comps))
        print(json.dumps([c.to_json() for c in comps], indent=1))
        if prof:
            print(prof)
    finally:
        fleet.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
