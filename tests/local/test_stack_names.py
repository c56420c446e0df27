"""Stack names are checked once, by every command, before any path is built from them: `.`, `..`, a `/` or a
trailing newline can never reach `.fleet/<stack>/` (which `down --purge` removes) or `stacks/`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.cli import build_parser
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.stacknames import InvalidStackName, check_stack_name

BAD_NAMES = [".", "..", "../x", "a/b", "/etc", "local\n", "-x", "", ".hidden", "x" * 101, "dev\x00", "ä"]
# Every command that takes --stack, with what else it needs to parse.
COMMANDS = [
    ["up"], ["down"], ["down", "--purge"], ["status"], ["target"], ["verify"], ["render"],
    ["sessions", "list"], ["sessions", "delete", "--older-than", "1d"],
    ["drain", "--server", "copilot-cli-0"], ["undrain", "--server", "copilot-cli-0"], ["recycle"],
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidStackName, match="letters, digits"):
        check_stack_name(name)
    with pytest.raises(InvalidStackName):
        StatePaths(Path("/nonexistent"), name)


@pytest.mark.parametrize("name", ["local", "k8s-shared-cli", "dev.eu", "prod_2", "x" * 100, "_a"])
def test_good_names_pass(name: str) -> None:
    assert check_stack_name(name) == name


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("name", [".", "..", "a/b"])
def test_every_command_refuses_a_path_as_stack_name(command: list[str], name: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--stack", name])
    assert exit_.value.code == 2
    assert "is not a stack name" in capsys.readouterr().err


def test_a_stack_named_like_a_lock_file_does_not_collide(tmp_path: Path) -> None:
    assert StatePaths(tmp_path, "x.lock").root != StatePaths(tmp_path, "x").lock_file


@pytest.mark.fleet
def test_purging_dot_or_dotdot_removes_nothing_and_leaves_a_live_fleet_running(tmp_path: Path) -> None:
    project = h.Project.create(tmp_path / "project")
    project.local_stack("live", "per-user", users=["alice"])
    (project.dir / "keep-me.txt").write_text("project file")
    try:
        project.run_ok("up", "--stack", "live")
        pids = project.fleet_pids("live")
        assert pids
        for name in (".", "..", "../project", "live/.."):
            for command in (["down", "--purge"], ["down"], ["status"], ["up"]):
                proc = project.run(*command, "--stack", name)
                assert proc.returncode == 2, (command, name, proc.stdout, proc.stderr)
                assert "is not a stack name" in proc.stderr
        assert (project.dir / "keep-me.txt").read_text() == "project file"
        assert project.paths("live").target_file.exists()
        assert all(_alive(pid) for pid in pids)
        assert project.status("live")["healthy"]
    finally:
        project.teardown("live")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_purge_refuses_a_state_dir_that_is_a_link(tmp_path: Path) -> None:
    """A tool run that can write to .fleet/ swaps a stack's state directory for a link: purge removes nothing."""
    project = h.Project.create(tmp_path / "project")
    project.local_stack("linked", "shared-cli")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    paths = project.paths("linked")
    paths.fleet_dir.mkdir()
    paths.root.symlink_to(outside)
    proc = project.run("down", "--stack", "linked", "--purge")
    assert proc.returncode == 1
    assert "refusing to purge" in proc.stderr and "nothing was removed" in proc.stderr
    assert (outside / "precious.txt").read_text() == "keep me" and paths.root.is_symlink()
