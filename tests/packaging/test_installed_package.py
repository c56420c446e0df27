"""copilot-fleet as users install it: a wheel built from the project (as `pip install .` or the CLI image builds it),
installed without `-e` into a virtual environment of its own.

The wheel holds the package `copilot_fleet` and nothing else: the Pulumi components and the smoke tests inside it
(copilot_fleet.components, copilot_fleet.smoke_tests), nothing generic at the top of site-packages, and none of
the fault suite, the tests or the benchmarks. `copilot-fleet verify --target FILE`, run from outside any checkout,
finds and runs the installed smoke tests against a local fleet.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helpers.local_fleet import Project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from a copy of what the CLI image copies (a build in the checkout itself would
    reuse its build/ directory, where files of modules that no longer exist may be left)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("copilot_fleet", "components", "smoke_tests"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                           "-w", str(work / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("copilot_fleet-*.whl")
    return built


def checkout_modules() -> set[str]:
    """Every module of the package in the checkout, components and smoke tests included (through their links)."""
    found = set()
    for directory, subdirs, files in os.walk(ROOT / "copilot_fleet", followlinks=True):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        found |= {(Path(directory) / f).relative_to(ROOT).as_posix() for f in files if f.endswith(".py")}
    return found


def test_the_wheel_holds_the_package_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"copilot_fleet", wheel.name.split("-py3")[0] + ".dist-info"}
    modules = {n for n in names if n.endswith(".py")}
    assert modules == checkout_modules()
    for needed in ("copilot_fleet/smoke_tests/conftest.py", "copilot_fleet/smoke_tests/lease_holder.py",
                   "copilot_fleet/components/kubernetes/pod.py", "copilot_fleet/components/azure/__init__.py",
                   "copilot_fleet/pod/janitor.py"):
        assert needed in modules
    assert not [n for n in names if "faults" in n.split("/") or n.split("/")[0] in ("tests", "benchmarks")]


def test_the_core_needs_pydantic_and_yaml_and_every_other_part_is_an_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]

    def needed_by(extra: str) -> list[str]:
        return sorted(r.name for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})
                      or r.marker is None and extra == "")

    assert needed_by("") == ["pydantic", "pyyaml"]
    assert {"client", "deploy", "local", "verify", "pod", "dev"} <= set(meta.get_all("Provides-Extra") or [])
    assert needed_by("pod") == ["redis"]  # the CLI image: no Pulumi, no SDK, no pytest


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel installed (not editable). Its dependencies come from the environment
    running the tests: a .pth line puts that environment's site-packages after the venv's own (the .pth files in
    it, the editable install's among them, are not run), so only copilot_fleet is new, and it is the wheel's."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "dependencies-of-the-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--ignore-installed", "--disable-pip-version-check", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def outside_env() -> dict[str, str]:
    """An environment that cannot reach the checkout: no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def test_the_installed_copy_is_the_wheels(installed: Path, tmp_path: Path) -> None:
    code = ("import copilot_fleet, copilot_fleet.smoke_tests, copilot_fleet.components, importlib.util as u; "
            "print(copilot_fleet.__file__); print(copilot_fleet.smoke_tests.__file__); "
            "print([m for m in ('components', 'smoke_tests', 'faults') if u.find_spec(m)])")
    done = subprocess.run([str(installed / "bin/python"), "-c", code], cwd=tmp_path, env=outside_env(),
                          capture_output=True, text=True, timeout=60, check=True)
    package, suite, generic = done.stdout.splitlines()
    assert package.startswith(str(installed)) and suite.startswith(str(installed)), done.stdout
    assert generic == "[]"  # nothing generic is importable: no top-level components, smoke_tests or faults


@pytest.fixture(scope="module")
def local_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = Project.create(tmp_path_factory.mktemp("installed-fleet") / "project")
    project.local_stack("inst", "shared-cli", replicas=2)
    try:
        project.run_ok("up", "--stack", "inst", "--timeout", "90")
        yield project
    finally:
        project.teardown("inst")


@pytest.mark.fleet
def test_verify_runs_the_installed_smoke_tests_from_outside_any_project(installed: Path, local_fleet: Project,
                                                                        tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text(local_fleet.paths("inst").target_file.read_text())
    target.chmod(0o600)
    report_file = tmp_path / "report.json"
    done = subprocess.run([str(installed / "bin/copilot-fleet"), "verify", "--target", str(target),
                           "--json", str(report_file)],
                          cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    assert done.returncode == 0 and report is not None and report["ok"], done.stdout + done.stderr
    passed = {c["nodeid"].split("::")[-1].split("[")[0] for c in report["checks"] if c["outcome"] == "passed"}
    assert {"test_persistent_session_lifecycle", "test_attached_session_is_leased"} <= passed
