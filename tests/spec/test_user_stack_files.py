"""The project's tests do not read the user's own stack files: a broken one in stacks/ changes nothing for them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Not sources (the installed package runs from the checkout either way): large, or made by runs.
NOT_COPIED = frozenset({"docs", "render-out", "images", "copilot_fleet.egg-info"})


def test_a_broken_stack_file_of_the_users_breaks_no_test_collection(tmp_path: Path) -> None:
    """A copy of the project's tests and example stacks, plus a user's stack file that is not even YAML: every
    test module is still collected (before, two modules read every file in stacks/ at collection)."""
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in NOT_COPIED or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp_path / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(entry, tmp_path / entry.name)
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text("config:\n  fleet:isolation: [shared-cli\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout.splitlines()[-1]
