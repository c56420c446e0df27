"""Helpers for the local-fleet tests: throwaway projects with free ports, the `copilot-fleet` command as a
subprocess, and SDK sessions against a running fleet.

Every test project lives in a temp dir with its own ports, so the tests never touch a fleet a developer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from copilot_fleet import timescale
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.supervisor import read_record
from copilot_fleet.pod import procfs
from copilot_fleet.pod.ports import free_port_block as free_port_block  # re-exported for the test folders
from copilot_fleet.target import Target, load_target

# The environment `copilot-fleet` runs with (the project's CLI and its warm cache) and a throwaway project: the
# fault suite's. PROJECT_CLI is re-exported for the test folders.
from faults.fleet_under_test import PROJECT_CLI as PROJECT_CLI
from faults.fleet_under_test import fleet_env as fleet_env
from faults.fleet_under_test import write_project


@dataclass
class Project:
    """A throwaway Pulumi project directory with stack files."""

    dir: Path

    @classmethod
    def create(cls, where: Path) -> Project:
        write_project(where)
        return cls(where)

    def write_stack(self, name: str, fleet: Mapping[str, Any]) -> None:
        config = {f"fleet:{k}": v for k, v in fleet.items()}
        (self.dir / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": config}))

    def local_stack(self, name: str, isolation: str, replicas: int = 2, users: list[str] | None = None,
                    **extra: Any) -> dict[str, int]:
        """A local stack with free ports; returns the ports it uses."""
        n = len(users) if users else replicas
        base = free_port_block(n + 3)
        ports = {"replicaBasePort": base, "endpointPort": base + n, "redisPort": base + n + 1,
                 "modelPort": base + n + 2}
        fleet: dict[str, Any] = {"isolation": isolation, "platform": "local", "local": ports, **extra}
        if isolation == "per-user":
            fleet["users"] = [{"id": u} for u in users or []]
        else:
            fleet["replicas"] = replicas
        self.write_stack(name, fleet)
        return ports

    def paths(self, stack: str) -> StatePaths:
        return StatePaths(self.dir, stack)

    def run(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`copilot-fleet --project-dir DIR ARGS...` as a subprocess, within `timeout` seconds on an idle machine
        (scaled: the command's own default bounds, such as up's, grow with the load as well)."""
        return subprocess.run([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(self.dir), *args],
                              env=dict(env) if env is not None else fleet_env(), capture_output=True, text=True,
                              timeout=timescale.scaled(timeout), input=stdin, check=False)

    def run_ok(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, (f"copilot-fleet {' '.join(args)} failed ({proc.returncode}):\n"
                                      f"{proc.stdout}\n{proc.stderr}")
        return proc

    def status(self, stack: str) -> dict[str, Any]:
        """What `copilot-fleet status --json` prints, computed in this process (a subprocess costs about 1 s of
        imports; the command itself is tested on its own)."""
        from copilot_fleet.local.status import collect, to_json_text

        return dict(json.loads(to_json_text(collect(self.dir, stack))))

    def target(self, stack: str) -> Target:
        return load_target(self.paths(stack).target_file)

    def fleet_pids(self, stack: str) -> list[int]:
        """Every live process of the stack's fleet (supervisord's session)."""
        record = read_record(self.paths(stack))
        return procfs.session_members(record.pid) if record else []

    def kill_everything(self, stack: str) -> None:
        """Teardown fallback: SIGKILL whatever of the fleet `down` left."""
        for pid in self.fleet_pids(stack):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def teardown(self, stack: str) -> None:
        try:
            proc = self.run("down", "--stack", stack, "--purge", timeout=90)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr)
        finally:
            self.kill_everything(stack)


def endpoint(target: Target) -> str:
    assert target.endpoint is not None, f"{target.stack} has no endpoint"
    return target.endpoint


def service(status: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["services"] if s["name"] == name)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something true (returned), for `timeout` seconds on an idle machine times
    the machine's time scale (what is waited for, a restart, a health check, takes longer on a busy machine)."""
    factor, why = timescale.measure()
    bound = timeout * factor
    deadline = time.monotonic() + bound
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"waited for {what}: not so within {bound:.0f} s ({timeout:g} s x{factor:g}, {why}); "
                         f"last seen: {last!r}")


# --- SDK sessions ---------------------------------------------------------------------------------------------

def _client(address: str, token: str | None) -> Any:
    from copilot_fleet.nodelay import cli_client

    return cli_client(address, token)


async def _close(client: Any) -> None:
    """Sessions are disconnected already; `stop()` would block about 1 s joining a reader thread (measured), and
    `force_stop()` only closes the socket to the server, which is all a URI connection needs."""
    await client.force_stop()


async def _reply(session: Any, prompt: str) -> str:
    event = await session.send_and_wait(prompt, timeout=timescale.scaled(60))
    assert event is not None, f"no reply to {prompt!r}"
    return str(event.data.content)


async def create_session(address: str, token: str | None, target: Target, prompt: str) -> tuple[str, str]:
    """Create a session on one server, send one prompt, disconnect. Returns (session id, reply)."""
    from copilot.session import PermissionHandler

    assert target.provider is not None
    client = _client(address, token)
    await client.start()
    try:
        session = await client.create_session(provider=target.provider.to_sdk(), model=target.model,
                                              on_permission_request=PermissionHandler.approve_all)
        reply = await _reply(session, prompt)
        await session.disconnect()
        return session.session_id, reply
    finally:
        await _close(client)


async def resume_session(address: str, token: str | None, target: Target, session_id: str, prompt: str,
                         delete: bool = False) -> str:
    """Resume a session on a server (re-supplying the provider, which the CLI does not store), send, disconnect,
    and delete it if asked."""
    from copilot.session import PermissionHandler

    assert target.provider is not None
    client = _client(address, token)
    await client.start()
    try:
        session = await client.resume_session(session_id, provider=target.provider.to_sdk(),
                                              on_permission_request=PermissionHandler.approve_all)
        reply = await _reply(session, prompt)
        await session.disconnect()
        if delete:
            await client.delete_session(session_id)
        return reply
    finally:
        await _close(client)


async def delete_session(address: str, token: str | None, session_id: str) -> None:
    client = _client(address, token)
    await client.start()
    try:
        await client.delete_session(session_id)
    finally:
        await _close(client)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
