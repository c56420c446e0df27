"""The session store against a shared directory, side by side in one run, and what a Redis crash loses.

    .venv/bin/python benchmarks/session_store.py [--cycles N] [--quick] [--skip persistence] [--json FILE]
        [--no-write]

The cycle figures are written into docs/benchmarks.md (its "Session state in a store" block, between markers;
`benchmarks/run_all.py` measures and writes the same block) unless --quick or --no-write; everything is printed.

1. The cycle: lease (bound to the server in store mode), create on server A, turn, detach, release; lease, resume
   on server B, turn, detach, release. Three arms, interleaved (the order rotates every round): `volume` (two bare
   CLIs on one shared session-state/), `store` (two provider-backed CLIs, one Redis), `store, Nagle on` (the same
   with the application's SDK connections as SDK 1.0.25 opens them). Every application connection of the other two
   arms has TCP_NODELAY (copilot_fleet.nodelay.cli_client); the provider's own connection always has it.
2. Provider memory (RSS, idle and after the cycles), sessionFs requests per cycle (Redis EVALSHA calls), store
   bytes per session (logical and Redis MEMORY USAGE).
3. Persistence: appends through the store's own script as fast as one writer can, redis-server SIGKILLed at a
   random moment, restarted from its AOF: acknowledged appends lost, for `appendfsync everysec` and `always`, and
   what each costs per append. (A process crash only: see the printed note for a machine crash.)

Everything listens on 127.0.0.1; every process is stopped by its PID; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from copilot import CopilotClient, PermissionHandler

import common
from copilot_fleet.client.ids import new_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.admin import delete_session
from copilot_fleet.sessionstore.fencing import ServerIdentity, ServerRegistration, bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from copilot_fleet.testmodel import serve
from tests.helpers import store_processes as procs  # the tests' processes; `common` put the root on sys.path

OPS = ("create", "turn", "resume", "turn on B", "cycle")
KEYS = StoreKeys("shared")
RATIO_TARGET = 1.25  # store / volume, cycle p50, TCP_NODELAY on every connection
DOC = common.ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- session-store:begin -->", "<!-- session-store:end -->"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Arm:
    name: str
    a: Any  # ProviderProcess | BareCli
    b: Any
    bind: bool
    nodelay: bool
    clients: dict[str, CopilotClient] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    async def client(self, server: Any, token: str) -> CopilotClient:
        if server.address not in self.clients:
            self.clients[server.address] = await common.sdk_client(server.address, token, as_shipped=not self.nodelay)
        return self.clients[server.address]


class Bench:
    def __init__(self, root: Path, quick: bool) -> None:
        self.root = root
        self.quick = quick
        self.token = secrets.token_hex(16)
        self.redis = procs.RedisServer(root / "redis", extra=("--appendonly", "yes", "--appendfsync", "everysec"))
        self.started: list[Any] = []
        self.store_cycles = 0
        self.model = serve("127.0.0.1", 0, api_key=secrets.token_hex(8))

    def start(self) -> None:
        self.redis.start()
        shared = self.root / "shared-session-state"
        shared.mkdir()
        self.p1 = procs.start_provider(self.root, "p1", self.redis.url, self.token)
        self.started.append(self.p1)
        self.p2 = procs.start_provider(self.root, "p2", self.redis.url, self.token)
        self.started.append(self.p2)
        self.b1 = procs.start_bare_cli(self.root, "b1", shared, self.token)
        self.started.append(self.b1)
        self.b2 = procs.start_bare_cli(self.root, "b2", shared, self.token)
        self.started.append(self.b2)

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.redis.stop()
        self.model.stop()

    def options(self) -> dict[str, Any]:
        return {"provider": self.model.provider(), "model": "copilot-fleet-test",
                "on_permission_request": PermissionHandler.approve_all}

    async def cycle(self, arm: Arm, leases: LeaseManager, admin: aioredis.Redis, record: bool) -> None:
        sid = new_session_id("bench", arm.name.replace(",", "").replace(" ", "-"))
        times: dict[str, float] = {}
        began = time.perf_counter()
        for step, server in (("A", arm.a), ("B", arm.b)):
            client = await arm.client(server, self.token)
            async with leases.hold(sid) as lease:
                if arm.bind:
                    await bind_lease(admin, KEYS, sid, lease.token, server.name)
                t = time.perf_counter()
                if step == "A":
                    session = await client.create_session(session_id=sid, name="bench", **self.options())
                else:
                    session = await client.resume_session(sid, **self.options())
                times["create" if step == "A" else "resume"] = time.perf_counter() - t
                t = time.perf_counter()
                reply = await session.send_and_wait("remember: apple" if step == "A" else "recall", timeout=120)
                times["turn" if step == "A" else "turn on B"] = time.perf_counter() - t
                text = str(getattr(reply.data, "content", None)) if reply is not None else ""
                if step == "B" and "apple" not in text:
                    raise RuntimeError(f"resume on B lost the history: {text!r}")
                await session.disconnect()
        times["cycle"] = time.perf_counter() - began
        arm.sessions.append(sid)
        if record:
            for op, value in times.items():
                arm.samples[op].append(value * 1000)

    async def cycles(self, n: int, max_seconds: float) -> dict[str, Any]:
        arms = [Arm("volume", self.b1, self.b2, bind=False, nodelay=True),
                Arm("store", self.p1, self.p2, bind=True, nodelay=True)]
        admin = aioredis.from_url(self.redis.url)
        leases = LeaseManager(admin, ttl=30)
        idle = {p.name: rss_mib(p.proc.pid) for p in (self.p1, self.p2)}
        try:
            arms.append(Arm("store, Nagle on", self.p1, self.p2, bind=True, nodelay=False))
            for arm in arms:
                for server in (arm.a, arm.b):
                    await arm.client(server, self.token)
            for arm in arms:  # warm-up: caches, first connections
                await self.cycle(arm, leases, admin, record=False)
            budget = common.Budget(max_count=n, max_seconds=max_seconds)
            rounds = 0
            while budget.next():
                order = arms[rounds % len(arms):] + arms[: rounds % len(arms)]
                for arm in order:
                    try:
                        await self.cycle(arm, leases, admin, record=True)
                    except Exception as exc:  # counted and shown; the run goes on
                        arm.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                rounds += 1
            self.store_cycles = sum(len(arm.sessions) for arm in arms if arm.bind)
            after = {p.name: rss_mib(p.proc.pid) for p in (self.p1, self.p2)}
            size = await self._session_size(admin, arms[1].sessions[-1])
            for arm in arms:
                await self._cleanup(arm, leases, admin)
        finally:
            for arm in arms:
                for client in arm.clients.values():
                    await client.force_stop()
            await admin.aclose()
        by = {arm.name: arm for arm in arms}
        return {
            "rounds": rounds,
            "arms": {arm.name: {"stats": {op: common.summary(v) for op, v in arm.samples.items()},
                                "errors": arm.errors} for arm in arms},
            "ratio_store_volume": common.ratio(by["store"].samples["cycle"], by["volume"].samples["cycle"]),
            "ratio_nagle_volume": common.ratio(by["store, Nagle on"].samples["cycle"], by["volume"].samples["cycle"]),
            "provider_rss_mib": {"idle": idle, "after": after},
            "session": size,
        }

    def fs_requests_per_cycle(self) -> float:
        """From the providers' own count, which they log when they stop (call after stop())."""
        served = 0
        for provider in (self.p1, self.p2):
            line = next(x for x in provider.output().splitlines() if "sessionFs requests" in x)
            served += int(line.split("served ")[1].split()[0])
        return served / max(1, self.store_cycles)

    @staticmethod
    async def _session_size(admin: aioredis.Redis, sid: str) -> dict[str, Any]:
        keys = [k async for k in admin.scan_iter(match=KEYS.session(sid) + "*")]
        memory = sum([int(await admin.memory_usage(k) or 0) for k in keys])
        meta = await admin.hgetall(KEYS.meta(sid))
        events = await admin.strlen(KEYS.content(sid, "events.jsonl"))
        return {"keys": len(keys), "bytes": int(meta.get(b"bytes", 0)), "events_jsonl_bytes": int(events),
                "redis_memory_bytes": memory}

    async def _cleanup(self, arm: Arm, leases: LeaseManager, admin: aioredis.Redis) -> None:
        for sid in arm.sessions:
            if arm.bind:
                async with leases.hold(sid) as lease:
                    await delete_session(admin, KEYS, sid, lease.token)
            else:
                await (await arm.client(arm.b, self.token)).delete_session(sid)


async def run_cycles(root: Path, n: int, quick: bool = False) -> dict[str, Any]:
    """The cycle part on its own processes under `root`, stopped by PID at the end."""
    bench = Bench(root, quick)
    try:
        bench.start()
        out = await bench.cycles(n, 900)
    finally:
        bench.stop()
    out["fs_requests_per_cycle"] = bench.fs_requests_per_cycle()
    return out


# -- persistence ------------------------------------------------------------------------------------------------


async def crash_round(root: Path, policy: str, seconds: float) -> dict[str, Any]:
    """Append numbered lines through the store until redis-server is SIGKILLed; restart; count what is missing."""
    server = procs.RedisServer(root, extra=("--appendonly", "yes", "--appendfsync", policy))
    server.start()
    client = aioredis.from_url(server.url, socket_timeout=5)
    keys = StoreKeys("crash")
    sid = new_session_id("crash", "aof")
    identity = ServerIdentity("crash-writer")
    registration = ServerRegistration(client, keys, identity, ttl=3600)
    await registration.take()
    lease = await LeaseManager(client, ttl=3600).acquire(sid)
    await bind_lease(client, keys, sid, lease.token, identity.server_id)
    store = RedisSessionStore(client, keys, writer=identity)
    acked = 0
    latencies: list[float] = []
    kill_at = time.monotonic() + random.uniform(seconds / 3, seconds)
    assert server.proc is not None
    try:
        while True:  # ends when redis-server is killed (bounded by kill_at)
            if time.monotonic() >= kill_at and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGKILL)
            t = time.perf_counter()
            try:
                await store.append_file(sid, "events.jsonl", f'{{"n":{acked + 1},"pad":"{"x" * 200}"}}\n')
            except Exception:
                break
            latencies.append((time.perf_counter() - t) * 1000)
            acked += 1
    finally:
        await client.aclose()
    server.proc.wait(timeout=60)
    server.start()  # same port, same directory: loads the AOF
    check = aioredis.from_url(server.url)
    try:
        raw = await check.get(keys.content(sid, "events.jsonl")) or b""
        assert isinstance(raw, bytes)  # a client without decode_responses
    finally:
        await check.aclose()
        server.stop()
    lines = raw.decode().splitlines()
    complete = [json.loads(line)["n"] for line in lines if line.endswith("}")]
    present = max(complete, default=0)
    return {"acked": acked, "present": present, "lost_acked": max(0, acked - present),
            "torn_lines": len(lines) - len(complete), "append_ms": common.summary(latencies)}


def fsync_ms(directory: Path, n: int = 50) -> dict[str, float]:
    """How long this disk takes to make a small append durable: fdatasync, what Redis calls on Linux (on every
    write batch with `always`, once a second in a background thread with `everysec`)."""
    samples = []
    path = directory / "fsync-probe"
    with open(path, "ab") as f:
        for _ in range(n):
            f.write(b"x" * 256)
            f.flush()
            t = time.perf_counter()
            os.fdatasync(f.fileno())
            samples.append((time.perf_counter() - t) * 1000)
    path.unlink()
    return common.summary(samples)


async def persistence(root: Path, rounds: int, seconds: float) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"fsync_ms": fsync_ms(root)}
    for policy in ("everysec", "always"):
        runs = [await crash_round(root / f"{policy}-{i}", policy, seconds) for i in range(rounds)]
        out[policy] = runs
    return out


# -- report -----------------------------------------------------------------------------------------------------


def _mib(by_server: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in by_server.items()) or "-"


def _session(size: dict[str, Any]) -> str:
    if "bytes" not in size:
        return str(size)
    return (f"{size['keys']} keys, {size['bytes']:,} bytes of files (events.jsonl {size['events_jsonl_bytes']:,}), "
            f"{size['redis_memory_bytes']:,} bytes of Redis memory (MEMORY USAGE over its keys)")


def cycle_markdown(c: dict[str, Any]) -> str:
    """The cycle figures as a markdown table and the ratios (for the console and docs/benchmarks.md)."""
    header = ["| p50 ms (p95) | " + " | ".join(OPS) + " | errors |", "|---|" + "---|" * (len(OPS) + 1)]
    rows = []
    for name, arm in c["arms"].items():
        cells = [f"{arm['stats'][op]['p50']:.1f} ({arm['stats'][op]['p95']:.1f})" for op in OPS]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {len(arm['errors'])} |")
    met = "met" if c["ratio_store_volume"] <= RATIO_TARGET else "**MISSED**"
    n = int(next(iter(c["arms"].values()))["stats"]["cycle"]["n"])
    lines = [*header, *rows, "",
             f"- cycle p50 ratio store / volume, TCP_NODELAY on every connection: **{c['ratio_store_volume']:.3f}** "
             f"(target <= {RATIO_TARGET:g}: {met}); with the SDK's own connections (Nagle on): "
             f"{c['ratio_nagle_volume']:.3f}. {n} cycles per arm, interleaved.",
             f"- sessionFs requests per cycle: {c['fs_requests_per_cycle']:.1f} (each one Redis script)",
             f"- provider RSS (MiB): idle {_mib(c['provider_rss_mib']['idle'])}, after "
             f"{_mib(c['provider_rss_mib']['after'])}",
             f"- one session after a cycle: {_session(c['session'])}"]
    for name, arm in c["arms"].items():
        for example in arm["errors"][:3]:
            lines.append(f"  - {name} error: {example}")
    return "\n".join(lines)


def doc_block(results: dict[str, Any]) -> str:
    """The block of docs/benchmarks.md: how the cycle is measured, and this run's figures."""
    return f"""{BEGIN}
Measured by `benchmarks/session_store.py` on {results['when']} (load average {results['load']} at the start,
{results.get('load_end', '?')} at the end). Two servers per mode: `volume` is two bare CLIs sharing one
session-state/ directory, `store` two provider-backed CLIs (`python -m copilot_fleet.sessionstore`) on one
redis-server (AOF, `appendfsync everysec`); the test model as the BYOK provider. Each cycle: lease (bound to the
server in store mode), create on A, turn, detach, release; lease, resume on B, turn (`recall`, checked), detach,
release. `store, Nagle on` is the store arm with the application's SDK connections as SDK 1.0.25 opens them; every
other application connection has TCP_NODELAY, and the provider's connection to its CLI always has it.

{cycle_markdown(results['cycles'])}
{END}"""


def write_block(doc: Path, block: str) -> None:
    """Replace the block between the markers in `doc` (or append it under its own heading)."""
    common.write_marked_block(doc, BEGIN, END, block, "## Session state in a store against a shared directory")


def report(results: dict[str, Any]) -> str:
    out = [f"# Session store benchmark ({results['when']}, load average {results['load']})", ""]
    c = results.get("cycles")
    if c:
        out += ["## Cycle: create on A, turn, resume on B, turn (ms)", "", cycle_markdown(c), ""]
    p = results.get("persistence")
    if p:
        out += ["## What a redis-server crash (SIGKILL) loses", "",
                f"disk fdatasync of a small append: p50 {p['fsync_ms']['p50']:.2f} ms, "
                f"p99 {p['fsync_ms']['p99']:.2f} ms",
                "", "| appendfsync | round | acknowledged | present after restart | lost | torn lines | append p50 ms "
                "| append p99 ms |", "|---|---|---|---|---|---|---|---|"]
        for policy in ("everysec", "always"):
            for i, r in enumerate(p[policy]):
                out.append(f"| {policy} | {i + 1} | {r['acked']} | {r['present']} | {r['lost_acked']} | "
                           f"{r['torn_lines']} | {r['append_ms']['p50']:.2f} | {r['append_ms']['p99']:.2f} |")
    return "\n".join(out) + "\n"


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="3 cycles, 1 crash round per policy")
    p.add_argument("--skip", default="", help="comma-separated: cycles, persistence")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-write", action="store_true", help=f"do not write the cycle figures into {DOC}")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"cycles", "persistence"}
    if unknown:
        p.error(f"unknown part(s) to skip: {', '.join(sorted(unknown))}; allowed: cycles, persistence")
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load": "/".join(f"{x:.1f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        root = Path(tmp)
        if "cycles" not in skip:
            results["cycles"] = await run_cycles(root / "cycles", 3 if args.quick else args.cycles, args.quick)
        if "persistence" not in skip:
            results["persistence"] = await persistence(root / "persistence", 1 if args.quick else 3,
                                                       1.0 if args.quick else 3.0)
    results["load_end"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(report(results))
    if "cycles" in results and not (args.quick or args.no_write):
        write_block(DOC, doc_block(results))
        print(f"wrote the cycle figures into {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
