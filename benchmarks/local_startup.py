"""How long `copilot-fleet up` takes until every server answers, and how much memory an idle CLI server holds.

For 1 and 3 replicas of a shared-cli fleet (with Redis, HAProxy and the test model), cold (a fresh
COPILOT_CACHE_HOME, so the CLI unpacks its 235 MB runtime first) and warm (the runtime already unpacked), several
runs each; the median is reported. Every run is a fresh state directory (down --purge in between), in a throwaway
project with free ports, so a fleet a developer runs is never touched.

    .venv/bin/python benchmarks/local_startup.py [--runs 3] [--settle 5] [--no-write]

Prints a markdown table and writes it into docs/local-fleet.md between the `measured` markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, shared_cli_stack
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.supervisor import Supervisor
from copilot_fleet.pod import procfs

DOC = ROOT / "docs" / "local-fleet.md"
# Idle memory is read this long after `up` returned; the same for every run, wherever it is started from.
DEFAULT_SETTLE = 5.0
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
READY_LINE = re.compile(r"^\s+ready\s+(\S+)\s+\S+\s+([\d.]+) s")
PHASE = re.compile(r"(checks|supervisord|servers) ([\d.]+) s")


@dataclass
class Run:
    wall: float  # `copilot-fleet up` from exec to exit (includes Python start-up and the version check)
    ready: dict[str, float]  # service -> seconds from supervisord answering until the service answered
    phases: dict[str, float]  # checks (incl. copilot --version), supervisord, servers: as `up` reports them
    cli_cpu_seconds: list[float] = field(default_factory=list)  # user+system CPU of each CLI until `up` returned
    cli_rss_mib: list[float] = field(default_factory=list)
    other_rss_mib: dict[str, float] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_project(where: Path) -> None:
    (where / "stacks").mkdir(parents=True)
    (where / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    for replicas in (1, 3):
        (where / "stacks" / f"Pulumi.bench{replicas}.yaml").write_text(shared_cli_stack(replicas))


def fleet(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(project), *args],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def one_run(project: Path, stack: str, env: dict[str, str], settle: float) -> Run:
    started = time.perf_counter()
    proc = fleet(project, env, "up", "--stack", stack)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"up failed:\n{proc.stdout}\n{proc.stderr}")
    ready = {m.group(1): float(m.group(2)) for line in proc.stdout.splitlines() if (m := READY_LINE.match(line))}
    summary = next(line for line in proc.stdout.splitlines() if " is up (" in line)
    phases = {m.group(1): float(m.group(2)) for m in PHASE.finditer(summary)}
    infos = Supervisor(StatePaths(project, stack)).processes()
    # CPU time says what start-up costs with less noise from other jobs than wall time.
    cpu = [cpu_seconds(int(i["pid"])) for n, i in infos.items() if n.startswith("copilot-cli-")]
    time.sleep(settle)  # idle: let start-up allocations settle
    run = Run(wall=wall, ready=ready, phases=phases, cli_cpu_seconds=[c for c in cpu if c is not None])
    for name, info in infos.items():
        rss = procfs.rss_kib(int(info["pid"]))
        if rss is None:
            continue
        if name.startswith("copilot-cli-"):
            run.cli_rss_mib.append(rss / 1024)
        else:
            run.other_rss_mib[name] = rss / 1024
    down = fleet(project, env, "down", "--stack", stack, "--purge")
    if down.returncode != 0:
        raise RuntimeError(f"down failed:\n{down.stdout}\n{down.stderr}")
    return run


def measure(runs: int, settle: float) -> tuple[dict[tuple[int, str], list[Run]], str]:
    cli = os.environ.get("COPILOT_CLI_PATH") or str(ROOT / ".tools/npm/node_modules/@github/copilot-linux-x64/copilot")
    base_env = {k: v for k, v in os.environ.items() if k != "COPILOT_CACHE_HOME"}
    base_env["COPILOT_CLI_PATH"] = cli
    results: dict[tuple[int, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        project = Path(tmp) / "project"
        write_project(project)
        warm_cache = Path(tmp) / "warm-cache"
        subprocess.run([cli, "--version"], env={**base_env, "COPILOT_CACHE_HOME": str(warm_cache)},
                       capture_output=True, check=True, timeout=120)
        for replicas in (1, 3):
            for mode in ("cold", "warm"):
                key = (replicas, mode)
                results[key] = []
                for i in range(runs):
                    cache = warm_cache if mode == "warm" else Path(tmp) / f"cold-{replicas}-{i}"
                    env = {**base_env, "COPILOT_CACHE_HOME": str(cache)}
                    run = one_run(project, f"bench{replicas}", env, settle)
                    results[key].append(run)
                    print(f"  {replicas} replica(s), {mode}, run {i + 1}: up {run.wall:.2f} s, "
                          f"CLI RSS {', '.join(f'{r:.0f}' for r in run.cli_rss_mib)} MiB", flush=True)
                    if mode == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
    return results, cli


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict[tuple[int, str], list[Run]], runs: int, settle: float, load_before: float) -> str:
    load = os.getloadavg()[0]
    busy = ""
    if max(load, load_before) > 0.75 * (os.cpu_count() or 1):
        busy = " (other jobs shared the machine: wall times are upper bounds, and CPU times are inflated less)"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    lines = [
        f"Measured by `benchmarks/local_startup.py` on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores ({cpu}), "
        f"load average {load_before:.1f} before and {load:.1f} after{busy}, Linux {platform.release()}; "
        f"shared-cli with Redis, HAProxy and the test model; median of {runs} runs each, every run from an empty "
        "state directory.",
        "",
        "| replicas | runtime cache | `up` wall time | checks (incl. `copilot --version`) | supervisord | "
        "servers until all ready | slowest CLI ready | CPU per CLI until ready |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (replicas, mode), rs in results.items():
        cli_ready = _median([max(v for k, v in r.ready.items() if k.startswith("copilot-cli-")) for r in rs])
        phase = {name: _median([r.phases.get(name, float("nan")) for r in rs])
                 for name in ("checks", "supervisord", "servers")}
        label = "cold (fresh, unpacks 235 MB)" if mode == "cold" else "warm"
        lines.append(f"| {replicas} | {label} | {_median([r.wall for r in rs]):.2f} s | {phase['checks']:.2f} s | "
                     f"{phase['supervisord']:.2f} s | {phase['servers']:.2f} s | {cli_ready:.2f} s | "
                     f"{_median([c for r in rs for c in r.cli_cpu_seconds]):.2f} s |")
    cli_rss = [x for rs in results.values() for r in rs for x in r.cli_rss_mib]
    others: dict[str, list[float]] = {}
    for rs in results.values():
        for r in rs:
            for name, v in r.other_rss_mib.items():
                others.setdefault(name, []).append(v)
    lines += [
        "",
        f"Idle memory (VmRSS, {settle:.0f} s after ready, no session attached): CLI server median "
        f"{_median(cli_rss):.0f} MiB (min {min(cli_rss):.0f}, max {max(cli_rss):.0f}, {len(cli_rss)} servers); "
        + ", ".join(f"{name} {_median(v):.0f} MiB" for name, v in sorted(others.items())) + ".",
        "",
        "The wall time is what a user waits for `copilot-fleet up` (Python start-up and imports included). "
        "`checks` is everything before a process starts: finding the programs, `copilot --version` (where a cold "
        "run unpacks the runtime, once, for every server), ports. `servers` runs from supervisord answering until "
        "every service passed its round trip, the last being HAProxy with every replica UP in its health checks "
        "(checked every second). CPU per CLI is user + system time of each server process when `up` returned.",
    ]
    return "\n".join(lines)


def write_doc(text: str, path: Path = DOC) -> None:
    doc = path.read_text() if path.is_file() else f"# The local fleet\n\n## Measured\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc:
        doc += f"\n## Measured\n\n{BEGIN}\n{END}\n"
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE,
                        help=f"seconds idle before reading memory (default {DEFAULT_SETTLE:g})")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not update {DOC.name}")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results, _ = measure(args.runs, args.settle)
    text = report(results, args.runs, args.settle, load_before)
    print("\n" + text)
    if not args.no_write:
        write_doc(text)
        print(f"\nwritten to {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
