"""The CLI container's command: keep the CLI's per-start logs bounded, then become the CLI.

    python3 -m copilot_fleet.pod.start --logs DIR -- /usr/local/bin/copilot --headless ...

The CLI writes `$COPILOT_HOME/logs/process-<ms>-<pid>.log` at every start and removes none. In a pod that directory
is an emptyDir, which outlives container restarts (a crash loop, a recycle by the liveness probe) and has a size
limit the kubelet enforces by evicting the pod. So before each start this keeps the newest `KEEP - 1` (the start
about to happen makes `KEEP`), never through a link (copilot_fleet/cli_logs.py), then `exec`s the CLI: no process
stays in between, the CLI is the container's PID 1 (where the preStop drain and the recycle bounds look for it:
it is non-dumpable, see images/cli/Dockerfile, so its sockets cannot be traced back to it) and gets the
kubelet's signals itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from copilot_fleet import cli_logs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m copilot_fleet.pod.start",
        description="Prune the CLI's per-start logs, then exec the CLI (the Kubernetes CLI container's command).")
    p.add_argument("--logs", required=True, type=Path, metavar="DIR",
                   help="the CLI's log directory ($COPILOT_HOME/logs)")
    p.add_argument("--keep", type=int, default=cli_logs.KEEP, metavar="N",
                   help=f"per-start logs to have once the CLI started (default {cli_logs.KEEP})")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the CLI and its arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the CLI to start after --")
    if args.keep < 1:
        parser.error(f"--keep {args.keep}: at least 1 (the log of the start about to happen)")
    removed = cli_logs.prune(args.logs, keep=args.keep - 1, starting_pid=os.getpid())
    if removed:
        print(f"copilot-fleet: removed {len(removed)} per-start CLI log(s) of earlier starts from {args.logs}",
              file=sys.stderr, flush=True)
    try:
        os.execv(command[0], command)  # returns only if it failed
    except OSError as exc:
        print(f"copilot-fleet: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
    return 127


if __name__ == "__main__":
    sys.exit(main())
