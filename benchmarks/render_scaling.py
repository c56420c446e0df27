"""How the offline render scales with the users of a `per-user` fleet: time and peak memory per size.

    .venv/bin/python benchmarks/render_scaling.py [--sizes 10,100,1000] [--write docs/render-benchmark.md]

Each size runs in a subprocess of its own (a fresh interpreter, so peak RSS belongs to that size alone):
the mocked Pulumi program (copilot_fleet.render.run_program), rebuilding the manifests, and strict schema
validation. For comparison, "SDK floor" registers the same number of one-line ConfigMaps straight from a loop,
under the same mock harness: what the Pulumi SDK's mock engine costs per registration before any of our code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/copilot-cli:1.0.102"


def fleet_config(users: int) -> tuple[dict[str, Any], set[str]]:
    return ({
        "fleet:isolation": "per-user", "fleet:platform": "kubernetes", "fleet:image": IMAGE,
        "fleet:namespace": "bench",
        "fleet:users": [{"id": f"user-{i:04d}", "githubToken": f"ghp_bench_{i}"} for i in range(users)],
    }, {"fleet:users"})


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_one(users: int, mode: str) -> dict[str, Any]:
    """Runs inside the child process."""
    from copilot_fleet import render

    config, secret = fleet_config(users)
    # Warm up on a tiny fleet: imports and first-use costs are not what scales.
    render.run_program(fleet_config(1)[0], secret, stack="warm")
    base_rss = _rss_mb()
    out: dict[str, Any] = {"users": users, "mode": mode}
    if mode == "fleet":
        # What `copilot-fleet render` does (render_stack), step by step.
        t0, c0 = time.perf_counter(), time.process_time()
        run = render.run_program(config, secret, stack="bench", preview=True)
        t1, c1 = time.perf_counter(), time.process_time()
        with render.fewer_collections(collect=False):
            objects = render.manifests(run)
            t2 = time.perf_counter()
            validator = render.SchemaValidator()
            errors = [e for o in objects for e in validator.errors(o)]
        t3 = time.perf_counter()
        out.update(registrations=len(run.registrations), objects=len(objects), errors=len(errors),
                   program_s=t1 - t0, program_cpu_s=c1 - c0, manifests_s=t2 - t1, validate_s=t3 - t2,
                   total_s=t3 - t0, cpu_s=time.process_time() - c0, rss_peak_mb=_rss_mb())
        del run, objects
        # The same program as `pulumi up` would run it (what the tests use): inputs resolved back into outputs.
        t4 = time.perf_counter()
        render.run_program(config, secret, stack="bench-up")
        out["up_program_s"] = time.perf_counter() - t4
        out["rss_base_mb"] = base_rss
        return out
    else:
        count = int(os.environ["BENCH_FLOOR_COUNT"])

        def program() -> dict[str, Any]:
            import pulumi_kubernetes.core.v1 as core

            for i in range(count):
                core.ConfigMap(f"cm-{i}", metadata={"name": f"cm-{i}", "namespace": "bench"}, data={"k": "v"})
            return {}

        t0, c0 = time.perf_counter(), time.process_time()
        run = render.run_program(config, secret, stack="floor", program=program, preview=True)
        out.update(registrations=len(run.registrations), program_s=time.perf_counter() - t0,
                   program_cpu_s=time.process_time() - c0)
    out.update(rss_base_mb=base_rss, rss_peak_mb=_rss_mb())
    return out


def best_of(repeat: int, users: int, mode: str, floor_count: int = 0) -> dict[str, Any]:
    """The run with the least program CPU time of `repeat` (a shared machine's noise only ever adds time)."""
    runs = [run_child(users, mode, floor_count) for _ in range(repeat)]
    return min(runs, key=lambda r: r["program_cpu_s"])


def run_child(users: int, mode: str, floor_count: int = 0) -> dict[str, Any]:
    env = {**os.environ, "BENCH_FLOOR_COUNT": str(floor_count)}
    done = subprocess.run([sys.executable, __file__, "--one", str(users), "--mode", mode], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child ({users} users, {mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], floors: dict[int, dict[str, Any]]) -> str:
    lines = [
        "| users | registrations | objects | program (s) | program CPU (s) | manifests (s) | validation (s) | "
        "render total (s) | CPU ms / registration | SDK floor CPU (s) | program as `up` (s) | peak RSS (MiB) | "
        "RSS growth (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        floor = floors.get(r["users"])
        floor_s = f"{floor['program_cpu_s']:.2f}" if floor else "-"
        lines.append(
            f"| {r['users']} | {r['registrations']} | {r['objects']} | {r['program_s']:.2f} | {r['program_cpu_s']:.2f} "
            f"| {r['manifests_s']:.2f} | {r['validate_s']:.2f} | {r['total_s']:.2f} "
            f"| {1000 * r['program_cpu_s'] / r['registrations']:.2f} | {floor_s} | {r['up_program_s']:.2f} "
            f"| {r['rss_peak_mb']:.0f} | {r['rss_peak_mb'] - r['rss_base_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--no-floor", action="store_true", help="skip the SDK-floor comparison runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the figures are the best run's")
    parser.add_argument("--write", default=None, help="write the figures as Markdown to this file")
    parser.add_argument("--json", default=None, help="also save the raw figures as JSON to this file")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="fleet", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.mode)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    rows, floors = [], {}
    for users in sizes:
        row = best_of(args.repeat, users, "fleet")
        rows.append(row)
        flagged = f", {row['errors']} SCHEMA ERRORS" if row["errors"] else ""
        print(f"{users:>5} users: {row['registrations']} registrations, {row['objects']} objects, "
              f"program {row['program_s']:.2f} s ({row['program_cpu_s']:.2f} s CPU), total {row['total_s']:.2f} s, "
              f"peak RSS {row['rss_peak_mb']:.0f} MiB{flagged}", flush=True)
        if not args.no_floor:
            fleet_regs = row["registrations"]
            floors[users] = best_of(args.repeat, users, "floor", floor_count=fleet_regs)
            print(f"       SDK floor: {fleet_regs} ConfigMaps in {floors[users]['program_s']:.2f} s "
                  f"({floors[users]['program_cpu_s']:.2f} s CPU)", flush=True)
    load_after = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "floors": floors, "load": [load_before, load_after]},
                                              indent=1))
    text = table(rows, floors)
    print(text)
    if args.write:
        write_report(Path(args.write), rows, floors, text, load_before, load_after)
        print(f"wrote {args.write}")
    return 0


def write_report(path: Path, rows: list[dict[str, Any]], floors: dict[int, dict[str, Any]], text: str,
                 load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    from importlib.metadata import version

    by_users = {r["users"]: r for r in rows}
    growth = ""
    sizes = sorted(by_users)
    for a, b in zip(sizes, sizes[1:], strict=False):
        ra, rb = by_users[a], by_users[b]
        growth += (f"- {a} -> {b} users (x{b / a:g}): program CPU time x{rb['program_cpu_s'] / ra['program_cpu_s']:.1f}, "
                   f"registrations x{rb['registrations'] / ra['registrations']:.1f}\n")
    largest = by_users[sizes[-1]]
    floor = floors.get(sizes[-1])
    verdict = f"A {sizes[-1]}-user render took {largest['total_s']:.1f} s here ({largest['program_cpu_s']:.1f} s of CPU in the program)."
    if largest["total_s"] > 3 and floor and floor["program_cpu_s"] > 3:
        verdict += (f" The target of under 3 s is not reachable with the SDK's mock engine on this machine: the "
                    f"engine alone needs {floor['program_cpu_s']:.1f} s of CPU for the same number of registrations.")
    if len(sizes) > 1:
        a, b = by_users[sizes[-2]], largest
        per_a = a["program_cpu_s"] / a["registrations"]
        per_b = b["program_cpu_s"] / b["registrations"]
        verdict += (f" CPU per registration went from {1000 * per_a:.2f} ms at {sizes[-2]} users to "
                    f"{1000 * per_b:.2f} ms at {sizes[-1]} (x{per_b / per_a:.2f}; 1.0 is linear growth).")
    ours = ""
    if floor:
        share = 1 - floor["program_cpu_s"] / largest["program_cpu_s"]
        ours = (f"At {sizes[-1]} users the SDK floor (the same number of registrations with no code of ours) takes "
                f"{floor['program_cpu_s']:.1f} s of CPU of the program's {largest['program_cpu_s']:.1f} s: our "
                f"components, the dictionaries they build and the bigger objects they serialise account for about "
                f"{share:.0%}.\n")
    path.write_text(f"""# Offline render: scaling with users (`per-user`)

Produced by `benchmarks/render_scaling.py` ({time.strftime('%Y-%m-%d')}). Each size ran in a fresh subprocess:
what `copilot-fleet render` does, step by step: the mocked Pulumi program as a preview
(`copilot_fleet.render.run_program(..., preview=True)`), rebuilding the manifests, and strict validation of
every object against the Kubernetes 1.33 schema. "SDK floor" is the same number of registrations of one-line
ConfigMaps from a plain loop under the same harness: the Pulumi mock engine's own cost. "Program as `up`" is the
same program with preview off (as the tests run it). Peak RSS is taken after the render; RSS growth is that minus
RSS after imports and a warm-up run.

Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, pulumi {version('pulumi')}, pulumi-kubernetes {version('pulumi-kubernetes')};
load average {load_before[0]:.1f} before and {load_after[0]:.1f} after (a shared machine: figures are noisy).

{text}

## Growth

{growth}
## Where the time goes

{ours}Per registration the Pulumi SDK serialises inputs to protobuf, creates a handful of Outputs and asyncio tasks,
captures a stack trace and round-trips through the (mock) resource monitor; that cost is per registration and
does not depend on us. A `per-user` user is 8 registrations (a component, its connection token, Secret, session
PVC, StatefulSet, Service, NetworkPolicy and janitor CronJob), so 1000 users are about 8000 registrations.

What we changed after profiling (pyinstrument/cProfile), all in the render harness:
- the render runs as a preview: outside a preview the SDK turns every input of every resource back into output
  values (deserialise + type translation), which nothing in a render reads;
- the mock monitor answers on the event loop's thread (`InlineMockMonitor` + `InlineExecutor`): the SDK's thread
  hop per registration made the loop and the pool threads wait on each other's GIL;
- the mocks return no state for Kubernetes objects (nothing reads them back), so the mock engine does not
  serialise every manifest a second time;
- no cyclic garbage collection while the program runs, then one pass over what the run left (everything older is
  frozen out of it): the collector's repeated passes over the growing set of live outputs and tasks took about
  half of the CPU time of a 1000-user render and made it grow faster than linearly;
- schema validation builds each kind's validator once: `kubernetes_validate.validate` re-reads a 1.4 MB schema
  file on every call (about 11 ms an object), which alone would take over a minute at 1000 users;
- each group depends only on the Secrets it reads (depending on all of them made dependencies grow with the
  square of the users).

{verdict}
""")


if __name__ == "__main__":
    sys.exit(main())
