"""Per-start CLI logs: kept to the newest few, never the log of a live process, never through a link (the logs
directory belongs to the CLI's user, so to whatever a session's tool run does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from copilot_fleet import cli_logs


def _logs(home: Path, starts: list[tuple[int, int]]) -> Path:
    logs = home / "logs"
    logs.mkdir(parents=True)
    for ms, pid in starts:
        (logs / f"process-{ms}-{pid}.log").write_text("x")
    return logs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_keeps_the_newest_and_every_live_one(tmp_path: Path) -> None:
    dead = _dead_pid()
    starts = [(1000 + i, dead) for i in range(8)] + [(1, os.getpid())]  # the oldest start is still running
    logs = _logs(tmp_path / "home", starts)
    (logs / "notes.txt").write_text("not a per-start log")
    removed = cli_logs.prune(logs, keep=3)
    left = sorted(p.name for p in logs.iterdir())
    assert left == ["notes.txt", f"process-1-{os.getpid()}.log", *(f"process-{1000 + i}-{dead}.log" for i in (5, 6, 7))]
    assert len(removed) == 5
    assert cli_logs.prune(logs, keep=3) == []  # idempotent


def test_never_follows_a_link(tmp_path: Path) -> None:
    dead = _dead_pid()
    victim = _logs(tmp_path / "victim", [(i, dead) for i in range(10)])
    home = tmp_path / "home"
    home.mkdir()
    (home / "logs").symlink_to(victim)  # a tool run replaced the logs directory with a link
    assert cli_logs.prune(home / "logs", keep=1) == []
    assert len(list(victim.iterdir())) == 10
    # A link in place of a log file is not a log: left alone, and not followed.
    logs = _logs(tmp_path / "home2", [(i, dead) for i in range(3)])
    target = tmp_path / "precious"
    target.write_text("keep me")
    (logs / f"process-0000-{dead}.log").symlink_to(target)
    cli_logs.prune(logs, keep=0)
    assert target.read_text() == "keep me" and (logs / f"process-0000-{dead}.log").is_symlink()


def test_the_janitor_prunes_what_it_is_given(tmp_path: Path) -> None:
    dead = _dead_pid()
    logs = _logs(tmp_path / "home", [(i, dead) for i in range(9)])
    state = tmp_path / "session-state"
    state.mkdir()
    proc = subprocess.run([sys.executable, "-m", "copilot_fleet.pod.janitor", "--session-state", str(state), "--ttl",
                           "1h", "--cli-logs", str(logs), "--keep-cli-logs", "2"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(list(logs.iterdir())) == 2 and "removed 7 old per-start CLI log(s)" in proc.stdout
