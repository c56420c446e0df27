"""Fixtures for the verify tests: a real local fleet per isolation pattern, in a throwaway project.

Reuses the local fleet's test helpers (tests/helpers/local_fleet.py: projects with free ports, the
`copilot-fleet` command as a subprocess, teardown that stops every process by PID). One fleet runs at a time:
the fixture is module-scoped and parametrized, so pytest runs all tests of one pattern, tears that fleet down,
then starts the next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.local.paths import StatePaths
from copilot_fleet.sessiondir import session_dirs
from tests.helpers.kubectl_standin import install
from tests.helpers.local_fleet import Project

PATTERNS = ("shared-cli", "shared-session", "per-user")
# The same patterns in store mode (fleet:sessionState.mode store): the CLIs under their session store providers.
STORE_PREFIX = "store-"
PER_USER_USERS = ["alice", "bob-smith"]


@dataclass
class RunningFleet:
    project: Project
    stack: str
    isolation: str
    store: bool = False

    @property
    def paths(self) -> StatePaths:
        return self.project.paths(self.stack)

    @property
    def target_document(self) -> dict[str, Any]:
        return json.loads(self.paths.target_file.read_text())

    def session_dirs(self) -> list[Path]:
        """Session directories on disk (shared session-state/ and each server's own), lock files aside."""
        roots = [self.paths.shared_session_state, *self.paths.servers_dir.glob("*/session-state")]
        return sorted(p for root in roots if root.is_dir() and not root.is_symlink() for p in session_dirs(root))

    def store_sessions(self) -> list[str]:
        """Store mode: every session id in the fleet's session store (every scope)."""
        import asyncio

        import redis.asyncio as aioredis

        from copilot_fleet.sessionstore import admin
        from copilot_fleet.sessionstore.keys import StoreKeys

        manifest = json.loads(self.paths.manifest.read_text())

        async def listing() -> list[str]:
            client = aioredis.from_url(self.target_document["redis_url"])
            try:
                return [row.session_id for scope in manifest["store_scopes"]
                        for row in await admin.list_sessions(client, StoreKeys(scope))]
            finally:
                await client.aclose()

        return asyncio.run(listing())


def store_patterns() -> list[str]:
    return [STORE_PREFIX + p for p in PATTERNS]


@pytest.fixture(scope="module", params=[*PATTERNS, *store_patterns()])
def running_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    param: str = request.param
    store = param.startswith(STORE_PREFIX)
    isolation = param.removeprefix(STORE_PREFIX)
    project = Project.create(tmp_path_factory.mktemp(f"verify-{param}"))
    stack = f"v-{param}"
    state = {"mode": "store" if store else "volume"}
    if isolation == "per-user":
        project.local_stack(stack, isolation, users=PER_USER_USERS, sessionState=state)
    else:
        project.local_stack(stack, isolation, replicas=2, sessionState=state)
    try:
        project.run_ok("up", "--stack", stack, "--timeout", "90")
        yield RunningFleet(project, stack, isolation, store)
    finally:
        project.teardown(stack)


@dataclass
class KubectlStandin:
    """`kubectl` on PATH is tests/helpers/kubectl_standin.py, configured by `configure` (see that file)."""

    config_file: Path
    pids_dir: Path

    def configure(self, *, context: str | None = "standin", forwards: dict[str, str] | None = None,
                  die_after: dict[str, int] | None = None) -> None:
        self.config_file.write_text(json.dumps({"context": context, "forwards": forwards or {},
                                                "die_after": die_after or {}, "pids": str(self.pids_dir)}))

    def pids(self) -> list[int]:
        """Every forward the stand-in started (each leaves its pid)."""
        return [int(p.name) for p in self.pids_dir.iterdir()]


@pytest.fixture
def kubectl_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KubectlStandin:
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    install(bin_dir)
    made = KubectlStandin(tmp_path / "standin.json", tmp_path / "standin-pids")
    made.pids_dir.mkdir()
    made.configure()
    monkeypatch.setenv("KUBECTL_STANDIN", str(made.config_file))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return made
