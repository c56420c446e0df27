"""docs/architecture.md matches the tree: every path it names exists, and every package, every module of the
parts it describes module by module, and every test folder is named in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# A path of this repository as the page writes it: `copilot_fleet/pod/`, `components/kubernetes/pod.py`, ...
_PATH = re.compile(r"`((?:copilot_fleet|components|smoke_tests|faults|benchmarks|tests|docs|scripts|stacks|images)"
                   r"(?:/[A-Za-z0-9_.-]*)*|__main__\.py|pyproject\.toml|Pulumi\.yaml|\.ci/run|\.pre-commit-config"
                   r"\.yaml)`")
# The parts the page describes module by module.
DESCRIBED = ("copilot_fleet/client", "copilot_fleet/pod", "copilot_fleet/local", "copilot_fleet/render",
             "copilot_fleet/commands")


def text() -> str:
    return DOC.read_text()


def test_every_path_it_names_exists() -> None:
    named = sorted({m.group(1) for m in _PATH.finditer(text()) if "<" not in m.group(1)})
    assert len(named) > 20
    missing = [p for p in named if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"docs/architecture.md names what is not in the tree: {missing}"


def packages() -> list[str]:
    found = []
    for top in ("copilot_fleet", "components", "faults", "benchmarks"):
        found.append(top)
        found += [p.parent.relative_to(ROOT).as_posix() for p in (ROOT / top).glob("*/__init__.py")]
    return sorted(found)


@pytest.mark.parametrize("package", packages())
def test_every_package_is_named(package: str) -> None:
    assert f"`{package}" in text() or f"{package}/" in text(), f"docs/architecture.md does not mention {package}"


@pytest.mark.parametrize("package", DESCRIBED)
def test_every_module_of_the_described_parts_is_named(package: str) -> None:
    modules = sorted(p.stem for p in (ROOT / package).glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if not re.search(rf"`{m}[`.]|{m}\.py", text())]
    assert not missing, f"docs/architecture.md does not name these modules of {package}: {missing}"


def test_every_test_folder_is_named() -> None:
    folders = sorted(p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__")
    missing = [f for f in folders if f"`{f}`" not in text() and f"tests/{f}/" not in text()]
    assert not missing, f"docs/architecture.md does not name these test folders: {missing}"
