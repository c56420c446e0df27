"""`python -m copilot_fleet.pod.drain` (the preStop hook): waits while an attached session is in a turn, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _event(path: Path, kind: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"type": kind, "data": {}}) + "\n")


def _drain(state: Path, pid: int, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copilot_fleet.pod.drain", "--session-state", str(state), "--pid",
                           str(pid), "--timeout", str(timeout)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_prestop_waits_for_the_turn_then_exits_0(tmp_path: Path) -> None:
    pid = os.getpid()  # stands in for the CLI: the lock names a live PID
    session = tmp_path / "s-1"
    session.mkdir()
    (session / f"inuse.{pid}.lock").write_text(str(pid))
    events = session / "events.jsonl"
    _event(events, "session.start")
    _event(events, "user.message")
    _event(events, "assistant.turn_start")

    timer = threading.Timer(2.0, _event, args=(events, "assistant.turn_end"))
    timer.start()
    began = time.monotonic()
    proc = _drain(tmp_path, pid, timeout=30)
    took = time.monotonic() - began
    timer.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took >= 2.0, "it did not wait for the turn"
    assert "no turn in flight" in proc.stdout


def test_prestop_timeout_lists_the_cut_turn_and_ignores_other_pids(tmp_path: Path) -> None:
    pid = os.getpid()
    busy = tmp_path / "s-busy"
    busy.mkdir()
    (busy / f"inuse.{pid}.lock").write_text(str(pid))
    _event(busy / "events.jsonl", "user.message")
    other = tmp_path / "s-other"  # in a turn, but attached to another process: not waited for
    other.mkdir()
    (other / f"inuse.{pid + 1}.lock").write_text("x")
    _event(other / "events.jsonl", "user.message")
    proc = _drain(tmp_path, pid, timeout=1.5)
    assert proc.returncode == 1
    assert "s-busy" in proc.stdout and "s-other" not in proc.stdout
