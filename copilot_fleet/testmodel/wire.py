"""OpenAI wire shapes: Chat Completions objects and chunks, Responses objects and stream events.

Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk, response, and the Responses
streaming events with `sequence_number`). An answer is plain assistant text, or (the `run:` command) one call of a
function tool: `tool_calls` with finish_reason "tool_calls" (Chat Completions), a `function_call` output item
(Responses).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Token counts: a rough 4-characters-per-token estimate, plausible enough for accounting code."""

    prompt_tokens: int
    completion_tokens: int

    @staticmethod
    def estimate(prompt_chars: int, completion: str) -> Usage:
        return Usage(max(1, prompt_chars // 4), max(1, (len(completion) + 3) // 4))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def chat(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def responses(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.total_tokens,
        }


def text_pieces(text: str) -> list[str]:
    """Split text into word-sized deltas (each keeps its trailing whitespace) so streams have several chunks."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


@dataclass(frozen=True)
class ToolCall:
    """One call of a function tool: its name and its arguments as a JSON string."""

    name: str
    arguments: str


@dataclass
class Completion:
    """One answer about to be sent, with the ids and timestamps every shape shares."""

    model: str
    text: str
    usage: Usage
    tool_call: ToolCall | None = None  # set: the answer is this call, and `text` is not sent
    created: int = field(default_factory=lambda: int(time.time()))
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:24])

    @property
    def _call_id(self) -> str:
        return f"call_{self.suffix}"

    @property
    def _finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"

    # ---- Chat Completions ----------------------------------------------------------------------------------

    def _chat_message(self) -> dict[str, Any]:
        if self.tool_call is None:
            return {"role": "assistant", "content": self.text, "refusal": None}
        call = {"id": self._call_id, "type": "function",
                "function": {"name": self.tool_call.name, "arguments": self.tool_call.arguments}}
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}

    def chat_completion(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.suffix}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_copilot_fleet_test",
            "choices": [
                {
                    "index": 0,
                    "message": self._chat_message(),
                    "logprobs": None,
                    "finish_reason": self._finish_reason,
                }
            ],
            "usage": self.usage.chat(),
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.suffix}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_copilot_fleet_test",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def chat_stream(self, include_usage: bool) -> Iterator[bytes]:
        """SSE chunks: role, content pieces (or the tool call, its arguments in pieces), the finish reason, the
        usage chunk if asked, then [DONE]."""
        if self.tool_call is None:
            yield sse(self._chunk({"role": "assistant", "content": ""}, None))
            for piece in text_pieces(self.text):
                yield sse(self._chunk({"content": piece}, None))
        else:
            head = {"index": 0, "id": self._call_id, "type": "function",
                    "function": {"name": self.tool_call.name, "arguments": ""}}
            yield sse(self._chunk({"role": "assistant", "content": None, "tool_calls": [head]}, None))
            for piece in text_pieces(self.tool_call.arguments):
                yield sse(self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None))
        yield sse(self._chunk({}, self._finish_reason))
        if include_usage:
            final = self._chunk({}, None)
            final["choices"] = []
            final["usage"] = self.usage.chat()
            yield sse(final)
        yield sse("[DONE]")

    # ---- Responses -----------------------------------------------------------------------------------------

    @property
    def _message_id(self) -> str:
        return f"msg_{self.suffix}"

    @property
    def _item_id(self) -> str:
        return f"fc_{self.suffix}" if self.tool_call else self._message_id

    def _function_call(self, status: str, arguments: str) -> dict[str, Any]:
        assert self.tool_call is not None
        return {"id": self._item_id, "type": "function_call", "status": status, "call_id": self._call_id,
                "name": self.tool_call.name, "arguments": arguments}

    def _output_item(self, status: str) -> dict[str, Any]:
        """The one output item, finished: the message, or the function call."""
        if self.tool_call is None:
            return self._message(status, self.text)
        return self._function_call(status, self.tool_call.arguments)

    def _message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"id": self._message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def response(self, request: dict[str, Any], status: str = "completed") -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": f"resp_{self.suffix}",
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self.model,
            "output": [self._output_item("completed")] if done else [],
            "output_text": self.text if done and self.tool_call is None else "",
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": [],  # the request's tools are never used; echoing 17 schemas back is pointless
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage.responses() if done else None,
            "user": None,
            "metadata": {},
        }

    def responses_stream(self, request: dict[str, Any]) -> Iterator[bytes]:
        """The Responses event sequence for one text message or one function call, each with a growing
        sequence_number."""
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            out = sse({"type": kind, "sequence_number": seq, **fields}, event=kind)
            seq += 1
            return out

        yield event("response.created", response=self.response(request, "in_progress"))
        yield event("response.in_progress", response=self.response(request, "in_progress"))
        if self.tool_call is not None:
            call = {"item_id": self._item_id, "output_index": 0}
            yield event("response.output_item.added", output_index=0, item=self._function_call("in_progress", ""))
            for piece in text_pieces(self.tool_call.arguments):
                yield event("response.function_call_arguments.delta", **call, delta=piece)
            yield event("response.function_call_arguments.done", **call, arguments=self.tool_call.arguments)
            yield event("response.output_item.done", output_index=0, item=self._output_item("completed"))
            yield event("response.completed", response=self.response(request, "completed"))
            return
        where = {"item_id": self._message_id, "output_index": 0, "content_index": 0}
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        full_part = {**empty_part, "text": self.text}
        yield event("response.output_item.added", output_index=0, item=self._message("in_progress", None))
        yield event("response.content_part.added", **where, part=empty_part)
        for piece in text_pieces(self.text):
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        yield event("response.output_text.done", **where, text=self.text, logprobs=[])
        yield event("response.content_part.done", **where, part=full_part)
        yield event("response.output_item.done", output_index=0, item=self._message("completed", self.text))
        yield event("response.completed", response=self.response(request, "completed"))
