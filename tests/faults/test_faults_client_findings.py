"""Defects in the fleet client that the fault runs hit under load, pinned down without a fleet.

Each is xfail(strict=True): it fails today and turns red once fixed (then drop the marker). In the runs they show as
raw SDK errors reaching the application (docs/reliability.md, findings 1 and 3): in the SIGKILL scenario one resume
in 200 failed with `RuntimeError: Failed to connect to CLI server` (a pooled client discarded by a concurrent call,
then auto-restarted by the SDK against the dead replica), and replicas stopped behind HAProxy produced
`JSON-RPC -32000 SERVER_SHUTTING_DOWN` and `ProcessExitedError`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from copilot._jsonrpc import JsonRpcError, ProcessExitedError

from copilot_fleet.client import FleetClientError, FleetSession
from copilot_fleet.client.pool import is_transport_failure


@pytest.mark.xfail(strict=True, reason="client/pool.py is_transport_failure: the SDK's own connect failure "
                   "(RuntimeError 'Failed to connect to CLI server ...') is not failed over")
def test_the_sdks_connect_failure_is_failed_over() -> None:
    exc = RuntimeError("Failed to connect to CLI server at 127.0.0.1:27479: [Errno 111] Connection refused")
    assert is_transport_failure(exc)


@pytest.mark.xfail(strict=True, reason="client/pool.py is_transport_failure: a draining replica's "
                   "SERVER_SHUTTING_DOWN refusal (it did not act on the request) is not failed over")
def test_a_draining_replica_is_failed_over() -> None:
    assert is_transport_failure(JsonRpcError(-32000, "SERVER_SHUTTING_DOWN"))


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


@pytest.mark.xfail(strict=True, reason="client/handle.py FleetSession._guarded passes the SDK's ProcessExitedError "
                   "through untyped when the session's server went away; expected ReplicaUnavailable")
def test_a_dead_server_surfaces_as_a_typed_error() -> None:
    session = FleetSession(sdk=_DeadSdkSession(), client=SimpleNamespace(), address="127.0.0.1:1",  # type: ignore[arg-type]
                           lease=None)
    with pytest.raises(FleetClientError):
        asyncio.run(session.reply("remember: x"))
