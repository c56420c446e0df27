"""The provider and its CLI live and die together, and no session can start before the provider is registered."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet import cli_logs
from tests.helpers.processes import wait_exit
from tests.helpers.store_processes import (
    CLI_BINARY,
    READY,
    ROOT,
    STOP_BOUND,
    RedisServer,
    require_cli,
    start_provider,
    stop_process,
    wait_line,
)

pytestmark = pytest.mark.fleet
EXIT_BOUND = 60.0  # how long a broken run may take to fail; every wait returns on the event itself


def wait_gone(pid: int, timeout: float = EXIT_BOUND) -> bool:
    return wait_exit(pid, timeout)


@pytest.fixture
def token() -> str:
    return secrets.token_hex(16)


@pytest.fixture(autouse=True)
def _cli() -> None:
    require_cli()


def test_killing_the_provider_kills_its_cli(tmp_path: Path, redis_server: RedisServer, token: str) -> None:
    provider = start_provider(tmp_path, "p", redis_server.url, token)
    os.kill(provider.proc.pid, signal.SIGKILL)
    provider.proc.wait(timeout=EXIT_BOUND)
    assert wait_gone(provider.cli_pid), "the CLI outlived its provider"


def test_a_dead_cli_takes_the_provider_with_it(tmp_path: Path, redis_server: RedisServer, token: str) -> None:
    provider = start_provider(tmp_path, "p", redis_server.url, token)
    assert provider.ready_file.exists()
    os.kill(provider.cli_pid, signal.SIGKILL)
    assert provider.proc.wait(timeout=EXIT_BOUND) == 1
    assert "the CLI exited with status" in provider.output()
    assert not provider.ready_file.exists()


def test_sigterm_stops_the_cli_first_then_the_provider(tmp_path: Path, redis_server: RedisServer,
                                                       token: str) -> None:
    provider = start_provider(tmp_path, "p", redis_server.url, token)
    registration = redis_server.client().get("copilot-fleet:store:shared:server:p")
    assert isinstance(registration, bytes) and registration.decode() == provider.ready_info()["instance"]
    assert provider.stop() == 0
    assert wait_gone(provider.cli_pid)
    assert not provider.ready_file.exists()
    assert redis_server.client().get("copilot-fleet:store:shared:server:p") is None
    assert "stopping: the CLI finishes its turns first" in provider.output()


def test_another_instance_of_the_server_id_replaces_this_one(tmp_path: Path, redis_server: RedisServer,
                                                             token: str) -> None:
    first = start_provider(tmp_path, "same", redis_server.url, token, args=("--registration-ttl", "0.6"))
    second = start_provider(tmp_path / "other", "same", redis_server.url, token)
    try:
        assert first.proc.wait(timeout=EXIT_BOUND) == 1  # its renewal found the newer instance
        assert "another instance registered server id same" in first.output()
        assert wait_gone(first.cli_pid)
        assert second.proc.poll() is None
    finally:
        second.stop()


def test_an_unreachable_store_stops_the_start(tmp_path: Path, token: str) -> None:
    provider = subprocess.run(
        [sys.executable, "-m", "copilot_fleet.sessionstore", "--cli", str(CLI_BINARY), "--home",
         str(tmp_path / "home"), "--server-id", "p", "--scope", "shared"],
        cwd=ROOT, env={**os.environ, "COPILOT_FLEET_STORE_REDIS_URL": "redis://127.0.0.1:1/0",
                       "COPILOT_CONNECTION_TOKEN": token},
        capture_output=True, text=True, timeout=EXIT_BOUND,
    )
    assert provider.returncode == 1
    assert "the session store (Redis at 127.0.0.1:1) did not answer" in provider.stdout
    assert not (tmp_path / "home").exists()  # nothing was started


def test_bad_usage_is_refused_naming_the_option(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "copilot_fleet.sessionstore", *args], cwd=ROOT,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=EXIT_BOUND)

    base = ("--cli", str(CLI_BINARY), "--home", str(tmp_path), "--scope", "shared")
    bad_id = run(*base, "--server-id", "has space")
    assert bad_id.returncode == 2 and "server id 'has space'" in bad_id.stderr
    no_url = run(*base, "--server-id", "p", COPILOT_FLEET_STORE_REDIS_URL="")
    assert no_url.returncode == 2 and "no Redis URL" in no_url.stderr
    bad_scope = run(*base, "--server-id", "p", "--scope", "a:b", COPILOT_FLEET_STORE_REDIS_URL="redis://x")
    assert bad_scope.returncode == 2 and "store scope 'a:b'" in bad_scope.stderr


def test_a_leftover_local_session_state_is_refused(tmp_path: Path, redis_server: RedisServer, token: str) -> None:
    home = tmp_path / "p" / "home" / "session-state" / "u-5-alice-old-1700000000-0123abcd"
    home.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="holds sessions kept on this server's own disk"):
        start_provider(tmp_path, "p", redis_server.url, token)
    assert home.is_dir()  # nothing deleted


def test_old_per_start_logs_are_pruned_before_the_cli_starts(tmp_path: Path, redis_server: RedisServer,
                                                              token: str) -> None:
    """A provider restarted over and over (a crash loop, recycling) must not fill its CLI's home with logs: it keeps
    the newest few, and a link planted among them is never followed (nor counted: it is not a log)."""
    logs = tmp_path / "p" / "home" / "logs"
    logs.mkdir(parents=True)
    planted = [f"process-{1_700_000_000_000 + i}-{999_999_990 + i}.log" for i in range(8)]  # no such PIDs
    for name in planted:
        (logs / name).write_text("old start\n")
    outside = tmp_path / "outside.log"
    outside.write_text("not the CLI's\n")
    (logs / "process-1600000000000-999999999.log").symlink_to(outside)
    provider = start_provider(tmp_path, "p", redis_server.url, token)
    try:
        left = sorted(p.name for p in logs.iterdir() if p.name.startswith("process-") and not p.is_symlink())
        assert [n for n in planted if n in left] == planted[-(cli_logs.KEEP - 1):], left
        assert len(left) == cli_logs.KEEP, left  # the newest old ones and this start's own
        assert outside.read_text() == "not the CLI's\n"
    finally:
        stop_process(provider.proc, STOP_BOUND)


# -- the start-up race --------------------------------------------------------------------------------------------


def start_with_early_client(root: Path, redis_server: RedisServer, token: str,
                            mode: str) -> tuple[subprocess.Popen[str], dict[str, Any], Path]:
    """A provider whose CLI, the moment it listens, first serves an application client that creates a session."""
    wrapper = root / "early-cli"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).with_name('early_client_cli.py')} \"$@\"\n")
    wrapper.chmod(0o755)
    result = root / "early.json"
    where = root / "p"
    where.mkdir()
    env = {**os.environ, "COPILOT_FLEET_STORE_REDIS_URL": redis_server.url, "COPILOT_CONNECTION_TOKEN": token,
           "COPILOT_CACHE_HOME": str(ROOT / ".tools/copilot-cache"), "EARLY_REAL_CLI": str(CLI_BINARY),
           "EARLY_RESULT": str(result), "EARLY_MODE": mode, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "copilot_fleet.sessionstore", "--cli", str(wrapper), "--home", str(where / "home"),
         "--workdir", str(where), "--server-id", "early", "--scope", "shared", "--ready-file",
         str(where / "ready.json")],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return proc, env, where


def test_a_session_created_before_registration_fails_and_leaves_nothing(tmp_path: Path, redis_server: RedisServer,
                                                                        token: str) -> None:
    proc, _, where = start_with_early_client(tmp_path, redis_server, token, "file")
    try:
        wait_line(proc, READY, EXIT_BOUND, "the provider")
        early = json.loads((tmp_path / "early.json").read_text())
        assert early["created"] is False and "EEXIST" in early["error"]
        assert (where / "home" / "session-state").is_symlink()
        assert not list(where.rglob("*early-race*"))
    finally:
        assert stop_process(proc, STOP_BOUND) == 0


def test_registration_refused_while_a_session_is_active_stops_the_server(tmp_path: Path,
                                                                         redis_server: RedisServer,
                                                                         token: str) -> None:
    # The early client's CLI had a real directory (as if the block had been bypassed) and created a session in it:
    # the CLI refuses the provider, and the provider takes the CLI down instead of serving without the store.
    proc, _, where = start_with_early_client(tmp_path, redis_server, token, "dir")
    output, _ = proc.communicate(timeout=EXIT_BOUND)
    assert proc.returncode == 1
    assert json.loads((tmp_path / "early.json").read_text())["created"] is True, output
    assert "Cannot set session filesystem provider while sessions are active" in output
    assert not (where / "ready.json").exists()
    assert wait_gone(json.loads((tmp_path / "early.json").read_text())["cli_pid"]), "the CLI outlived its provider"
