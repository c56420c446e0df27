"""Fixtures for the session store's tests: a redis-server per module, the test model, a work directory; the
processes themselves are benchmarks/store_processes.py (the benchmark starts the same ones).

Waits are for events (a ready line on a pipe, a Redis keyspace notification, a process exit); the timeouts only
bound how long a broken run takes to fail.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from store_processes import (  # noqa: E402
    CLI_BINARY,
    CLI_CACHE,
    READY,
    REDIS_READY,
    REDIS_SERVER,
    ROOT,
    START_TIMEOUT,
    BareCli,
    ProviderProcess,
    RedisServer,
    free_port,
    start_bare_cli,
    start_provider,
    stop_process,
    wait_line,
)

__all__ = ["CLI_BINARY", "CLI_CACHE", "READY", "REDIS_READY", "ROOT", "START_TIMEOUT", "BareCli",
           "ProviderProcess", "RedisServer", "free_port", "start_bare_cli", "start_provider", "stop_process",
           "wait_line"]


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


def require_cli() -> None:
    if not CLI_BINARY.exists():
        pytest.skip(f"Copilot CLI binary missing at {CLI_BINARY} (bash scripts/setup.sh)")


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
