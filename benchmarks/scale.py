"""Sessions per replica: attach more and more sessions to one CLI server until a send errors or the p99 of one
concurrent send to every attached session passes 2 s (bounded by a session count and a time budget), with the
server's VmRSS at each level; then after detaching them all, and after recycling the replica (supervisord
restart), what memory comes back.

    .venv/bin/python benchmarks/scale.py [--quick]     (brings up its own 1-replica fleet)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

P99_LIMIT = 2.0
LEVELS = (10, 25, 50, 100, 150, 200)


@dataclass
class Level:
    sessions: int
    send: dict[str, float]
    errors: int
    rss_mib: float
    attach_seconds: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class ScaleResult:
    idle_rss_mib: float = 0.0
    levels: list[Level] = field(default_factory=list)
    stopped_because: str = ""
    after_detach_rss_mib: float = 0.0
    after_recycle_rss_mib: float = 0.0
    recycle_seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    @property
    def max_ok_sessions(self) -> int:
        ok = [lv.sessions for lv in self.levels if lv.errors == 0 and lv.send["p99"] <= P99_LIMIT]
        return max(ok, default=0)

    def per_session_mib(self) -> float:
        top = self.levels[-1] if self.levels else None
        return (top.rss_mib - self.idle_rss_mib) / top.sessions if top else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"idle_rss_mib": self.idle_rss_mib, "levels": [lv.to_json() for lv in self.levels],
                "stopped_because": self.stopped_because, "max_ok_sessions": self.max_ok_sessions,
                "per_session_mib": self.per_session_mib(), "after_detach_rss_mib": self.after_detach_rss_mib,
                "after_recycle_rss_mib": self.after_recycle_rss_mib, "recycle_seconds": self.recycle_seconds,
                "error_examples": self.error_examples[:5]}


async def _settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _wait_answering(address: str, token: str | None, timeout: float) -> Any:
    """A connected client once the restarted server answers (bounded). A plain TCP probe first: the SDK logs
    a traceback for every refused start."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return await common.sdk_client(address, token)
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{address} did not answer within {timeout} s after restart")


async def measure(fleet: common.LocalFleet, levels: tuple[int, ...] = LEVELS, seconds: float = 180.0,
                  settle: float = 3.0) -> ScaleResult:
    target = fleet.target
    assert target is not None
    name, address, token = fleet.replica_name(0), target.replicas[0], common.token_of(target)
    opts = common.session_options(target)
    result = ScaleResult()
    client = await common.sdk_client(address, token)
    sessions: list[Any] = []
    ids: list[str] = []
    budget = common.Budget(len(levels), seconds)
    try:
        await _settle(settle)
        result.idle_rss_mib = fleet.rss_mib(name)
        while budget.next():
            want = levels[budget.count - 1]
            started = time.perf_counter()
            new_ids = [common.new_id("scale") for _ in range(want - len(sessions))]
            for chunk in common.chunks(new_ids, 25):  # attach in bounded batches
                made = await asyncio.gather(*(client.create_session(session_id=sid, name="scale", **opts)
                                              for sid in chunk), return_exceptions=True)
                for sid, s in zip(chunk, made, strict=True):
                    if isinstance(s, BaseException):
                        result.error_examples.append(f"create: {type(s).__name__}: {str(s)[:160]}")
                    else:
                        sessions.append(s)
                        ids.append(sid)
            attach_seconds = time.perf_counter() - started

            async def timed_send(s: Any) -> float:
                t, _ = await common.timed(lambda: common.send(s))
                return t

            outcomes = await asyncio.gather(*(timed_send(s) for s in sessions), return_exceptions=True)
            times = [o for o in outcomes if isinstance(o, float)]
            errors = len(outcomes) - len(times) + (want - len(sessions))
            result.error_examples += [f"send: {type(o).__name__}: {str(o)[:160]}" for o in outcomes
                                      if isinstance(o, BaseException)][:3]
            level = Level(len(sessions), common.summary(times), errors, fleet.rss_mib(name), attach_seconds)
            result.levels.append(level)
            if errors:
                result.stopped_because = f"{errors} errors at {want} sessions"
                break
            if level.send["p99"] > P99_LIMIT:
                result.stopped_because = f"p99 send {level.send['p99']:.2f} s > {P99_LIMIT} s at {want} sessions"
                break
        else:
            result.stopped_because = ("time budget" if budget.exhausted_by_time
                                      else f"reached the bound of {levels[-1]} sessions without errors")
        for chunk in common.chunks(sessions, 25):
            await asyncio.gather(*(s.disconnect() for s in chunk), return_exceptions=True)
        sessions.clear()
        await _settle(settle)
        result.after_detach_rss_mib = fleet.rss_mib(name)
        for chunk in common.chunks(ids, 25):
            await asyncio.gather(*(client.delete_session(sid) for sid in chunk), return_exceptions=True)
    finally:
        await common.close_client(client)
    # Recycling: supervisord stops the CLI and starts it again (same port, same COPILOT_HOME).
    started = time.perf_counter()
    fleet.supervisor().restart_process(name)
    probe = await _wait_answering(address, token, 60)
    result.recycle_seconds = time.perf_counter() - started
    await common.close_client(probe)
    await _settle(settle)
    result.after_recycle_rss_mib = fleet.rss_mib(name)
    return result


def report(r: ScaleResult) -> str:
    rows = [[lv.sessions, common.fmt(lv.attach_seconds, " s"), common.fmt(lv.send["p50"] * 1000),
             common.fmt(lv.send["p99"] * 1000), lv.errors, common.fmt(lv.rss_mib),
             common.fmt((lv.rss_mib - r.idle_rss_mib) / lv.sessions)] for lv in r.levels]
    text = common.table(["attached sessions", "attach time (new ones)", "send p50 ms", "send p99 ms", "errors",
                         "CLI VmRSS MiB", "MiB per session over the start"], rows)
    # Not the idle memory of a fresh CLI (docs/local-fleet.md has that): this replica served the runs before.
    text += (f"\n\nVmRSS before the first attach {r.idle_rss_mib:.0f} MiB (this replica had served the runs "
             f"above); stopped: {r.stopped_because}; largest level within "
             f"the limits (no error, p99 send <= {P99_LIMIT:g} s): **{r.max_ok_sessions} sessions**.\n"
             f"After detaching all: {r.after_detach_rss_mib:.0f} MiB; after recycling the replica "
             f"(restart took {r.recycle_seconds:.1f} s until it answered): {r.after_recycle_rss_mib:.0f} MiB.")
    return text


def plot(r: ScaleResult, path: Path) -> Path:
    """Memory on the left axis (MiB), send latency on the right (ms): one unit per axis."""
    xs = [lv.sessions for lv in r.levels]
    return common.plot(path, "One replica: memory and send p99 by attached sessions", "attached sessions",
                       "CLI VmRSS (MiB)", {"CLI VmRSS (MiB)": (xs, [lv.rss_mib for lv in r.levels])},
                       right={"send p99 (ms)": (xs, [lv.send["p99"] * 1000 for lv in r.levels])},
                       right_label="send p99 (ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fleet = common.LocalFleet.create(replicas=1)
    try:
        fleet.up()
        r = common.run(measure(fleet, (2, 4) if args.quick else LEVELS, settle=1 if args.quick else 3))
        print(report(r))
        print(json.dumps(r.to_json(), indent=1))
    finally:
        fleet.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
