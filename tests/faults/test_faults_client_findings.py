"""Defects in the fleet client that the fault runs hit under load, pinned down without a fleet (all fixed now).

In the runs they showed as raw SDK errors reaching the application (docs/reliability.md, findings 1 and 3): in the
SIGKILL scenario one resume in 200 failed with `RuntimeError: Failed to connect to CLI server` (a pooled client
discarded by a concurrent call, then auto-restarted by the SDK against the dead replica), and replicas stopped behind
HAProxy produced `JSON-RPC -32000 SERVER_SHUTTING_DOWN` and `ProcessExitedError`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from copilot._jsonrpc import JsonRpcError, ProcessExitedError

from copilot_fleet.client import FleetSession, SessionDisconnected
from copilot_fleet.client.pool import is_transport_failure


def test_the_sdks_connect_failure_is_failed_over() -> None:
    exc = RuntimeError("Failed to connect to CLI server at 127.0.0.1:27479: [Errno 111] Connection refused")
    assert is_transport_failure(exc)


def test_a_draining_replica_is_failed_over() -> None:
    assert is_transport_failure(JsonRpcError(-32000, "SERVER_SHUTTING_DOWN"))
    # The same refusal from a draining CLI whose OpenTelemetry exporter is on (seen in the flapping scenario).
    assert is_transport_failure(JsonRpcError(
        -32603, "Request session.resume failed with message: OpenTelemetry session policy is unavailable"))
    assert not is_transport_failure(JsonRpcError(-32603, "Request session.resume failed with message: boom"))


def test_a_timeout_is_still_not_failed_over() -> None:
    """The control: a slow server may still act, so a timeout must never be repeated elsewhere."""
    assert not is_transport_failure(TimeoutError("slow"))
    assert is_transport_failure(ProcessExitedError("CLI process exited unexpectedly"))


class _DeadSdkSession:
    session_id = "u-5-alice-dead-1795280000-0badcafe"

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        raise ProcessExitedError("CLI process exited unexpectedly")

    async def disconnect(self) -> None:
        raise ProcessExitedError("CLI process exited unexpectedly")


def test_a_dead_server_surfaces_as_a_typed_error() -> None:
    session = FleetSession(sdk=_DeadSdkSession(), client=SimpleNamespace(), address="127.0.0.1:1",  # type: ignore[arg-type]
                           lease=None)
    with pytest.raises(SessionDisconnected) as err:  # a ReplicaUnavailable, so a FleetClientError
        asyncio.run(session.reply("remember: x"))
    message = str(err.value)
    assert "127.0.0.1:1" in message and _DeadSdkSession.session_id in message and "resume" in message
    assert isinstance(err.value.__cause__, ProcessExitedError)
