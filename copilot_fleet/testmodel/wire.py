"""OpenAI wire shapes: Chat Completions objects and chunks, Responses objects and stream events.

Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk, response, and the Responses
streaming events with `sequence_number`). Only plain assistant text is ever produced: no tool calls.
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


@dataclass
class Completion:
    """One answer about to be sent, with the ids and timestamps every shape shares."""

    model: str
    text: str
    usage: Usage
    created: int = field(default_factory=lambda: int(time.time()))
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:24])

    # ---- Chat Completions ----------------------------------------------------------------------------------

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
                    "message": {"role": "assistant", "content": self.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
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
        """SSE chunks: role, content pieces, finish_reason "stop", the usage chunk if asked, then [DONE]."""
        yield sse(self._chunk({"role": "assistant", "content": ""}, None))
        for piece in text_pieces(self.text):
            yield sse(self._chunk({"content": piece}, None))
        yield sse(self._chunk({}, "stop"))
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
            "output": [self._message("completed", self.text)] if done else [],
            "output_text": self.text if done else "",
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
        """The Responses event sequence for one text message, each with a growing sequence_number."""
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            out = sse({"type": kind, "sequence_number": seq, **fields}, event=kind)
            seq += 1
            return out

        where = {"item_id": self._message_id, "output_index": 0, "content_index": 0}
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        full_part = {**empty_part, "text": self.text}
        yield event("response.created", response=self.response(request, "in_progress"))
        yield event("response.in_progress", response=self.response(request, "in_progress"))
        yield event("response.output_item.added", output_index=0, item=self._message("in_progress", None))
        yield event("response.content_part.added", **where, part=empty_part)
        for piece in text_pieces(self.text):
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        yield event("response.output_text.done", **where, text=self.text, logprobs=[])
        yield event("response.content_part.done", **where, part=full_part)
        yield event("response.output_item.done", output_index=0, item=self._message("completed", self.text))
        yield event("response.completed", response=self.response(request, "completed"))
