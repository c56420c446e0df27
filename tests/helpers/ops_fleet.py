"""The operations tests' fleet: two CLI servers sharing one session-state/, a redis-server, and the deterministic
test model running in this process (so a test can see every request the CLI sends it).

The processes are started as in tests/helpers/processes.py (the fleet client's tests use the same); every one
listens on 127.0.0.1 only and is stopped by its PID when `running_ops_fleet` ends.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.target import Target
from copilot_fleet.testmodel import RequestRecord, TestModelServer, serve
from tests.helpers.processes import CLI_BINARY, REDIS_SERVER, CliServer, RedisServer, start_cli, stop_process

# Small requests: no tools and a one-line system prompt instead of the CLI's 21 KB one.
SMALL: dict[str, Any] = {
    "available_tools": [],
    "system_message": {"mode": "replace", "content": "You are the copilot-fleet test assistant."},
}


@dataclass
class Requests:
    """Every request the test model received, for tests that check what the CLI sent."""

    records: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: RequestRecord) -> None:
        with self.lock:
            self.records.append(record)

    def containing(self, text: str) -> list[RequestRecord]:
        """Model requests whose messages mention `text` (a word unique to one test's session)."""
        with self.lock:
            records = list(self.records)
        return [r for r in records if isinstance(r.body, dict) and text in str(r.body.get("messages", ""))]


@dataclass
class OpsFleet:
    """Two CLI replicas on one session-state/, a redis-server, the in-process test model."""

    a: CliServer
    b: CliServer
    redis: RedisServer
    model: TestModelServer
    requests: Requests
    token: str
    shared_state: Path
    root: Path
    small: dict[str, Any] = field(default_factory=lambda: dict(SMALL))  # session options for small requests

    def target(self, replicas: list[str] | None = None, *, isolation: str = "shared-cli",
               redis: bool = True, **extra: Any) -> Target:
        doc: dict[str, Any] = {
            "stack": "ops-it",
            "platform": "local",
            "isolation": isolation,
            "replicas": replicas if replicas is not None else [self.a.address, self.b.address],
            "connection_token": self.token,
            "redis_url": self.redis.url if redis else None,
            "provider": self.model.provider(),
            "model": "copilot-fleet-test",
            **extra,
        }
        return Target.model_validate(doc)

    def target_file(self, target: Target, name: str = "target.json") -> Path:
        path = self.root / name
        path.write_text(json.dumps(target.to_json_dict()))
        path.chmod(0o600)
        return path


@contextmanager
def running_ops_fleet(root: Path) -> Iterator[OpsFleet]:
    """The fleet under `root` (skipped where the CLI or redis-server is missing); stopped and removed at the end."""
    if not CLI_BINARY.exists():
        pytest.skip(f"Copilot CLI binary missing at {CLI_BINARY}")
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    shared = root / "session-state"
    shared.mkdir()
    token = secrets.token_hex(16)
    requests = Requests()
    started: list[subprocess.Popen[str]] = []
    redis_srv = RedisServer()
    model = serve("127.0.0.1", 0, api_key=secrets.token_hex(16), on_request=requests.add)
    try:
        a = start_cli("a", root, shared, token)
        started.append(a.proc)
        b = start_cli("b", root, shared, token)
        started.append(b.proc)
        redis_srv.start()
        yield OpsFleet(a=a, b=b, redis=redis_srv, model=model, requests=requests, token=token,
                       shared_state=shared, root=root)
    finally:
        redis_srv.stop()
        for proc in reversed(started):
            stop_process(proc)
        model.stop()
        shutil.rmtree(root, ignore_errors=True)
