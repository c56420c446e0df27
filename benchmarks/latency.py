"""Latency of create, resume, send and delete on one replica at 1, 10 and 50 concurrent sessions.

Each session does: create, send, disconnect, resume, send, disconnect, delete; `concurrency` of them run at once
(asyncio.gather) over ONE SDK client for the replica. Rounds repeat until the count or the time budget is spent.

    .venv/bin/python benchmarks/latency.py [--quick]     (brings up its own fleet)
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
from copilot_fleet.target import Target

OPS = ("create", "resume", "send", "delete")


@dataclass
class LatencyResult:
    concurrency: int
    samples: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: dict[str, int] = field(default_factory=lambda: {op: 0 for op in OPS})
    error_examples: list[str] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "rounds": self.rounds, "seconds": round(self.seconds, 2),
                "errors": self.errors, "error_examples": self.error_examples[:5],
                "stats": {op: common.summary(v) for op, v in self.samples.items()}}


async def _one_session(client: Any, opts: dict[str, Any], result: LatencyResult) -> None:
    sid = common.new_id("lat")
    op = "create"
    try:
        t, session = await common.timed(lambda: client.create_session(session_id=sid, name="lat", **opts))
        result.samples["create"].append(t)
        op = "send"
        t, _ = await common.timed(lambda: common.send(session, "remember: apple"))
        result.samples["send"].append(t)
        await session.disconnect()
        op = "resume"
        t, session = await common.timed(lambda: client.resume_session(sid, **opts))
        result.samples["resume"].append(t)
        op = "send"
        t, _ = await common.timed(lambda: common.send(session, "recall"))
        result.samples["send"].append(t)
        await session.disconnect()
        op = "delete"
        t, _ = await common.timed(lambda: client.delete_session(sid))
        result.samples["delete"].append(t)
    except Exception as exc:  # counted, not fatal: error counts are part of the figures
        result.errors[op] += 1
        result.error_examples.append(f"{op}: {type(exc).__name__}: {str(exc)[:160]}")


async def _bounded(coro: Any, result: LatencyResult, seconds: float = 180.0) -> None:
    """No session may hang a round: one that takes longer is cancelled and counted as an error."""
    try:
        await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        result.errors["send"] += 1
        result.error_examples.append(f"session cycle cancelled after {seconds:g} s")


async def measure(target: Target, address: str, concurrencies: tuple[int, ...] = (1, 10, 50),
                  max_sessions: int = 100, seconds_per_level: float = 60.0) -> list[LatencyResult]:
    """Per concurrency level: rounds of `c` sessions at once until about `max_sessions` sessions or the time."""
    opts = common.session_options(target)
    client = await common.sdk_client(address, common.token_of(target))
    results = []
    try:
        await _one_session(client, opts, LatencyResult(1))  # warm-up: first call pays connection set-up
        for c in concurrencies:
            result = LatencyResult(c)
            budget = common.Budget(max_count=max(1, max_sessions // c), max_seconds=seconds_per_level)
            started = time.perf_counter()
            while budget.next():
                await asyncio.gather(*(_bounded(_one_session(client, opts, result), result) for _ in range(c)))
                result.rounds += 1
            result.seconds = time.perf_counter() - started
            results.append(result)
    finally:
        await common.close_client(client)
    return results


def report(results: list[LatencyResult]) -> str:
    rows = []
    for r in results:
        for op in OPS:
            s = common.summary(r.samples[op])
            rows.append([r.concurrency, op, int(s["n"]), common.fmt(s["p50"] * 1000), common.fmt(s["p95"] * 1000),
                         common.fmt(s["p99"] * 1000), r.errors[op]])
    text = common.table(["concurrent", "op", "n", "p50 ms", "p95 ms", "p99 ms", "errors"], rows)
    examples = [e for r in results for e in r.error_examples[:3]]
    if examples:
        text += "\n\nFirst errors: " + "; ".join(f"`{e}`" for e in examples)
    return text


def plot(results: list[LatencyResult], path: Path) -> Path:
    series = {f"{op} p50": ([r.concurrency for r in results],
                            [common.percentile(r.samples[op], 50) * 1000 for r in results]) for op in OPS}
    series.update({f"{op} p99": ([r.concurrency for r in results],
                                 [common.percentile(r.samples[op], 99) * 1000 for r in results]) for op in ("send",)})
    return common.plot(path, "Latency on one replica", "concurrent sessions", "ms", series)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fleet = common.LocalFleet.create(replicas=1)
    try:
        target = fleet.up()
        levels = (1, 2) if args.quick else (1, 10, 50)
        results = common.run(measure(target, target.replicas[0], levels, max_sessions=4 if args.quick else 100))
        print(report(results))
        print(json.dumps([r.to_json() for r in results], indent=1))
    finally:
        fleet.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
