"""Fixtures: the test model as a real subprocess (`python -m copilot_fleet.testmodel`), stopped by PID."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^test model listening on (\S+):(\d+)$")


def wait_for_line(stream: IO[str], pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
    """Read lines until one matches; fail with what was seen if the deadline passes or the stream ends."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = stream.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if match := pattern.search(seen[-1]):
                return match
    raise AssertionError(f"{what}: no line matching {pattern.pattern!r} within {timeout} s; saw {seen[-10:]}")


@dataclass
class TestModelProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    log_path: Path
    first_line: str

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM by PID, then SIGKILL if it does not exit in 5 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


StartTestModel = Callable[..., TestModelProcess]


@pytest.fixture(scope="module")
def start_testmodel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartTestModel]:
    """Factory: start `python -m copilot_fleet.testmodel --port 0 ...`, wait for its ready line."""
    started: list[TestModelProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> TestModelProcess:
        log_path = tmp_path_factory.mktemp("testmodel") / "stderr.log"
        child_env = {k: v for k, v in os.environ.items() if k != "TESTMODEL_API_KEY"}
        child_env.update(env or {})
        child_env["PYTHONPATH"] = str(ROOT)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "copilot_fleet.testmodel", "--host", "127.0.0.1", "--port", "0", *args],
                stdout=subprocess.PIPE, stderr=log, text=True, env=child_env, cwd=ROOT,
            )
        assert proc.stdout is not None
        try:
            match = wait_for_line(proc.stdout, READY, 15, "test model ready line")
        except AssertionError:
            proc.kill()
            proc.wait(timeout=5)
            raise AssertionError(f"test model did not start; stderr: {log_path.read_text()}") from None
        handle = TestModelProcess(proc, match.group(1), int(match.group(2)), log_path, match.group(0))
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


API_KEY = "tm-key-0123456789abcdef"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "api-key"
    path.write_text(API_KEY + "\n")
    path.chmod(0o600)
    return path
