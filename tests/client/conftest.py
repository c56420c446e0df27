"""Fixtures of the fleet client's tests: real processes from tests/helpers/processes.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.processes import CliFleet, RedisServer, SpareCli, running_cli_fleet, running_redis, running_spare


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def cli_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliFleet]:
    with running_cli_fleet(tmp_path_factory.mktemp("cli-fleet")) as fleet:
        yield fleet


@pytest.fixture
def spare_cli(cli_fleet: CliFleet) -> Iterator[SpareCli]:
    with running_spare(cli_fleet) as spare:
        yield spare
