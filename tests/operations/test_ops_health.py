"""The health check: a real JSON-RPC round trip to a real CLI; silent, wrong and absent servers fail, bounded."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from copilot_fleet import CLI_VERSION
from copilot_fleet.pod.health import check, check_many, read_token
from copilot_fleet.timescale import time_scale

if TYPE_CHECKING:
    from tests.helpers.ops_fleet import OpsFleet

pytestmark = pytest.mark.fleet


class SilentServer:
    """Accepts TCP connections and never says a word (a hung server, or something else on the port)."""

    def __init__(self, *, reply: bytes | None = None, close_at_once: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.close_at_once = close_at_once
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.reply is not None:
                conn.sendall(self.reply)
            if self.close_at_once:
                conn.close()
            else:
                self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_healthy_cli_answers_with_its_version_fast(ops_fleet: OpsFleet) -> None:
    results = [check(ops_fleet.a.address, ops_fleet.token, timeout=2.0) for _ in range(20)]
    assert all(r.ok for r in results), [r.line() for r in results if not r.ok]
    assert {r.version for r in results} == {CLI_VERSION}
    assert all(isinstance(r.protocol_version, int) for r in results)
    latencies = sorted(r.latency_ms for r in results)
    median = statistics.median(latencies)
    print(f"\nhealth check latency over 20 checks: median {median:.2f} ms, max {latencies[-1]:.2f} ms")
    assert median < 100, latencies
    assert results[0].line().startswith(f"ok {ops_fleet.a.address}: CLI {CLI_VERSION}")


def test_wrong_or_missing_token_fails(ops_fleet: OpsFleet) -> None:
    wrong = check(ops_fleet.a.address, "not-the-token", timeout=2.0)
    assert not wrong.ok and "rejected the connection token" in (wrong.error or "")
    missing = check(ops_fleet.a.address, None, timeout=2.0)
    assert not missing.ok and "AUTHENTICATION" in (missing.error or "")


def test_server_that_accepts_but_never_answers_fails_within_the_timeout(silent: SilentServer) -> None:
    started = time.monotonic()
    result = check(silent.address, "token", timeout=0.5)
    elapsed = time.monotonic() - started
    assert not result.ok
    assert "did not reply" in (result.error or "")
    # At the timeout, not at once, and not much later: the slack is a scheduling delay, longer on a busy machine.
    assert 0.45 <= elapsed < 0.5 + time_scale(), elapsed
    assert silent.accepted, "the check must have connected (TCP accept alone is not health)"


def test_server_that_closes_or_talks_nonsense_fails() -> None:
    closing = SilentServer(close_at_once=True)
    http = SilentServer(reply=b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}")
    try:
        closed = check(closing.address, "t", timeout=1.0)
        assert not closed.ok
        assert "closed the connection" in (closed.error or "") or "reset" in (closed.error or ""), closed.error
        nonsense = check(http.address, "t", timeout=0.5)
        assert not nonsense.ok
    finally:
        closing.close()
        http.close()


def test_nothing_listening_fails_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        result = check(address, "t", timeout=2.0)
    assert not result.ok and "refused" in (result.error or "").lower()
    assert result.latency_ms < 500


def test_check_many_runs_in_parallel_and_keeps_order(ops_fleet: OpsFleet, silent: SilentServer) -> None:
    addresses = [ops_fleet.a.address, silent.address, ops_fleet.b.address, silent.address, silent.address,
                 silent.address]
    started = time.monotonic()
    results = check_many(addresses, ops_fleet.token, timeout=0.6)
    elapsed = time.monotonic() - started
    assert [r.address for r in results] == addresses
    assert [r.ok for r in results] == [True, False, True, False, False, False]
    # Four silent servers checked one after the other take at least 2.4 s, however fast or busy the machine is.
    assert elapsed < 4 * 0.6, f"four silent servers took {elapsed:.2f} s: at least one waited for another"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        check("no-port", None)
    with pytest.raises(ValueError, match="timeout"):
        check("127.0.0.1:1", None, timeout=0)


def test_token_from_file_wins_over_environment(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert read_token(str(token_file), {"COPILOT_CONNECTION_TOKEN": "from-env"}) == "from-file"
    assert read_token(None, {"COPILOT_CONNECTION_TOKEN": "from-env"}) == "from-env"
    assert read_token(None, {}) is None
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_token(str(tmp_path / "empty"))


def _probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "COPILOT_CONNECTION_TOKEN"}
    return subprocess.run([sys.executable, "-m", "copilot_fleet.pod.health", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30)


def test_command_line_probe_exit_codes_and_one_line(ops_fleet: OpsFleet, silent: SilentServer, tmp_path) -> None:
    port = str(ops_fleet.a.port)
    ok = _probe("--host", "127.0.0.1", "--port", port, env={"COPILOT_CONNECTION_TOKEN": ops_fleet.token})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("\n") == 1 and ok.stdout.startswith("ok 127.0.0.1:")

    token_file = tmp_path / "token"
    token_file.write_text(ops_fleet.token)
    by_file = _probe("--address", ops_fleet.b.address, "--token-file", str(token_file), "--json")
    assert by_file.returncode == 0 and '"ok": true' in by_file.stdout

    no_token = _probe("--port", port)
    assert no_token.returncode == 1 and no_token.stdout.startswith("FAIL")

    hung = _probe("--address", silent.address, "--timeout", "0.3", env={"COPILOT_CONNECTION_TOKEN": "x"})
    assert hung.returncode == 1 and hung.stdout.count("\n") == 1 and "did not reply" in hung.stdout

    usage = _probe()
    assert usage.returncode == 2 and "--port" in usage.stderr


async def _one_session_on(ops_fleet: OpsFleet, address: str) -> None:
    from copilot_fleet.client import FleetClient

    async with FleetClient(ops_fleet.target([address]), user="wearer") as fleet:
        handle = await fleet.create_session("wear", **ops_fleet.small)
        await handle.close()
        await fleet.delete_session(handle.session_id)


def test_probe_fails_a_server_past_its_recycle_bounds(ops_fleet: OpsFleet) -> None:
    """The Kubernetes recycle: an answering CLI over fleet:recycle's bounds fails readiness and liveness."""
    import asyncio

    from copilot_fleet.pod.ports import port_holder_pid
    from copilot_fleet.pod.wear import measure

    server = ops_fleet.a
    asyncio.run(_one_session_on(ops_fleet, server.address))
    pid = port_holder_pid(server.port)
    assert pid == server.proc.pid
    wear = measure(pid, server.home)
    assert wear.rss_mib is not None and wear.rss_mib > 64, wear
    assert wear.sessions_served is not None and wear.sessions_served >= 1, wear
    env = {"COPILOT_CONNECTION_TOKEN": ops_fleet.token, "COPILOT_HOME": str(server.home)}
    port = str(server.port)

    fat = _probe("--port", port, "--recycle-rss-mb", "64", env=env)
    assert fat.returncode == 1, fat.stdout + fat.stderr
    assert "past its recycle bound" in fat.stdout and "MiB > 64 MiB" in fat.stdout

    worn = _probe("--port", port, "--recycle-sessions", str(wear.sessions_served), env=env)
    assert worn.returncode == 1 and f"served {wear.sessions_served} sessions" in worn.stdout, worn.stdout

    fine = _probe("--port", port, "--recycle-rss-mb", "65536", "--recycle-sessions", "1000000", env=env)
    assert fine.returncode == 0, fine.stdout + fine.stderr

    # Without COPILOT_HOME the sessions cannot be counted: that bound is not met (never a false restart).
    no_home = _probe("--port", port, "--recycle-sessions", "1", env={"COPILOT_CONNECTION_TOKEN": ops_fleet.token})
    assert no_home.returncode == 0, no_home.stdout

    bad = _probe("--port", port, "--recycle-rss-mb", "0", env=env)
    assert bad.returncode == 2 and "--recycle-rss-mb" in bad.stderr


def test_probe_with_a_ready_file_needs_the_provider_registered(ops_fleet: OpsFleet, tmp_path) -> None:
    """Store mode: a CLI that answers is healthy only once its provider's ready file exists, names its port and a
    live provider; the recycle bounds then measure the CLI the file names (the provider's child)."""
    import json

    server = ops_fleet.a
    env = {"COPILOT_CONNECTION_TOKEN": ops_fleet.token, "COPILOT_HOME": str(server.home)}
    ready = tmp_path / "provider.ready"
    args = ("--port", str(server.port), "--ready-file", str(ready))

    missing = _probe(*args, env=env)
    assert missing.returncode == 1 and "has not registered yet" in missing.stdout, missing.stdout

    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    for info, words in (({"pid": os.getpid(), "port": server.port + 1, "cli_pid": server.proc.pid},
                         f"names port {server.port + 1}"),
                        ({"pid": dead_pid.pid, "port": server.port, "cli_pid": server.proc.pid}, "is gone"),
                        ({"port": server.port}, "names no pid")):
        ready.write_text(json.dumps(info))
        result = _probe(*args, env=env)
        assert result.returncode == 1 and words in result.stdout, (info, result.stdout)
    ready.write_text("{not json")
    assert _probe(*args, env=env).returncode == 1

    ready.write_text(json.dumps({"pid": os.getpid(), "port": server.port, "cli_pid": server.proc.pid}))
    fine = _probe(*args, env=env)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    fat = _probe(*args, "--recycle-rss-mb", "64", env=env)
    assert fat.returncode == 1 and "MiB > 64 MiB" in fat.stdout, fat.stdout
