"""Wait until a CLI server has no turn in flight: the Kubernetes preStop hook (the local fleet's `copilot-fleet
drain` does the same, plus HAProxy and supervisord).

    python -m copilot_fleet.pod.drain --session-state DIR --port 4321 [--timeout 50]

Kubernetes stops routing new connections to a terminating pod by itself; this hook then holds the SIGTERM back
until every session the CLI (the process listening on --port, or --pid) has attached is out of its turn, or the
timeout passed. Exit 0 when idle, 1 when the timeout cut turns (listed). A turn is in flight while the session's
events.jsonl does not end with `assistant.turn_end` (or a lifecycle event) or was written in the last second.

PIDs are per pod: on a shared session-state/, another pod's CLI may carry the same PID number, so its turns are
waited for too. That errs on the side of waiting, and the timeout bounds it.

`wait_idle` is also how the local fleet's `copilot-fleet drain` waits (copilot_fleet.local.operate).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from copilot_fleet.pod.ports import port_holder, port_holder_pid
from copilot_fleet.sessiondir import EVENTS, IDLE_EVENTS, attached_dirs, last_event_type

_POLL = 0.5
_RECENT_WRITE_SECONDS = 1.0


def turn_in_flight(session_dir: Path) -> bool:
    """A turn is in flight while events.jsonl does not end with an idle event, or was written in the last second
    (a tool round between two events)."""
    events = session_dir / EVENTS
    try:
        if time.time() - events.stat().st_mtime < _RECENT_WRITE_SECONDS:
            return True
    except OSError:
        return False
    return last_event_type(events) not in IDLE_EVENTS


def busy_sessions(session_state: Path, pid: int) -> list[str]:
    """The sessions attached to the CLI with `pid` that are in a turn."""
    return [d.name for d in attached_dirs(session_state, pid) if turn_in_flight(d)]


def wait_idle(session_state: Path, pid: int, timeout: float, poll: float = 0.2) -> list[str]:
    """Wait until the CLI with `pid` has no turn in flight, at most `timeout` s; the sessions still in a turn then
    (empty: idle). The local drain and the Kubernetes preStop hook both wait with this."""
    deadline = time.monotonic() + timeout
    busy = busy_sessions(session_state, pid)
    while busy and time.monotonic() < deadline:
        time.sleep(poll)
        busy = busy_sessions(session_state, pid)
    return busy


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m copilot_fleet.pod.drain",
                                description="Wait until a CLI server has no turn in flight (preStop hook).")
    p.add_argument("--session-state", required=True, type=Path, metavar="DIR")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--port", type=int, help="the CLI server's port (its PID is found from the listening socket)")
    who.add_argument("--pid", type=int, help="the CLI server's PID")
    p.add_argument("--timeout", type=float, default=50.0,
                   help="seconds (keep it below terminationGracePeriodSeconds; default 50)")
    args = p.parse_args(argv)
    if not 0 < args.timeout <= 3600:
        p.error(f"--timeout {args.timeout} is out of range: 0 to 3600 seconds")
    pid = args.pid
    if pid is None:
        holder = port_holder(args.port)
        if holder is None:
            print(f"drain: nothing listens on port {args.port}; nothing to wait for", flush=True)
            return 0
        pid = port_holder_pid(args.port)
        if pid is None:
            p.error(f"cannot tell the PID of what listens on port {args.port} ({holder}); pass --pid")
    began = time.monotonic()
    busy = wait_idle(args.session_state, pid, args.timeout, poll=_POLL)
    took = time.monotonic() - began
    if busy:
        print(f"drain: timeout after {took:.1f} s; turns still running: {', '.join(busy)}", flush=True)
        return 1
    print(f"drain: no turn in flight on pid {pid} after {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
