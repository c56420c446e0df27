"""Reading the user turns out of OpenAI request bodies (Chat Completions and Responses).

System, developer, assistant and tool messages, tool definitions and `instructions` are ignored on purpose:
the answer must depend only on what the user said, so a resumed session proves its history by its user turns.
The Copilot CLI prefixes each prompt with context blocks such as `<current_datetime>...</current_datetime>`;
leading `<tag>...</tag>` blocks are removed so answers do not change with the clock.
"""

from __future__ import annotations

import re
from typing import Any

from copilot_fleet.errors import FleetError

_LEADING_BLOCK = re.compile(r"\s*<([A-Za-z][A-Za-z0-9_-]*)>.*?</\1>\s*", re.DOTALL)


class RequestError(FleetError, ValueError):
    """A request body the test model cannot use; the message names the field and what is allowed."""


def _text_of(content: Any, where: str) -> str:
    """The text of a message `content`: a string, or a list of parts whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                # "text" (chat), "input_text"/"output_text" (responses); images and files carry no text.
                texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"{where}: content must be a string or a list of content parts, got {type(content).__name__}")


def strip_context(text: str) -> str:
    """The prompt without the `<tag>...</tag>` context blocks a client put in front of it."""
    while match := _LEADING_BLOCK.match(text):
        text = text[match.end():]
    return text.strip()


def chat_user_turns(body: dict[str, Any]) -> list[str]:
    """User messages of a Chat Completions request, in order."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestError("'messages' is required and must be a list of {role, content} objects")
    turns: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string 'role'")
        if message["role"] == "user":
            turns.append(strip_context(_text_of(message.get("content"), f"messages[{i}]")))
    return turns


def responses_user_turns(body: dict[str, Any]) -> list[str]:
    """User messages of a Responses request (`input` as a string or a list of items), in order."""
    items = body.get("input")
    if isinstance(items, str):
        return [strip_context(items)]
    if not isinstance(items, list):
        raise RequestError("'input' is required and must be a string or a list of input items")
    turns: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"input[{i}] must be an object")
        # Messages have a role (type "message" or no type); function calls, outputs and reasoning do not count.
        if item.get("role") == "user" and item.get("type", "message") == "message":
            turns.append(strip_context(_text_of(item.get("content"), f"input[{i}]")))
    return turns
