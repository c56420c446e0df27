"""The fleet client's defaults for what a session may run: no tool call without a policy, no option that starts
processes on the server unless allowed. Pure: the target's server does not exist, so any refusal here happened
before a connection was tried (the real CLI denying a tool call is in test_client_fleet_cli.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from copilot.generated.rpc import PermissionDecisionApproveOnce, PermissionDecisionReject

from copilot_fleet.client import FleetClient, ReplicaUnavailable, UnsafeSessionOption, allow_kinds, deny_all
from copilot_fleet.client.permissions import DENIED_FEEDBACK, REQUEST_KINDS, SERVER_EXECUTION_OPTIONS
from copilot_fleet.pod.ports import free_port
from copilot_fleet.target import Target

pytestmark = pytest.mark.anyio
SHELL = SimpleNamespace(kind="shell", full_command_text="cat /etc/passwd")
READ = SimpleNamespace(kind="read", path="/tmp/x")


def nowhere() -> Target:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    return Target.model_validate({"stack": "t", "platform": "local", "isolation": "per-user",
                                  "users": {"alice": address}, "user_tokens": {"alice": "tok"}})


def test_deny_all_refuses_and_tells_the_model_why() -> None:
    decision = deny_all(SHELL, {})
    assert isinstance(decision, PermissionDecisionReject) and decision.feedback == DENIED_FEEDBACK


def test_allow_kinds_approves_only_those_kinds() -> None:
    reads = allow_kinds("read")
    assert isinstance(reads(READ, {}), PermissionDecisionApproveOnce)
    refused = reads(SHELL, {})
    assert isinstance(refused, PermissionDecisionReject) and "shell" in (refused.feedback or "")
    assert {"shell", "write", "read", "mcp", "url"} <= REQUEST_KINDS
    with pytest.raises(ValueError, match="request kinds"):
        allow_kinds("shel")
    with pytest.raises(ValueError, match="request kinds"):
        allow_kinds()


def test_the_default_policy_is_deny_all() -> None:
    assert FleetClient(nowhere(), user="alice")._on_permission_request is deny_all


@pytest.mark.parametrize("option", sorted(SERVER_EXECUTION_OPTIONS))
async def test_server_execution_options_are_refused_before_any_connection(option: str) -> None:
    value: Any = {"probe": {"type": "local", "command": "sh", "args": ["-c", "id"], "tools": ["*"]}}
    async with FleetClient(nowhere(), user="alice", connect_timeout=0.5) as fleet:
        with pytest.raises(UnsafeSessionOption, match=option) as refused:
            await fleet.create_session("p", **{option: value})
        assert "allow_options" in str(refused.value)
        with pytest.raises(UnsafeSessionOption):
            await fleet.create_ephemeral_session(**{option: value})
        with pytest.raises(UnsafeSessionOption):
            await fleet.resume_session("u-5-alice-p-1795280000-0badcafe", **{option: value})
        # None is what the SDK's own default is: nothing to refuse.
        with pytest.raises(ReplicaUnavailable):
            await fleet.create_session("p", **{option: None})


async def test_allowed_options_pass_through() -> None:
    async with FleetClient(nowhere(), user="alice", allow_options={"mcp_servers"}, connect_timeout=0.5) as fleet:
        with pytest.raises(ReplicaUnavailable):  # past the check: the (missing) server is tried
            await fleet.create_session("p", mcp_servers={"m": {"command": "true", "tools": []}})
        with pytest.raises(UnsafeSessionOption, match="custom_agents"):
            await fleet.create_session("p", custom_agents=[{"name": "x"}])


def test_allow_options_names_only_options_that_need_it() -> None:
    with pytest.raises(ValueError, match="need no allowing"):
        FleetClient(nowhere(), user="alice", allow_options={"streaming"})
