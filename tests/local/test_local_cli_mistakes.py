"""Mistakes at the command line end with a clear message and leave nothing behind: an unknown stack is an error
(never a silent success, never "start it with up"), no lock file outlives its stack, and a reader that stops
reading (`| head`) ends the command quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet import cli
from copilot_fleet.local.paths import StatePaths, stack_lock

COMMAND = [sys.executable, "-m", "copilot_fleet.cli"]


@pytest.fixture
def project(tmp_path: Path) -> h.Project:
    made = h.Project.create(tmp_path / "project")
    made.local_stack("dev", "shared-cli")
    return made


def run(project: h.Project, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["--project-dir", str(project.dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def lock_files(project: h.Project) -> list[str]:
    locks = project.dir / ".fleet" / ".locks"
    return sorted(p.name for p in locks.iterdir()) if locks.is_dir() else []


@pytest.mark.parametrize("command", [["down"], ["down", "--purge"], ["status"], ["drain", "--server", "copilot-cli-0"],
                                     ["undrain", "--server", "copilot-cli-0"], ["recycle", "--max-sessions", "5"]],
                         ids=" ".join)
def test_an_unknown_stack_is_an_error_naming_the_stacks_there_are(project: h.Project, command: list[str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(project, *command, "--stack", "nosuch", capsys=capsys)
    assert code == 1, (out, err)
    assert "no stack 'nosuch'" in err and "stacks here: dev" in err, err
    assert "copilot-fleet up --stack nosuch" not in err + out  # no advice to start what does not exist
    assert lock_files(project) == []


def test_a_known_stack_never_started_says_how_to_start_it(project: h.Project,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(project, "status", "--stack", "dev", capsys=capsys)
    assert code == 1 and "never been started here" in err and "copilot-fleet up --stack dev" in err, err
    code, out, _ = run(project, "down", "--stack", "dev", capsys=capsys)
    assert code == 0 and "nothing to stop" in out  # stopping what is not running is fine: down is idempotent
    assert lock_files(project) == []


def test_down_purge_leaves_no_lock_file(project: h.Project, capsys: pytest.CaptureFixture[str]) -> None:
    """A stack's lock goes with its state directory (here one left by a fleet that is not running)."""
    paths = StatePaths(project.dir, "dev")
    paths.root.mkdir(parents=True, mode=0o700)
    with stack_lock(paths):
        pass
    assert lock_files(project) == ["dev.lock"]  # the state exists: its lock stays
    code, out, err = run(project, "down", "--stack", "dev", "--purge", capsys=capsys)
    assert code == 0, err
    assert not paths.root.exists() and lock_files(project) == []


def test_a_command_waiting_on_a_removed_lock_file_locks_the_new_one(tmp_path: Path) -> None:
    """`down --purge` removes the lock file while holding it. A command that was waiting on that file then holds
    a lock on a file no longer at the path: it must lock afresh, or it and the next command would both run.
    Without the re-check, C below finds no holder and gets in while B is inside."""
    paths = StatePaths(tmp_path, "s")
    paths.root.mkdir(parents=True)
    b_waiting, b_inside, b_may_leave = threading.Event(), threading.Event(), threading.Event()
    c_waited = threading.Event()

    def b() -> None:
        with stack_lock(paths, on_wait=b_waiting.set):
            b_inside.set()
            b_may_leave.wait(60)

    with stack_lock(paths):  # A: purges the stack while B waits on the lock file
        thread = threading.Thread(target=b)
        thread.start()
        assert b_waiting.wait(60)
        paths.root.rmdir()
    assert b_inside.wait(60)
    paths.root.mkdir()  # (B's stack exists again, so B's exit keeps the lock file: C must wait on it)
    c = threading.Thread(target=lambda: stack_lock(paths, on_wait=c_waited.set).__enter__())
    try:
        c.start()
        assert c_waited.wait(60), "C got the lock while B held it"
    finally:
        b_may_leave.set()
        thread.join(60)
        c.join(60)


def test_the_lock_file_is_never_followed_as_a_link(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path, "s")
    paths.lock_file.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    paths.lock_file.symlink_to(victim)
    with pytest.raises(OSError), stack_lock(paths):
        pass
    assert victim.read_text() == "keep"


def _with_closed_stdout(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command whose standard output nobody reads: the read end is closed before it writes a byte, as when
    `| head -1` has already exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*COMMAND, *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=300, check=False)
    finally:
        os.close(write_end)


# argparse already drops a failed write of its help text (exit 0); the commands' own output is ours to handle.
@pytest.mark.parametrize(("args", "status"), [
    (["target", "--from", "target.json"], cli.EXIT_BROKEN_PIPE),
    (["--help"], 0),
    (["up", "--help"], 0),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_a_closed_output_pipe_ends_the_command_without_a_traceback(project: h.Project, args: list[str],
                                                                   status: int) -> None:
    target = {"stack": "dev", "platform": "local", "isolation": "shared-cli", "replicas": ["127.0.0.1:1"],
              "connection_token": "t" * 32}
    (project.dir / "target.json").write_text(json.dumps(target))
    proc = _with_closed_stdout(args, project.dir)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == status
