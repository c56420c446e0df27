"""One root error class: every exception class of the package derives from copilot_fleet.errors.FleetError (and
keeps the builtin base callers rely on); `copilot-fleet` prints a FleetError as one line and lets anything else,
a bug, show its traceback."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copilot_fleet import cli
from copilot_fleet.errors import FleetError
from tests.structure.test_import_graph import package_modules

ROOT = Path(__file__).resolve().parents[2]


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package (private ones, `_Name`, are control flow that never
    leaves its module)."""
    found = {}
    for name in sorted(package_modules()):
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name
                    and not attr.startswith("_")):
                found[f"{name}.{attr}"] = value
    return found


def test_every_error_of_the_package_is_a_fleet_error() -> None:
    classes = exception_classes()
    assert len(classes) > 20  # the walk found them: ConfigError, TargetError, the client's errors, ...
    strays = sorted(name for name, cls in classes.items() if not issubclass(cls, FleetError))
    assert not strays, f"derive these from copilot_fleet.errors.FleetError: {strays}"


def test_the_builtin_bases_callers_catch_are_kept() -> None:
    from copilot_fleet.client.errors import AccessDenied, SessionNotFound
    from copilot_fleet.errors import ProjectNotFound
    from copilot_fleet.spec import ConfigError
    from copilot_fleet.stackfile import StackNotFound
    from copilot_fleet.target import TargetError

    assert issubclass(ConfigError, ValueError) and issubclass(TargetError, ValueError)
    assert issubclass(StackNotFound, LookupError) and issubclass(SessionNotFound, LookupError)
    assert issubclass(AccessDenied, PermissionError) and issubclass(ProjectNotFound, FileNotFoundError)


def test_a_fleet_error_is_one_line_and_exit_status_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--project-dir", str(tmp_path), "status", "--stack", "local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("copilot-fleet status: no Pulumi.yaml in") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def run_cli_with_a_bug(tmp_path: Path, error: str) -> subprocess.CompletedProcess[str]:
    """`copilot-fleet target --from FILE` in a child process, with the command's code raising `error`."""
    code = textwrap.dedent(f"""
        import sys
        from copilot_fleet import cli
        from copilot_fleet.commands import local

        def broken(args):
            raise {error}

        local.cmd_target = broken
        sys.exit(cli.main(["--project-dir", {str(ROOT)!r}, "target", "--from", "x.json"]))
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_bug_shows_its_traceback(tmp_path: Path) -> None:
    """A KeyError in a command is a bug, not a user error: it is not printed as a one-line message."""
    done = run_cli_with_a_bug(tmp_path, "KeyError('replicas')")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "in broken" in done.stderr and done.stderr.rstrip().endswith("KeyError: 'replicas'")
    assert "copilot-fleet target:" not in done.stderr
    # the same command with one of ours: one line, no traceback
    done = run_cli_with_a_bug(tmp_path, "__import__('copilot_fleet.errors').errors.CommandError('no such file')")
    assert (done.returncode, done.stderr) == (1, "copilot-fleet target: no such file\n")
