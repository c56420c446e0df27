"""The tool side of a request: which shell tool the client offers, and the tool results it sent back.

The `run:` command makes the test model answer like a prompt-injected model: with a call to the client's shell
tool. The Copilot CLI offers its tools in every request (`tools`), in two shapes: Chat Completions wraps each one
(`{"type": "function", "function": {"name", "parameters"}}`), Responses does not (`{"type": "function", "name",
"parameters"}`). Once the CLI has run the tool it sends the whole conversation again with the result after the
last user message: a `{"role": "tool", "content"}` message (Chat Completions) or a `{"type":
"function_call_output", "output"}` item (Responses). That result is what the second answer repeats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Names of shell tools, most preferred first. CLI 1.0.102 on Linux offers `bash` (`command`, `description`).
SHELL_TOOL_NAMES = ("bash", "shell", "powershell")


@dataclass(frozen=True)
class ShellTool:
    """A tool that runs a command line: its name and the properties of its argument schema."""

    name: str
    properties: frozenset[str]

    def arguments(self, command: str) -> str:
        """The JSON arguments of a call running `command`, with only the properties the schema declares."""
        args: dict[str, Any] = {"command": command}
        if "description" in self.properties:
            args["description"] = "copilot-fleet test model run: command"
        return json.dumps(args)


def _definition(tool: Any) -> tuple[str, dict[str, Any]] | None:
    """(name, parameters) of one entry of `tools`, in either wire shape; None for other kinds of tools."""
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        return None
    function = tool.get("function")
    spec: dict[str, Any] = function if isinstance(function, dict) else tool
    name, params = spec.get("name"), spec.get("parameters")
    if not isinstance(name, str):
        return None
    return name, params if isinstance(params, dict) else {}


def shell_tool(body: dict[str, Any]) -> ShellTool | None:
    """The shell tool among the request's `tools`: a known shell name taking a string `command`."""
    offered: dict[str, ShellTool] = {}
    for tool in body.get("tools") or []:
        found = _definition(tool)
        if found is None:
            continue
        name, params = found
        declared = params.get("properties")
        properties: dict[str, Any] = declared if isinstance(declared, dict) else {}
        command = properties.get("command")
        if isinstance(command, dict) and command.get("type") == "string":
            offered[name] = ShellTool(name, frozenset(properties))
    return next((offered[n] for n in SHELL_TOOL_NAMES if n in offered), None)


def _output_text(value: Any) -> str:
    """A tool result's content: a string, or a list of parts whose text parts are joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if value is None else json.dumps(value)


def _after_last_user(items: list[Any], is_user: Any) -> list[Any]:
    last = max((i for i, item in enumerate(items) if isinstance(item, dict) and is_user(item)), default=-1)
    return [item for item in items[last + 1:] if isinstance(item, dict)]


def chat_tool_results(body: dict[str, Any]) -> list[str]:
    """Tool results a Chat Completions request carries after its last user message, in order."""
    found = body.get("messages")
    messages: list[Any] = found if isinstance(found, list) else []
    later = _after_last_user(messages, lambda m: m.get("role") == "user")
    return [_output_text(m.get("content")) for m in later if m.get("role") == "tool"]


def responses_tool_results(body: dict[str, Any]) -> list[str]:
    """Tool results a Responses request carries after its last user message, in order."""
    found = body.get("input")
    items: list[Any] = found if isinstance(found, list) else []
    later = _after_last_user(items, lambda i: i.get("role") == "user" and i.get("type", "message") == "message")
    return [_output_text(i.get("output")) for i in later if i.get("type") == "function_call_output"]
