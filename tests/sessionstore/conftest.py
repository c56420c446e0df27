"""Fixtures for the session store's tests: a redis-server per module, the test model, a work directory; the
processes themselves are tests/helpers/store_processes.py (benchmarks/session_store.py starts the same ones).

Waits are for events (a ready line on a pipe, a Redis keyspace notification, a process exit); the timeouts only
bound how long a broken run takes to fail.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.store_processes import REDIS_SERVER, RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def model() -> Iterator[object]:
    from copilot_fleet.testmodel import serve

    server = serve("127.0.0.1", 0, api_key=secrets.token_hex(8))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("store")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
