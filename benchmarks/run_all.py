"""Run every benchmark against throwaway local fleets and write docs/benchmarks.md with tables and PNG plots.

    .venv/bin/python benchmarks/run_all.py [--quick] [--doc PATH] [--skip startup,render,verify]

One shared-cli fleet (2 replicas, Redis, HAProxy, the test model) in a temp project with free ports serves the
latency, overhead, fleet-client-vs-raw-SDK, floor, HAProxy, verify and scale runs; it is stopped (down --purge, then
SIGKILL by PID of anything left) before the Kubernetes Service path (benchmarks/hops.py: its own network namespace)
and the start-up benchmark (benchmarks/local_startup.py) bring up their own servers, so they do not compete.
Render scaling runs benchmarks/render_scaling.py (a subprocess per size). The start-up and render benchmarks write
their own documents next to benchmarks.md (local-fleet.md's "Measured" block, render-benchmark.md), which
benchmarks.md links to: each figure is written in one place. `--quick` runs the smallest sizes and, unless --doc is
given, writes to a temp directory instead of docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import floor
import hops
import latency
import overheads
import scale
import session_store
import vs_raw_sdk

DOC = common.ROOT / "docs" / "benchmarks.md"
RENDER_TARGET_S = 3.0
PARTS = ("latency", "overheads", "vs_raw", "floor", "hops", "verify", "scale", "store", "startup", "render")


@dataclass
class Sizes:
    latency_levels: tuple[int, ...]
    latency_sessions: int
    overhead_iterations: int
    scale_levels: tuple[int, ...]
    scale_settle: float
    startup_runs: int
    render_sizes: tuple[int, ...]
    render_floor: bool
    vs_raw_iterations: int
    floor_turns: int
    service_cycles: int
    store_cycles: int

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls((1, 2), 4, 2, (2, 4), 1.0, 1, (10,), False, 2, 3, 2, 3)
        return cls((1, 10, 50), 100, 30, scale.LEVELS, 3.0, 3, (10, 100, 1000), True, 30, 40, 20, 20)


@dataclass
class Results:
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    up_seconds: float = 0.0
    latency: list[latency.LatencyResult] = field(default_factory=list)
    overheads: list[overheads.Comparison] = field(default_factory=list)
    profile: str = ""
    vs_raw: list[vs_raw_sdk.RouteResult] = field(default_factory=list)
    vs_raw_profile: str = ""
    floor: floor.FloorResult | None = None
    haproxy: hops.HaproxyEnds | None = None
    service: hops.ServicePath | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    scale: scale.ScaleResult | None = None
    startup_doc: Path | None = None  # where the start-up figures were written
    render_rows: list[dict[str, Any]] = field(default_factory=list)
    render_doc: Path | None = None
    store: dict[str, Any] | None = None  # benchmarks/session_store.py's figures (its `results` shape)
    failures: dict[str, str] = field(default_factory=dict)


def _step(results: Results, name: str, call: Any) -> Any:
    """Run one part; a failing part is reported in the doc instead of losing the others."""
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        return call()
    except Exception as exc:
        results.failures[name] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"   FAILED: {results.failures[name]}", flush=True)
        return None
    finally:
        results.seconds[name] = time.perf_counter() - started
        print(f"   {results.seconds[name]:.1f} s", flush=True)


def run_verify(fleet: common.LocalFleet, timeout: float = 300) -> dict[str, Any]:
    """The whole `copilot-fleet verify` against the fleet, timed from exec to exit."""
    started = time.perf_counter()
    proc = fleet.cli("verify", "--stack", common.STACK, timeout=timeout)
    seconds = time.perf_counter() - started
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-3:]
    return {"seconds": seconds, "exit": proc.returncode, "summary": " / ".join(tail)}


def run_startup(runs: int, settle: float, doc: Path) -> Path:
    """local_startup's measurement, written into `doc`'s "Measured" block (local-fleet.md)."""
    import local_startup

    load_before = os.getloadavg()[0]
    results, _ = local_startup.measure(runs, settle)
    local_startup.write_doc(local_startup.report(results, runs, settle, load_before), doc)
    return doc


def run_render(sizes: tuple[int, ...], floor: bool, doc: Path) -> tuple[list[dict[str, Any]], Path]:
    """render_scaling's whole run (each size in a subprocess of its own), its report written to `doc`."""
    import render_scaling

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "render.json"
        argv = ["--sizes", ",".join(str(n) for n in sizes), "--write", str(doc), "--json", str(raw)]
        if render_scaling.main(argv + ([] if floor else ["--no-floor"])) != 0:
            raise RuntimeError("benchmarks/render_scaling.py failed")
        return list(json.loads(raw.read_text())["rows"]), doc


def run_store(cycles: int) -> dict[str, Any]:
    """benchmarks/session_store.py's cycle part (store against volume, its own processes), in its results shape."""
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load": "/".join(f"{x:.1f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        results["cycles"] = common.run(session_store.run_cycles(Path(tmp), cycles))
    results["load_end"] = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return results


def run_fleet_parts(results: Results, sizes: Sizes, skip: set[str]) -> None:
    fleet = common.LocalFleet.create(replicas=2)
    try:
        target = _step(results, "fleet up (2 replicas)", fleet.up)
        if target is None:
            return
        results.up_seconds = fleet.up_seconds
        if "latency" not in skip:
            results.latency = _step(results, "latency", lambda: common.run(latency.measure(
                target, target.replicas[0], sizes.latency_levels, max_sessions=sizes.latency_sessions))) or []
        if "overheads" not in skip:
            out = _step(results, "overheads", lambda: common.run(overheads.measure(
                target, iterations=sizes.overhead_iterations, locate=fleet.replica_of)))
            if out:
                results.overheads, results.profile = out
        if "vs_raw" not in skip:
            out = _step(results, "vs_raw", lambda: common.run(vs_raw_sdk.measure(
                target, fleet, iterations=sizes.vs_raw_iterations)))
            if out:
                results.vs_raw, results.vs_raw_profile = out
        if "floor" not in skip:
            results.floor = _step(results, "floor", lambda: common.run(floor.measure(fleet, turns=sizes.floor_turns)))
        if "hops" not in skip:
            results.haproxy = _step(results, "hops: haproxy", lambda: common.run(hops.haproxy_ends(fleet)))
        if "verify" not in skip:
            results.verify = _step(results, "verify", lambda: run_verify(fleet)) or {}
        if "scale" not in skip:  # last: it restarts replica 0
            results.scale = _step(results, "scale", lambda: common.run(scale.measure(
                fleet, sizes.scale_levels, settle=sizes.scale_settle)))
    finally:
        _step(results, "fleet down", fleet.down)


# --- the document ---------------------------------------------------------------------------------------------

def _render_growth(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    by = {r["users"]: r for r in rows}
    sizes = sorted(by)
    lines = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        growth = {n: max(by[n]["rss_peak_mb"] - by[n]["rss_base_mb"], 0.1) for n in (a, b)}
        lines.append(f"- {a} -> {b} users (x{b / a:g}): total time x{by[b]['total_s'] / by[a]['total_s']:.1f}, "
                     f"peak-RSS growth x{growth[b] / growth[a]:.1f}")
    top = by[sizes[-1]]
    lines.append(f"- {sizes[-1]} users: total {top['total_s']:.2f} s against a target of {RENDER_TARGET_S:g} s: "
                 f"**{'met' if top['total_s'] <= RENDER_TARGET_S else 'MISSED'}**")
    return "\n".join(lines)


WHOSE = {
    "endpoint": "HAProxy in TCP mode adds one loopback hop to every JSON-RPC message; ours is only its config "
                "(`copilot_fleet/local/render.py`), nothing in the request path runs our code",
    "fleet_client": "ours: ownership check, rendezvous routing, the Redis lease (SET NX + a renewer task + "
                    "release script) and the pool; the profile below says which part dominates",
    "cross_replica_resume": "the CLI's: the other replica has no resident copy of the session and loads "
                            "`events.jsonl` from the shared `session-state/`; ours is the routing that keeps a "
                            "user's sessions on one replica so this path is the exception (failover, recycling)",
}


def _targets(results: Results) -> str:
    """One table of every target, met or missed, and whose code the figure is."""
    rows = []
    for c in results.overheads:
        rows.append([" / ".join(overheads.LABELS[c.name]), f"p50 ratio <= {c.target:g}", f"{c.ratio:.3f}",
                     "met" if c.met else "**MISSED**", WHOSE[c.name] if not c.met else ""])
    same = results.vs_raw[0] if results.vs_raw and results.vs_raw[0].route == "same" else None
    for r in results.vs_raw:
        for op in vs_raw_sdk.OPS:
            ok = r.met(op)
            rows.append([f"FleetClient / raw SDK as shipped, {op}, {vs_raw_sdk.ROUTES[r.route]}",
                         f"p50 ratio <= {vs_raw_sdk.TARGETS[op]:g}", f"{r.ratio('fleet', op):.3f}",
                         "met" if ok else "**MISSED**", "" if ok else vs_raw_sdk.attribution(r, op, same)])
    if results.render_rows:
        top = max(results.render_rows, key=lambda r: r["users"])
        ok = top["total_s"] <= RENDER_TARGET_S
        rows.append([f"render per-user, {top['users']} users", f"< {RENDER_TARGET_S:g} s", f"{top['total_s']:.2f} s",
                     "met" if ok else "**MISSED**",
                     "" if ok else "the Pulumi SDK's: its per-registration cost under mocks (the SDK floor column) "
                                   "is most of the render; docs/render-benchmark.md splits ours from it"])
    if results.store is not None:
        c = results.store["cycles"]
        ok = c["ratio_store_volume"] <= session_store.RATIO_TARGET
        rows.append(["session state in the store / on a shared directory: create, turn, resume on the other "
                     "server, turn", f"p50 ratio <= {session_store.RATIO_TARGET:g}", f"{c['ratio_store_volume']:.3f}",
                     "met" if ok else "**MISSED**", "" if ok else "see the session store section"])
    if results.scale is not None:
        rows.append(["sessions on one replica (no error, p99 send <= 2 s)",
                     "report (fleet:maxSessionsPerReplica default 50)",
                     str(results.scale.max_ok_sessions), results.scale.stopped_because, ""])
    if not rows:
        return ""
    return "## Targets\n\n" + common.table(["figure", "target", "measured", "", "if missed: whose, why"], rows) + "\n"


def _kept_block(doc: Path) -> str:
    """The session store block of the document as it is, for a run that did not measure it."""
    return common.marked_block(doc, session_store.BEGIN, session_store.END)


def write_doc(results: Results, doc: Path, quick: bool) -> None:
    img = doc.parent / "benchmarks"
    rel = img.name
    busy = max(results.load_start[0], results.load_end[0]) > 0.75 * (os.cpu_count() or 1)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    total = time.perf_counter() - results.started
    parts = [f"""# Benchmarks

Written by `.venv/bin/python benchmarks/run_all.py{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
in {total / 60:.1f} minutes. Machine: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python
{platform.python_version()}. Load average (1/5/15 min) at the start {'/'.join(f'{x:.1f}' for x in results.load_start)},
at the end {'/'.join(f'{x:.1f}' for x in results.load_end)}{': **other jobs shared the machine**, so absolute times are upper bounds; the ratios (measured side by side, interleaved) are the figures to trust' if busy else ''}.

Fleet: a local shared-cli fleet in a temp project (2 replicas of the real Copilot CLI 1.0.102, Redis, HAProxy,
the deterministic test model as the BYOK provider, so the CLI and the fleet dominate every figure); `up` took
{results.up_seconds:.1f} s. One SDK client per process and endpoint; concurrency with `asyncio.gather`; every loop
bounded in count and time; all traffic on 127.0.0.1. Every SDK client is made through `copilot_fleet.nodelay`
(TCP_NODELAY), except the raw-SDK-as-shipped baselines. Percentiles interpolate between ranks (with few samples
p99 is close to the maximum).
"""]  # noqa: E501 - markdown for docs/: table rows and paragraphs are one line each
    parts.append(_targets(results))
    if results.failures:
        parts.append("**Parts that failed in this run:**\n\n" + "\n".join(
            f"- {k}: `{v.splitlines()[0] if v else ''}`" for k, v in results.failures.items()) + "\n")

    if results.latency:
        latency.plot(results.latency, img / "latency.png")
        parts.append(f"""## Latency on one replica

Each session: create, send (`remember: apple`), disconnect, resume, send (`recall`), disconnect, delete; `n`
sessions run at once over one SDK client (TCP_NODELAY, `copilot_fleet.nodelay`) to replica 0
(`fleet:maxSessionsPerReplica` defaults to 50 a server).
Send is `send_and_wait` until the test model's reply arrives.

{latency.report(results.latency)}

![latency]({rel}/latency.png)
""")
    if results.overheads:
        overheads.plot(results.overheads, img / "overheads.png")
        parts.append(f"""## Overheads of the fleet (ratios, side by side in one run)

A cycle is create, send, disconnect, delete (for the resume comparison: resume, send `recall`, disconnect of a
session created on replica 0, checked to still remember). A and B alternate ABAB/BABA so load drift hits both.

{overheads.report(results.overheads)}

![overheads]({rel}/overheads.png)
""")
        if results.profile:
            parts.append("Profile of the fleet-client cycle (pyinstrument, wall clock; ours is `copilot_fleet/`, "
                         "the rest is the SDK waiting on the CLI):\n\n```\n"
                         + "\n".join(results.profile.splitlines()[:60]) + "\n```\n")
    if results.vs_raw:
        vs_raw_sdk.plot_before_after(results.vs_raw, img / "before_after.png")
        vs_raw_sdk.plot_arms(results.vs_raw[0], img / "vs_raw_arms.png")
        parts.append(f"""## The fleet client against the raw SDK as shipped (TCP_NODELAY)

SDK 1.0.25 connects without `TCP_NODELAY` and writes each JSON-RPC message as two writes (header, body), so with
Nagle's algorithm the body waits for the server's delayed ACK. Every connection this project opens goes through
`copilot_fleet/nodelay.py`, which sets it. Each arm runs the same cycle (create, send, disconnect, resume, send,
disconnect, delete) in turn, rotating the order; `both ends` also has `TCP_NODELAY` set on the CLI's end of its
connection from outside (root only; no client can do that), which shows what the CLI's own socket costs.

{vs_raw_sdk.report(results.vs_raw)}

![each op before and after]({rel}/before_after.png)

![replica 0 by client]({rel}/vs_raw_arms.png)
""")
        if results.vs_raw_profile:
            parts.append("Profile of the fleet-client cycle (pyinstrument, wall clock; ours is `copilot_fleet/`, "
                         "the SDK is `copilot/`, the rest is waiting on the CLI):\n\n```\n"
                         + "\n".join(results.vs_raw_profile.splitlines()[:60]) + "\n```\n")
    if results.floor is not None:
        parts.append(f"""## The CLI's floor

One session over a `TCP_NODELAY` connection straight to replica 0, turns one after another against the instant
test model, and a JSON-RPC `ping` (the smallest request the CLI answers): nothing else in the way. Turns alternate
between the arms on the one session; `TCP_NODELAY` on the CLI's end of that connection and on the test model's
ends of the CLI's connections to it is switched from outside before each turn (benchmarks/sockopts.py), an
experiment: neither the CLI nor the test model sets it itself.

{floor.report(results.floor)}
""")
    if results.haproxy is not None or results.service is not None:
        parts.append(f"""## The hops: HAProxy and the Kubernetes Service path

HAProxy in TCP mode (the local fleet's endpoint), read from its live sockets and the CLIs' ends of its connections:

{hops.haproxy_report(results.haproxy) if results.haproxy is not None else 'Not measured in this run.'}

The Kubernetes Service path, as kube-proxy's iptables mode builds it: a `nat OUTPUT` DNAT rule from
{hops.SERVICE_IP}:{hops.SERVICE_PORT} to a CLI server, in a network namespace of its own with the test model;
the same SDK client (TCP_NODELAY) through the Service address and straight to the server, cycles interleaved:

{hops.service_report(results.service) if results.service is not None else 'Not measured in this run.'}
""")
    if results.verify:
        v = results.verify
        parts.append(f"""## `copilot-fleet verify`

The whole smoke-test run against the 2-replica fleet: **{v['seconds']:.1f} s** (exit status {v['exit']}).
Its last lines: `{v['summary'][:400]}`
""")
    if results.scale is not None:
        scale.plot(results.scale, img / "scale.png")
        parts.append(f"""## Sessions per replica and memory

Sessions are attached to replica 0 in batches; at each level one send goes to every attached session at once.
Stops at the first error, at p99 send > {scale.P99_LIMIT:g} s, at {max(scale.LEVELS) if not quick else 'the quick bound of'} sessions or after 3 minutes.
VmRSS is read from `/proc/<pid>/status` of the CLI process (PID from supervisord).

{scale.report(results.scale)}

![scale]({rel}/scale.png)
""")  # noqa: E501 - markdown for docs/: table rows and paragraphs are one line each
    scale_store = common.marked_block(doc, scale.STORE_BEGIN, scale.STORE_END)
    if scale_store:  # measured on a fleet of its own by `scale.py --store`, not by this run: kept as it is
        parts.append(f"""{scale.STORE_HEADING}

Not measured by run_all.py: the figures below are the last ones `benchmarks/scale.py --store` wrote.

{scale_store}
""")
    store_block = session_store.doc_block(results.store) if results.store is not None else _kept_block(doc)
    if store_block:
        parts.append(f"""## Session state in a store against a shared directory

The session store (docs/session-store.md) against the volume mode, side by side in one run, on processes of their
own, not the fleet above (run_all.py measures it once that fleet is stopped). {'' if results.store is not None else 'Not measured in this run: the figures below are the last ones measured (`benchmarks/session_store.py` writes them too).'}

{store_block}
""")  # noqa: E501 - markdown for docs/: paragraphs are one line each
    if results.startup_doc is not None:
        parts.append(f"""## `copilot-fleet up` until ready, and idle memory

Measured in this run by `benchmarks/local_startup.py` (its own fleets, after the fleet above was stopped) and
written to [{results.startup_doc.name}]({results.startup_doc.name}), "Measured": one place for those figures.
""")
    if results.render_doc is not None:
        parts.append(f"""## Render: `per-user` with many users

Measured in this run by `benchmarks/render_scaling.py` (each size in a fresh subprocess) and written, with its
plot, the profile and what is ours against the Pulumi SDK's, to [{results.render_doc.name}]({results.render_doc.name}).

{_render_growth(results.render_rows)}
""")
    parts.append(f"Time per part (s): {json.dumps({k: round(v, 1) for k, v in results.seconds.items()})}\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes, a couple of iterations")
    parser.add_argument("--doc", type=Path, help=f"where to write the report (default {DOC}; with --quick a temp dir)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(PARTS):
        parser.error(f"unknown part(s) in --skip: {', '.join(sorted(skip - set(PARTS)))}; allowed: {', '.join(PARTS)}")
    doc = args.doc or (Path(tempfile.mkdtemp(prefix="bench-doc-")) / "benchmarks.md" if args.quick else DOC)
    sizes = Sizes.for_mode(args.quick)
    results = Results(load_start=os.getloadavg())

    run_fleet_parts(results, sizes, skip)
    if "store" not in skip:
        results.store = _step(results, "store", lambda: run_store(sizes.store_cycles))
    if "hops" not in skip:
        results.service = _step(results, "hops: service path", lambda: hops.service_path(sizes.service_cycles))
    if "startup" not in skip:
        import local_startup

        settle = 1.0 if args.quick else local_startup.DEFAULT_SETTLE  # idle memory: one definition everywhere
        results.startup_doc = _step(results, "startup", lambda: run_startup(sizes.startup_runs, settle,
                                                                            doc.parent / "local-fleet.md"))
    if "render" not in skip:
        out = _step(results, "render", lambda: run_render(sizes.render_sizes, sizes.render_floor,
                                                          doc.parent / "render-benchmark.md"))
        if out:
            results.render_rows, results.render_doc = out
    results.load_end = os.getloadavg()
    write_doc(results, doc, args.quick)
    if args.json:
        args.json.write_text(json.dumps({
            "latency": [r.to_json() for r in results.latency],
            "overheads": [c.to_json() for c in results.overheads],
            "vs_raw": [r.to_json() for r in results.vs_raw],
            "floor": results.floor.to_json() if results.floor else None,
            "haproxy": results.haproxy.to_json() if results.haproxy else None,
            "service": results.service.to_json() if results.service else None,
            "verify": results.verify, "scale": results.scale.to_json() if results.scale else None,
            "render": results.render_rows, "store": results.store, "failures": results.failures,
            "seconds": results.seconds,
            "load": [results.load_start, results.load_end]}, indent=1, default=str))
    print(f"wrote {doc}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
