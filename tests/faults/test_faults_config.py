"""Invalid stack configs through the local path (`copilot-fleet up`) and the Pulumi mock engine: refused naming the
key, zero resources registered, no process started, no state directory written.

Every case runs `up` in-process with a CLI path that does not exist, so a config that slipped through validation
fails on the missing CLI instead of starting a fleet (and the test says so); three also run through the real
`copilot-fleet up` command. The table and the checks live in faults/bad_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faults.bad_config import CASES, ConfigCase, check_engine, check_local
from faults.fleet_under_test import fleet_env, write_project

# Known defects elsewhere, kept failing on purpose (strict: the test turns red once they are fixed, so the marker
# gets removed). See docs/reliability.md, "Findings".
KNOWN: dict[str, pytest.MarkDecorator] = {}  # invalid configs still accepted (none now)


def _params() -> list[object]:
    return [pytest.param(c, id=c.id, marks=[KNOWN[c.id]] if c.id in KNOWN else []) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_up_refuses_invalid_config_naming_the_key(case: ConfigCase, tmp_path: Path) -> None:
    refused, message, problems = check_local(case, tmp_path, subprocess_run=False)
    assert refused, message
    assert case.key in message, f"{case.id}: the message does not name {case.key}:\n{message}"
    assert not problems, problems


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[KNOWN[c.id]] if c.id in KNOWN else [])
                                  for c in CASES if c.engine])
def test_mock_engine_registers_nothing_for_invalid_config(case: ConfigCase) -> None:
    refused, message, registered = check_engine(case)
    assert refused and case.key in message, message
    assert registered == 0


@pytest.mark.parametrize("case_id", ["replicas-string", "per-user-port-clash", "stack-missing"])
def test_the_command_refuses_with_exit_status_and_message(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    refused, message, problems = check_local(case, tmp_path, subprocess_run=True)
    assert refused and case.key in message, message
    assert not problems, problems


@pytest.mark.parametrize("case_id", ["yaml-malformed", "config-not-a-mapping"])
def test_a_broken_stack_file_gets_a_message_not_a_traceback(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    refused, message, problems = check_local(case, tmp_path, subprocess_run=True)
    assert refused and case.key in message, message
    assert not problems, problems


def test_module_entry_point_prints_user_errors_without_traceback(tmp_path: Path) -> None:
    write_project(tmp_path)
    bad = tmp_path / "target.json"
    bad.write_text('{"stack": "x", "platform": ')
    proc = subprocess.run([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(tmp_path), "target",
                           "--from", str(bad)], env=fleet_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1
    assert "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-400:]
