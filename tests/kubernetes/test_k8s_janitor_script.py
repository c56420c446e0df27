"""The janitor's sweep script, run for real with /bin/sh against a session-state directory laid out as the CLI
leaves it (facts: copilot-runtime.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from components.kubernetes.janitor import SWEEP_SCRIPT

HOUR = 3600


def _session(root: Path, sid: str, age_s: float, *, lock: bool = True, files: tuple[str, ...] = (
        "workspace.yaml", "events.jsonl")) -> Path:
    d = root / sid
    (d / "checkpoints").mkdir(parents=True)
    for name in files:
        (d / name).write_text("x\n")
    then = time.time() - age_s
    for p in [*(d / n for n in files), d / "checkpoints", d]:
        os.utime(p, (then, then))
    if lock:
        locks = root / ".session-operation-locks"
        locks.mkdir(exist_ok=True)
        (locks / f"{sid}.lock").touch()
    return d


def _age(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then))


@pytest.mark.parametrize("shell", [s for s in ("/bin/sh", shutil.which("busybox")) if s])
def test_sweep_removes_expired_sessions_and_their_locks(tmp_path: Path, shell: str) -> None:
    root = tmp_path / "session-state"
    root.mkdir()
    locks = root / ".session-operation-locks"
    _session(root, "user-alice_old", 3 * HOUR)
    _session(root, "user-bob_fresh", 10 * 60)
    busy = _session(root, "user-carol_old-but-active", 5 * HOUR)
    _age(busy / "events.jsonl", 60)  # a turn a minute ago: live
    _session(root, "bare-old-dir", 4 * HOUR, lock=False, files=())
    (root / "not.a.session").mkdir()
    _age(root / "not.a.session", 9 * HOUR)
    # lock files left behind by delete_session: an old one without a session, and a fresh one (being created)
    (locks / "deleted-long-ago.lock").touch()
    _age(locks / "deleted-long-ago.lock", 2 * HOUR)
    (locks / "just-created.lock").touch()
    for p in (root, locks):
        _age(p, 3 * HOUR)

    argv = [shell, "-c", SWEEP_SCRIPT] if not shell.endswith("busybox") else [shell, "sh", "-c", SWEEP_SCRIPT]
    done = subprocess.run(argv, env={"PATH": os.environ["PATH"], "SESSION_ROOT": str(root),
                                     "SESSION_TTL_SECONDS": str(HOUR)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    left = {p.name for p in root.iterdir()}
    assert left == {".session-operation-locks", "user-bob_fresh", "user-carol_old-but-active", "not.a.session"}
    assert {p.name for p in locks.iterdir()} == {"user-bob_fresh.lock", "user-carol_old-but-active.lock",
                                                 "just-created.lock"}
    assert "removed 2 sessions and 1 orphaned lock files" in done.stdout


def test_sweep_needs_its_inputs(tmp_path: Path) -> None:
    done = subprocess.run(["/bin/sh", "-c", SWEEP_SCRIPT], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "SESSION_ROOT" in done.stderr


def test_sweep_of_an_empty_volume(tmp_path: Path) -> None:
    done = subprocess.run(["/bin/sh", "-c", SWEEP_SCRIPT],
                          env={"PATH": os.environ["PATH"], "SESSION_ROOT": str(tmp_path), "SESSION_TTL_SECONDS": "3600"},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "removed 0 sessions and 0 orphaned" in done.stdout
