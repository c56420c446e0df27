"""What every folder of the project's tests shares: the repository's example stacks, by name.

The tests read the examples this repository ships, never whatever else is in `stacks/`: a user's own stack files
live there too (`pulumi stack init prod` adds one), and one broken file of theirs must not fail the project's tests,
let alone their collection. So the examples are named here (test parameters are fixed before any file is read),
and `example_project` is a copy of the project holding only them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# name -> (platform, isolation), as each example's stack file sets them (tests/spec checks that they agree).
EXAMPLE_STACKS: dict[str, tuple[str, str]] = {
    "local": ("local", "shared-cli"),
    "local-shared-session": ("local", "shared-session"),
    "local-per-user": ("local", "per-user"),
    "local-store-shared-cli": ("local", "shared-cli"),
    "local-store-shared-session": ("local", "shared-session"),
    "local-store-per-user": ("local", "per-user"),
    "k8s-shared-cli": ("kubernetes", "shared-cli"),
    "k8s-shared-session": ("kubernetes", "shared-session"),
    "k8s-per-user": ("kubernetes", "per-user"),
    "k8s-store-shared-session": ("kubernetes", "shared-session"),
    "k8s-store-per-user": ("kubernetes", "per-user"),
    "azure-shared-cli": ("azure", "shared-cli"),
    "azure-shared-session": ("azure", "shared-session"),
    "azure-per-user": ("azure", "per-user"),
    "azure-store-shared-cli": ("azure", "shared-cli"),
}


def example_stacks(*platforms: str) -> list[str]:
    return [name for name, (platform, _) in EXAMPLE_STACKS.items() if not platforms or platform in platforms]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "example_stacks(*platforms): run the test once per example stack of those "
                                       "platforms (all without arguments), as its `example_stack` argument")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example_stack" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("example_stacks")
        metafunc.parametrize("example_stack", example_stacks(*(marker.args if marker else ())))


def copy_examples(where: Path, names: list[str] | None = None) -> Path:
    """A project directory at `where` with Pulumi.yaml and copies of the named example stacks (default: all)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Pulumi.yaml", where / "Pulumi.yaml")
    (where / "stacks").mkdir(exist_ok=True)
    for name in names if names is not None else list(EXAMPLE_STACKS):
        shutil.copy(ROOT / "stacks" / f"Pulumi.{name}.yaml", where / "stacks" / f"Pulumi.{name}.yaml")
    return where


@pytest.fixture(scope="session")
def example_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the repository's example stacks and nothing else (read-only by convention: shared)."""
    return copy_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="session")
def example_stack_kinds() -> dict[str, tuple[str, str]]:
    """Each example stack's (platform, isolation)."""
    return dict(EXAMPLE_STACKS)
