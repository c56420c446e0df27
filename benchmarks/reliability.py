"""The fault suite, full size, against a throwaway local fleet; writes the figures into docs/reliability.md.

    .venv/bin/python benchmarks/reliability.py          # full run, 15 to 20 minutes on 2 cores (run as root for the
                                                        # storage faults: they need a private mount namespace)
    .venv/bin/python benchmarks/reliability.py --quick  # the CI sizes, about 3 minutes
    .venv/bin/python benchmarks/reliability.py --only sigkill,writers --no-write
    .venv/bin/python benchmarks/reliability.py --only store-sigkill,store-provider,store-redis,store-full,store-fencing

Everything runs on 127.0.0.1 in a temporary directory with free ports; every process started is stopped by PID at
the end (also on Ctrl-C). Exit status 0 when every scenario met its targets, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT  # first: it puts the checkout root on sys.path, where the fault suite is
from faults import report
from faults.runner import FULL, QUICK, SCENARIOS, run_all
from faults.store_fleet import REDIS_SETTINGS

DOC = ROOT / "docs" / "reliability.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI sizes instead of the full run")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {DOC.relative_to(ROOT)}")
    parser.add_argument("--json", metavar="FILE", help="also write every figure and check as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="where the throwaway projects go (default: a temp dir)")
    parser.add_argument("--hard-limit", type=float, default=1800,
                        help="seconds after which the run is aborted with a traceback of every thread (default 1800)")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    plan = QUICK if args.quick else FULL
    faulthandler.dump_traceback_later(args.hard_limit, exit=True)  # the last bound: never hang forever

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="copilot-fleet-faults-"))
    command = "benchmarks/reliability.py" + (" --quick" if args.quick else "") + \
        (f" --only {','.join(only)}" if set(only) != set(SCENARIOS) else "")
    info = report.RunInfo(command=command)
    began = time.monotonic()
    try:
        results, fleets = asyncio.run(run_all(plan, workdir, only=only))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    info.elapsed = time.monotonic() - began
    info.load_after = os.getloadavg()[0]
    described = []
    if fleets.volume is not None:
        fleet = fleets.volume
        mounts = "in a private mount namespace" if fleet.private_mounts else "without a private mount namespace"
        described.append(f"shared-cli, {fleet.replica_count} CLI replicas + HAProxy + Redis + test model, {mounts} "
                         f"(`up` took {fleet.up_seconds:.1f} s)")
    if fleets.store is not None:
        store = fleets.store
        described.append(f"for the store scenarios, {len(store.of('store'))} provider-backed CLIs (store mode) and "
                         f"{len(store.of('volume'))} CLIs on one shared session-state/ (volume mode), one "
                         f"redis-server ({' '.join(REDIS_SETTINGS)}), the test model (started in "
                         f"{store.up_seconds:.1f} s)")
    info.fleet = "; ".join(described)
    print()
    for r in results:
        print(r.summary())
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    if not args.no_write:
        report.write(DOC, results, info)
        print(f"\nwrote {DOC.relative_to(ROOT)}")
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
