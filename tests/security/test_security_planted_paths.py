"""What root does with a path someone else could have put in place: the socket directory under /tmp (any local user
can make it first), a per-user server's session-state/ (its tool runs can swap it for a link), a CLI's per-start
log (the same). Root must neither write, chmod nor clean through them, nor read them without end.

No fleet runs here: `up` must refuse before it starts anything, and the janitor and the recycler's log count are
called as they are run.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import time
from pathlib import Path

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.pod import wear
from copilot_fleet.pod.janitor import Janitor
from copilot_fleet.sessiondir import LOCKS_DIR

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="plays another Unix user against root: needs root")
WEEK = 7 * 86400


def _canary_file(where: Path) -> Path:
    canary = where / "precious"
    canary.write_text("precious\n")
    canary.chmod(0o644)
    return canary


@NEEDS_ROOT
def test_up_refuses_a_socket_directory_another_user_made_first(tmp_path: Path) -> None:
    """A project path too long for a socket address puts the sockets and supervisord's pid file under /tmp, at a
    name anyone can compute from the path (it shows in supervisord's command line). Made first by another user,
    with `supervisord.pid` linked to a file of root's, supervisord (root) overwrote that file with its PID."""
    project = h.Project.create(tmp_path / ("p" * 80))
    project.local_stack("planted", "shared-cli", replicas=1)
    paths = project.paths("planted")
    run_dir = paths.run_dir
    assert run_dir.is_relative_to("/tmp") and not run_dir.is_relative_to(paths.root), run_dir
    canary = _canary_file(tmp_path)
    nobody = pwd.getpwnam("nobody")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(mode=0o755)
    try:
        os.symlink(canary, run_dir / "supervisord.pid")
        os.chown(run_dir / "supervisord.pid", nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
        os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
        proc = project.run("up", "--stack", "planted")
        assert proc.returncode == 1, f"up accepted a socket directory of nobody's:\n{proc.stdout}\n{proc.stderr}"
        assert str(run_dir) in proc.stderr and f"owned by uid {nobody.pw_uid}" in proc.stderr, proc.stderr
        assert canary.read_text() == "precious\n"
        assert not paths.supervisor_record.exists(), "supervisord was started"
    finally:
        project.teardown("planted")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert canary.read_text() == "precious\n"


@NEEDS_ROOT
def test_up_refuses_a_socket_directory_that_is_a_link(tmp_path: Path) -> None:
    project = h.Project.create(tmp_path / ("q" * 80))
    project.local_stack("linked", "shared-cli", replicas=1)
    paths = project.paths("linked")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    paths.run_dir.symlink_to(elsewhere)
    try:
        proc = project.run("up", "--stack", "linked")
        assert proc.returncode == 1, f"up accepted a link as its socket directory:\n{proc.stdout}\n{proc.stderr}"
        assert "is a link" in proc.stderr, proc.stderr
        assert list(elsewhere.iterdir()) == [] and stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    finally:
        project.teardown("linked")
        paths.run_dir.unlink(missing_ok=True)


def _session(state: Path, sid: str, age: float) -> Path:
    d = state / sid
    d.mkdir(parents=True)
    (d / "events.jsonl").write_text('{"type":"session.start"}\n')
    then = time.time() - age
    for p in (d / "events.jsonl", d):
        os.utime(p, (then, then))
    return d


def test_the_janitor_does_not_clean_where_a_link_named_as_its_state_directory_points(tmp_path: Path) -> None:
    """A per-user server's session-state/ is in its home, which its tool runs write: `mv session-state x; ln -s
    /elsewhere session-state` made the (root) janitor clean /elsewhere: sessions past their TTL there removed,
    its own trash and lock directories made there."""
    elsewhere = tmp_path / "another-volume"
    victim = _session(elsewhere, "old-1", 30 * 86400)
    home = tmp_path / "home"
    home.mkdir()
    (home / "session-state").symlink_to(elsewhere)
    report = asyncio.run(Janitor(home / "session-state", WEEK).run())
    assert victim.is_dir(), "the janitor deleted a session through a link"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["old-1"], "the janitor wrote through the link"
    assert report.fatal is not None and "is a link" in report.fatal and not report.ok
    # The same directory given by its real path is cleaned as usual.
    report = asyncio.run(Janitor(elsewhere, WEEK).run())
    assert report.ok and not victim.exists()
    assert not (elsewhere / LOCKS_DIR).is_symlink()


def test_the_recycler_does_not_follow_a_planted_log(tmp_path: Path) -> None:
    """The sessions a CLI served are counted from `$COPILOT_HOME/logs/process-<ms>-<pid>.log`, in the server's home,
    which its tool runs write. A link there (to a file full of session lines, or /dev/zero, which made the root
    recycler read without end) is not followed; a real log is counted."""
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    elsewhere = tmp_path / "someone-elses.log"
    elsewhere.write_bytes(b"2026 [INFO] Created session: x\n" * 3)
    stamp = int(time.time() * 1000)
    pid = os.getpid()
    (home / "logs" / f"process-{stamp}-{pid}.log").symlink_to(elsewhere)
    assert wear.sessions_served(home, pid) is None
    (home / "logs" / f"process-{stamp}-{pid}.log").unlink()
    os.mkfifo(home / "logs" / f"process-{stamp}-{pid}.log")  # opened blocking, it hung the recycler
    assert wear.sessions_served(home, pid) is None
    (home / "logs" / f"process-{stamp}-{pid}.log").unlink()
    (home / "logs" / f"process-{stamp}-{pid}.log").write_bytes(b"2026 [INFO] Resumed session: y\n" * 2)
    assert wear.sessions_served(home, pid) == 2
