"""Which tool calls a session may run, and which session options a caller may pass: the fleet client's defaults.

A session's model decides which tools the CLI runs (a shell command, a file write, a URL fetch, an MCP tool), and
a model can be talked into anything by what it reads: a tool run is untrusted code. Before it runs one, the CLI
asks the client that attached the session (the SDK's `on_permission_request`). Measured with CLI 1.0.102 and
SDK 1.0.25 (the test model's `run:` command):

- a shell call arrives as `PermissionRequestShell` (`kind` "shell") with `full_command_text`, `commands`,
  `command_segments`, `intention` and `tool_call_id`;
- a `PermissionDecisionReject(feedback=...)` runs nothing: the model gets "The user rejected this tool call. User
  feedback: ..." as the tool's result, the session's `tool.execution_complete` event has `success: False` and
  error code "denied", and the turn ends normally;
- with no handler at all the CLI denies too ("Permission denied and could not request permission from user");
- server flags (`--deny-tool`, `--available-tools`, `--excluded-tools`) do not bind sessions created over the SDK:
  this decision is the client's alone.

So every FleetClient session gets a policy, and the default, `deny_all`, refuses every request. An application
that wants tool runs says which: `allow_kinds("read")`, its own handler, or `approve_all` (every tool call of every
session runs, with the CLI server's user and network: see docs/security.md before choosing it).

Some session options make the CLI start processes or load code and configuration from the server's file system:
`mcp_servers` (measured: the entry's command runs on the CLI's host after the session's first turn, whatever the
server's flags), and, by the SDK's documentation, MCP servers inside `custom_agents`, file hooks, plugins, and
configuration found in directories. The fleet client refuses them unless the FleetClient was made with
`allow_options={...}` naming them. (A holder of the connection token can still send them with a raw SDK client:
the token itself is a command-execution credential.)
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from copilot import PermissionHandler
from copilot.generated.rpc import PermissionDecisionApproveOnce, PermissionDecisionReject
from copilot.generated.session_events import PermissionRequest

from .options import InvalidSessionOption

DENIED_FEEDBACK = ("tool calls are not allowed in this application (copilot-fleet's default permission policy; "
                   "the application can allow them with FleetClient(on_permission_request=...))")

# Every kind of permission request the pinned SDK knows: "shell", "write", "read", "mcp", "url", "memory",
# "custom-tool", "hook", ... (each request class carries its kind).
REQUEST_KINDS = frozenset(str(cls.kind) for cls in typing.get_args(PermissionRequest))

# Options that start processes on the CLI's host or load code and configuration from its file system.
SERVER_EXECUTION_OPTIONS = frozenset({
    "mcp_servers",  # measured: the command runs on the host
    "custom_agents",  # agents may declare MCP servers
    "enable_file_hooks", "hook_directories",  # hook files run shell commands
    "plugin_directories", "agent_directories", "skill_directories", "instruction_directories",
    "config_directory", "enable_config_discovery", "trust_working_directory",  # load MCP servers and hooks found
})

PermissionPolicy = Callable[[Any, Any], Any]


def deny_all(request: Any, invocation: Any) -> PermissionDecisionReject:
    """The default policy: refuse every tool call, telling the model why."""
    return PermissionDecisionReject(feedback=DENIED_FEEDBACK)


def allow_kinds(*kinds: str) -> PermissionPolicy:
    """A policy that approves requests of the given kinds (e.g. "read") once each and refuses every other."""
    unknown = sorted(set(kinds) - REQUEST_KINDS)
    if unknown or not kinds:
        raise ValueError(f"allow_kinds needs request kinds out of {sorted(REQUEST_KINDS)}, got {list(kinds)}")
    allowed = frozenset(kinds)

    def policy(request: Any, invocation: Any) -> PermissionDecisionApproveOnce | PermissionDecisionReject:
        if getattr(request, "kind", None) in allowed:
            return PermissionDecisionApproveOnce()
        return PermissionDecisionReject(feedback=f"{getattr(request, 'kind', 'this')} tool calls are not allowed "
                                                 f"in this application (allowed: {', '.join(sorted(allowed))})")

    policy.__qualname__ = policy.__name__ = f"allow_kinds({', '.join(sorted(allowed))})"
    return policy


# Every tool call of every session runs: only for an application that trusts its models and what they read.
approve_all: PermissionPolicy = PermissionHandler.approve_all


def check_session_options(options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse server-execution options the FleetClient was not made to allow; nothing is sent."""
    refused = sorted(k for k in options if k in SERVER_EXECUTION_OPTIONS and options[k] is not None
                     and k not in set(allowed))
    if refused:
        raise UnsafeSessionOption(
            f"{', '.join(refused)}: makes the CLI server start processes or load code from its own file system, "
            f"as the server's user; refused by default. Allow it explicitly with FleetClient(..., "
            f"allow_options={{{', '.join(repr(k) for k in refused)}}}) if this application needs it")


class UnsafeSessionOption(InvalidSessionOption):
    """A session option that runs or loads code on the CLI's host, not allowed for this FleetClient; nothing was
    sent."""
