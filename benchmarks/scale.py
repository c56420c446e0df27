"""Sessions per replica: attach more and more sessions to one CLI server until a send errors or the p99 of one
concurrent send to every attached session passes 2 s (bounded by a session count and a time budget), with the
server's VmRSS at each level; then after detaching them all, and after recycling the replica (supervisord
restart), what memory comes back.

    .venv/bin/python benchmarks/scale.py [--quick] [--store [--no-write]]   (brings up its own 1-replica fleet)

`--store`: the same on a fleet with session state in the session store (`fleet:sessionState: {mode: store}`,
docs/session-store.md). Every session is attached through the fleet client (FleetClient), which takes its lease
and binds it to the replica, as any write in store mode needs. Memory is the CLI's and its provider's VmRSS (the
provider's ready file names the CLI's pid), and Redis's `used_memory` per session. Its figures are written into
docs/benchmarks.md between the `scale-store` markers (unless --quick or --no-write); `benchmarks/run_all.py` keeps
that block as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import common
from copilot_fleet.client import FleetClient
from copilot_fleet.client.handle import FleetSession
from copilot_fleet.pod import provider_ready

P99_LIMIT = 2.0
LEVELS = (10, 25, 50, 100, 150, 200)
DOC = common.ROOT / "docs" / "benchmarks.md"
STORE_BEGIN, STORE_END = "<!-- scale-store:begin -->", "<!-- scale-store:end -->"
STORE_HEADING = "## Sessions per replica and memory, session state in the store"


@dataclass
class Level:
    sessions: int
    send: dict[str, float]
    errors: int
    rss_mib: float  # the CLI's
    attach_seconds: float
    provider_rss_mib: float = 0.0  # store mode: the session store provider's (0 in volume mode)
    redis_mib: float = float("nan")  # store mode: Redis's used_memory

    @property
    def server_rss_mib(self) -> float:
        """What the replica holds: the CLI, and in store mode its provider."""
        return self.rss_mib + self.provider_rss_mib

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class ScaleResult:
    idle_rss_mib: float = 0.0  # the replica's (CLI, plus the provider in store mode) before the first attach
    store: bool = False
    idle_redis_mib: float = float("nan")
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
        return (top.server_rss_mib - self.idle_rss_mib) / top.sessions if top else float("nan")

    def redis_kib_per_session(self) -> float:
        top = self.levels[-1] if self.levels else None
        return (top.redis_mib - self.idle_redis_mib) * 1024 / top.sessions if top else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "idle_rss_mib": self.idle_rss_mib, "idle_redis_mib": self.idle_redis_mib,
                "redis_kib_per_session": self.redis_kib_per_session(), "levels": [lv.to_json() for lv in self.levels],
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


class Sessions(Protocol):
    """How one mode attaches, sends to, detaches and deletes the benchmark's sessions on replica 0."""

    async def attach(self, count: int) -> list[str]:
        """Attach `count` new sessions; the errors of those that failed."""
        ...

    async def send_all(self) -> list[float | BaseException]:
        """One send to every attached session at once: its time or its error."""
        ...

    async def detach_all(self) -> None: ...

    async def delete_all(self) -> None: ...

    async def redis_mib(self) -> float: ...

    async def close(self) -> None: ...

    @property
    def attached(self) -> int: ...


async def _timed_send(call: Any) -> float:
    t, _ = await common.timed(call)
    return t


class SdkSessions:
    """Volume mode: sessions created straight on the replica with one SDK client (TCP_NODELAY)."""

    def __init__(self, client: Any, opts: dict[str, Any]) -> None:
        self.client = client
        self.opts = opts
        self.sessions: list[Any] = []
        self.ids: list[str] = []

    @classmethod
    async def open(cls, fleet: common.LocalFleet) -> SdkSessions:
        target = fleet.target
        assert target is not None
        client = await common.sdk_client(target.replicas[0], common.token_of(target))
        return cls(client, common.session_options(target))

    @property
    def attached(self) -> int:
        return len(self.sessions)

    async def attach(self, count: int) -> list[str]:
        errors = []
        for chunk in common.chunks([common.new_id("scale") for _ in range(count)], 25):  # bounded batches
            made = await asyncio.gather(*(self.client.create_session(session_id=sid, name="scale", **self.opts)
                                          for sid in chunk), return_exceptions=True)
            for sid, s in zip(chunk, made, strict=True):
                if isinstance(s, BaseException):
                    errors.append(f"create: {type(s).__name__}: {str(s)[:160]}")
                else:
                    self.sessions.append(s)
                    self.ids.append(sid)
        return errors

    async def send_all(self) -> list[float | BaseException]:
        return await asyncio.gather(*(_timed_send(lambda s=s: common.send(s)) for s in self.sessions),
                                    return_exceptions=True)

    async def detach_all(self) -> None:
        for chunk in common.chunks(self.sessions, 25):
            await asyncio.gather(*(s.disconnect() for s in chunk), return_exceptions=True)
        self.sessions.clear()

    async def delete_all(self) -> None:
        for chunk in common.chunks(self.ids, 25):
            await asyncio.gather(*(self.client.delete_session(sid) for sid in chunk), return_exceptions=True)

    async def redis_mib(self) -> float:
        return float("nan")  # the sessions are on the replica's disk

    async def close(self) -> None:
        await common.close_client(self.client)


class FleetSessions:
    """Store mode: sessions attached through the fleet client, which leases each one and binds the lease to the
    replica (every write of a session in store mode is fenced by that binding); closing a handle detaches and
    releases, and deleting takes the lease again and deletes from the store."""

    def __init__(self, fleet: FleetClient) -> None:
        self.fleet = fleet
        self.handles: list[FleetSession] = []
        self.ids: list[str] = []

    @classmethod
    async def open(cls, target: Any) -> FleetSessions:
        return cls(FleetClient(target, user="scale"))

    @property
    def attached(self) -> int:
        return len(self.handles)

    async def attach(self, count: int) -> list[str]:
        errors = []
        for chunk in common.chunks(range(count), 25):  # bounded batches
            made = await asyncio.gather(*(self.fleet.create_session("scale") for _ in chunk),
                                        return_exceptions=True)
            for h in made:
                if isinstance(h, BaseException):
                    errors.append(f"create: {type(h).__name__}: {str(h)[:160]}")
                else:
                    self.handles.append(h)
                    self.ids.append(h.session_id)
        return errors

    async def send_all(self) -> list[float | BaseException]:
        async def one(h: FleetSession) -> None:
            if await h.reply("echo: ping") is None:
                raise RuntimeError(f"no reply in session {h.session_id}")

        return await asyncio.gather(*(_timed_send(lambda h=h: one(h)) for h in self.handles),
                                    return_exceptions=True)

    async def detach_all(self) -> None:
        for chunk in common.chunks(self.handles, 25):
            await asyncio.gather(*(h.close() for h in chunk), return_exceptions=True)
        self.handles.clear()

    async def delete_all(self) -> None:
        for chunk in common.chunks(self.ids, 25):
            await asyncio.gather(*(self.fleet.delete_session(sid) for sid in chunk), return_exceptions=True)

    async def redis_mib(self) -> float:
        assert self.fleet.leases is not None  # store mode always leases
        info = await self.fleet.leases.redis.info("memory")
        return int(info["used_memory"]) / (1024 * 1024)

    async def close(self) -> None:
        await self.fleet.aclose()


def _memory(fleet: common.LocalFleet, name: str) -> tuple[float, float]:
    """(CLI VmRSS, provider VmRSS) of replica `name` in MiB; the provider's is 0 in volume mode (there is none)."""
    if fleet.store:
        return fleet.cli_rss_mib(name), fleet.rss_mib(name)
    return fleet.rss_mib(name), 0.0


async def _wait_registered(fleet: common.LocalFleet, name: str, port: int, old_cli: int | None,
                           timeout: float) -> None:
    """Store mode, after a restart: until the new provider has registered (its ready file names a live provider
    and a CLI other than the one before), bounded by `timeout`."""
    ready = fleet.ready_file(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cli = provider_ready.cli_pid(ready)
        if provider_ready.not_ready(ready, port) is None and cli is not None and cli != old_cli:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the provider of {name} did not register within {timeout} s after restart")


async def measure(fleet: common.LocalFleet, levels: tuple[int, ...] = LEVELS, seconds: float = 180.0,
                  settle: float = 3.0) -> ScaleResult:
    target = fleet.target
    assert target is not None
    name, address, token = fleet.replica_name(0), target.replicas[0], common.token_of(target)
    result = ScaleResult(store=fleet.store)
    sessions: Sessions = await (FleetSessions.open(target) if fleet.store else SdkSessions.open(fleet))
    budget = common.Budget(len(levels), seconds)
    try:
        await _settle(settle)
        result.idle_rss_mib = sum(_memory(fleet, name))
        result.idle_redis_mib = await sessions.redis_mib()
        while budget.next():
            want = levels[budget.count - 1]
            started = time.perf_counter()
            result.error_examples += await sessions.attach(want - sessions.attached)
            attach_seconds = time.perf_counter() - started
            outcomes = await sessions.send_all()
            times = [o for o in outcomes if isinstance(o, float)]
            errors = len(outcomes) - len(times) + (want - sessions.attached)
            result.error_examples += [f"send: {type(o).__name__}: {str(o)[:160]}" for o in outcomes
                                      if isinstance(o, BaseException)][:3]
            cli, provider = _memory(fleet, name)
            level = Level(sessions.attached, common.summary(times), errors, cli, attach_seconds, provider,
                          await sessions.redis_mib())
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
        await sessions.detach_all()
        await _settle(settle)
        result.after_detach_rss_mib = sum(_memory(fleet, name))
        await sessions.delete_all()
    finally:
        await sessions.close()
    # Recycling: supervisord stops the replica and starts it again (same port, same COPILOT_HOME); in store mode
    # the supervised program is the provider, which starts a new CLI.
    old_cli = fleet.cli_pid(name) if fleet.store else None
    started = time.perf_counter()
    fleet.supervisor().restart_process(name)
    probe = await _wait_answering(address, token, 60)
    if fleet.store:
        await _wait_registered(fleet, name, int(address.rsplit(":", 1)[1]), old_cli, 60)
    result.recycle_seconds = time.perf_counter() - started
    await common.close_client(probe)
    await _settle(settle)
    result.after_recycle_rss_mib = sum(_memory(fleet, name))
    return result


def report(r: ScaleResult) -> str:
    if r.store:
        return _store_report(r)
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
    return text + _errors(r)


def _store_report(r: ScaleResult) -> str:
    rows = [[lv.sessions, common.fmt(lv.attach_seconds, " s"), common.fmt(lv.send["p50"] * 1000),
             common.fmt(lv.send["p99"] * 1000), lv.errors, common.fmt(lv.rss_mib), common.fmt(lv.provider_rss_mib),
             common.fmt((lv.server_rss_mib - r.idle_rss_mib) / lv.sessions), common.fmt(lv.redis_mib),
             common.fmt((lv.redis_mib - r.idle_redis_mib) * 1024 / lv.sessions)] for lv in r.levels]
    text = common.table(["attached sessions", "attach time (new ones)", "send p50 ms", "send p99 ms", "errors",
                         "CLI VmRSS MiB", "provider VmRSS MiB", "CLI + provider MiB per session over the start",
                         "Redis used_memory MiB", "Redis KiB per session over the start"], rows)
    text += (f"\n\nCLI + provider VmRSS before the first attach {r.idle_rss_mib:.0f} MiB (a fresh replica), Redis "
             f"used_memory {r.idle_redis_mib:.1f} MiB; stopped: {r.stopped_because}; largest level within the "
             f"limits (no error, p99 send <= {P99_LIMIT:g} s): **{r.max_ok_sessions} sessions**.\n"
             f"After detaching all: {r.after_detach_rss_mib:.0f} MiB (CLI + provider); after recycling the replica "
             f"(restart took {r.recycle_seconds:.1f} s until it answered and its provider registered): "
             f"{r.after_recycle_rss_mib:.0f} MiB.")
    return text + _errors(r)


def _errors(r: ScaleResult) -> str:
    return "".join(f"\n- error: `{e}`" for e in r.error_examples[:3])


def plot(r: ScaleResult, path: Path) -> Path:
    """Memory on the left axis (MiB), send latency on the right (ms): one unit per axis."""
    xs = [lv.sessions for lv in r.levels]
    memory = "CLI + provider VmRSS (MiB)" if r.store else "CLI VmRSS (MiB)"
    return common.plot(path, "One replica: memory and send p99 by attached sessions", "attached sessions",
                       memory, {memory: (xs, [lv.server_rss_mib for lv in r.levels])},
                       right={"send p99 (ms)": (xs, [lv.send["p99"] * 1000 for lv in r.levels])},
                       right_label="send p99 (ms)")


def store_block(r: ScaleResult, when: str, load: str, load_end: str, image: str) -> str:
    """The store-mode block of docs/benchmarks.md: how it is measured, and this run's figures."""
    cores = os.cpu_count() or 1
    busy = max(float(x) for x in (*load.split("/"), *load_end.split("/"))) > 0.75 * cores
    shared = ": other jobs shared the machine, so the times are upper bounds" if busy else ""
    return f"""{STORE_BEGIN}
Measured by `benchmarks/scale.py --store` on {when}; load average {load} at the start,
{load_end} at the end ({cores} cores{shared}).
A 1-replica shared-cli local fleet with `fleet:sessionState: {{mode: store}}`: the CLI behind its session store
provider, session state in the fleet's redis-server. Every session is attached through the fleet client
(`FleetClient`, one SDK client, TCP_NODELAY), which leases it and binds the lease to the replica; closing detaches
and releases; deleting takes the lease again and deletes from the store. Levels, sends and stop rules as in volume
mode above. VmRSS of the CLI (its pid from the provider's ready file) and of the provider; Redis `used_memory`
(INFO memory), which includes the leases and bindings.

{report(r)}

![scale, store mode]({image})
{STORE_END}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", action="store_true",
                        help="session state in the session store (fleet:sessionState mode store)")
    parser.add_argument("--no-write", action="store_true", help=f"--store: do not write the figures into {DOC}")
    args = parser.parse_args()
    if args.no_write and not args.store:
        parser.error("--no-write applies to --store only (the volume-mode figures are written by run_all.py)")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    fleet = common.LocalFleet.create(replicas=1, store=args.store)
    try:
        fleet.up()
        r = common.run(measure(fleet, (2, 4) if args.quick else LEVELS, settle=1 if args.quick else 3))
    finally:
        fleet.down()
    load_end = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} at the start, {load_end} at the end")
    print(report(r))
    print(json.dumps(r.to_json(), indent=1))
    if args.store and not (args.quick or args.no_write):
        image = DOC.parent / "benchmarks" / "scale_store.png"
        plot(r, image)
        block = store_block(r, when, load, load_end, f"{image.parent.name}/{image.name}")
        common.write_marked_block(DOC, STORE_BEGIN, STORE_END, block, STORE_HEADING)
        print(f"wrote the store-mode figures into {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
