"""What counts towards a recycle: this process's own sessions, never a previous process's with the same PID."""

from __future__ import annotations

import os
import time
from pathlib import Path

from copilot_fleet.pod.wear import Wear, measure, sessions_served

LINE = b"2026-11-21T00:00:00.000Z [INFO] Created session: u-5-alice-x-1-0badcafe\n"
RESUMED = b"2026-11-21T00:00:01.000Z [INFO] Resumed session: u-5-alice-x-1-0badcafe\n"


def test_only_the_running_process_log_counts(tmp_path: Path) -> None:
    pid = os.getpid()  # a live process whose start time /proc knows
    logs = tmp_path / "logs"
    logs.mkdir()
    now_ms = int(time.time() * 1000)
    (logs / f"process-{now_ms}-{pid}.log").write_bytes(LINE + RESUMED + b"[INFO] something else\n")
    # The previous incarnation in a restarted container had the same PID, a day ago: not ours.
    (logs / f"process-{now_ms - 86_400_000}-{pid}.log").write_bytes(LINE * 40)
    (logs / f"process-{now_ms}-{pid + 1}.log").write_bytes(LINE * 7)  # another process
    assert sessions_served(tmp_path, pid) == 2


def test_no_log_means_not_counted(tmp_path: Path) -> None:
    assert sessions_served(tmp_path, os.getpid()) is None
    wear = measure(os.getpid(), None)
    assert wear.sessions_served is None and wear.rss_mib is not None and wear.rss_mib > 1


def test_bounds() -> None:
    wear = Wear(pid=1, rss_mib=300.0, sessions_served=12)
    assert wear.over(None, None) == []
    assert wear.over(512, 13) == []
    assert wear.over(256, None) == ["RSS 300 MiB > 256 MiB"]
    assert wear.over(None, 12) == ["served 12 sessions >= 12"]
    assert Wear(pid=1, rss_mib=None, sessions_served=None).over(1, 1) == []  # unmeasurable: never recycled
