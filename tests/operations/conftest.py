"""Fixtures of the operations tests: the fleet of tests/helpers/ops_fleet.py, once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.ops_fleet import OpsFleet, running_ops_fleet


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ops_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsFleet]:
    with running_ops_fleet(tmp_path_factory.mktemp("ops-fleet")) as fleet:
        yield fleet
