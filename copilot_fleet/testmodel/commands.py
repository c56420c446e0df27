"""The test model's command language: a deterministic answer from the user turns it received.

Only user messages count (the CLI's system prompt and tool list are ignored). The LAST user message picks the
command; earlier user messages are history that `recall` and `count turns` read. Precedence, first match wins:

  sleep: SECONDS   wait before answering (0 to 30 s, larger values are capped at 30); then the rest applies
  run: COMMAND     (a line starting with it) call the client's shell tool with COMMAND; once the client sends the
                   tool's result back, answer with that result: a prompt-injected model, made deterministic
  echo: TEXT       answer TEXT (the rest of that line)
  remember: WORD   acknowledge storing WORD (WORD: letters, digits, `_`, `-`, `.`; several allowed)
  recall           list every WORD from `remember:` in all user turns received, oldest first
  count turns      the number of user turns received
  anything else    quote the last user message (first 200 characters) and give the user-turn count

Every answer starts with MARKER, so nobody mistakes it for a real model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MARKER = "[copilot-fleet test model]"
MAX_SLEEP_SECONDS = 30.0
QUOTE_LIMIT = 200
RESULT_LIMIT = 16000  # characters of a tool result repeated in the answer

_SLEEP = re.compile(r"\bsleep:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_RUN = re.compile(r"^[ \t]*run:[ \t]*(\S[^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_ECHO = re.compile(r"\becho:[ \t]*([^\r\n]*)", re.IGNORECASE)
_REMEMBER = re.compile(r"\bremember:\s*([A-Za-z0-9_.\-]+)", re.IGNORECASE)
_RECALL = re.compile(r"\brecall\b", re.IGNORECASE)
_COUNT = re.compile(r"\bcount\s+turns\b", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """What to say, and how long to wait before saying it."""

    text: str
    sleep_seconds: float = 0.0
    command: str = "default"
    run: str | None = None  # a command line for the client's shell tool: answer with a tool call, not `text`


def remembered_words(user_turns: list[str]) -> list[str]:
    """Every `remember:` WORD across the turns, in the order received."""
    return [word.rstrip(".") or word for turn in user_turns for word in _REMEMBER.findall(turn)]


def answer(user_turns: list[str], tool_results: Sequence[str] = ()) -> Answer:
    """The deterministic answer to a conversation, given its user messages in order and the tool results sent
    after the last one (the outcome of a tool call this model asked for)."""
    turns = len(user_turns)
    last = user_turns[-1] if user_turns else ""
    sleep = 0.0
    if match := _SLEEP.search(last):
        sleep = min(float(match.group(1)), MAX_SLEEP_SECONDS)

    if match := _RUN.search(last):
        if not tool_results:
            text = f"{MARKER} calling the shell tool: {match.group(1).strip()}"
            return Answer(text, sleep, "run", run=match.group(1).strip())
        output = "\n".join(tool_results)
        if len(output) > RESULT_LIMIT:
            output = output[:RESULT_LIMIT] + "..."
        return Answer(f"{MARKER} ran: {output}", sleep, "ran")

    if match := _ECHO.search(last):
        return Answer(f"{MARKER} {match.group(1).strip()}", sleep, "echo")
    if words := [w.rstrip(".") or w for w in _REMEMBER.findall(last)]:
        return Answer(f"{MARKER} remembered: {', '.join(words)}", sleep, "remember")
    if _RECALL.search(last):
        recalled = remembered_words(user_turns[:-1])
        listed = ", ".join(recalled) if recalled else "(nothing)"
        return Answer(f"{MARKER} recalled: {listed}", sleep, "recall")
    if _COUNT.search(last):
        return Answer(f"{MARKER} user turns: {turns}", sleep, "count")
    if sleep:
        return Answer(f"{MARKER} slept {sleep:g} s; user turns: {turns}", sleep, "sleep")
    quote = " ".join(last.split())
    if len(quote) > QUOTE_LIMIT:
        quote = quote[:QUOTE_LIMIT] + "..."
    return Answer(f'{MARKER} user turn {turns}: you said "{quote}"', sleep, "default")
