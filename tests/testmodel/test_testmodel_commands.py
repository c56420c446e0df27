"""The command language and the reading of user turns, without any server."""

from __future__ import annotations

import pytest

from copilot_fleet.testmodel import MARKER, MAX_SLEEP_SECONDS, answer
from copilot_fleet.testmodel.conversation import (
    RequestError,
    chat_user_turns,
    responses_user_turns,
    strip_context,
)


def test_remember_acknowledges_each_word() -> None:
    reply = answer(["please remember: apple and remember: pear."])
    assert reply.text == f"{MARKER} remembered: apple, pear"
    assert reply.command == "remember"


def test_recall_lists_earlier_words_in_order() -> None:
    turns = ["remember: apple", "hello", "remember: banana", "recall"]
    assert answer(turns).text == f"{MARKER} recalled: apple, banana"


def test_recall_without_history_says_nothing() -> None:
    assert answer(["recall"]).text == f"{MARKER} recalled: (nothing)"


def test_count_turns_counts_user_turns() -> None:
    assert answer(["a", "b", "count turns"]).text == f"{MARKER} user turns: 3"


def test_echo_returns_rest_of_line() -> None:
    assert answer(["echo: Hello,   World!\nsecond line"]).text == f"{MARKER} Hello,   World!"


def test_echo_wins_over_other_commands() -> None:
    assert answer(["echo: recall remember: x"]).command == "echo"


def test_default_quotes_last_message_and_counts() -> None:
    reply = answer(["first", "what  is\nthis?"])
    assert reply.text == f'{MARKER} user turn 2: you said "what is this?"'
    assert reply.sleep_seconds == 0


def test_default_truncates_long_messages() -> None:
    reply = answer(["x" * 500])
    assert reply.text.endswith('x..."') and len(reply.text) < 300


@pytest.mark.parametrize(
    ("prompt", "seconds", "command"),
    [("sleep: 2", 2.0, "sleep"), ("sleep: 0.5 echo: hi", 0.5, "echo"), ("sleep: 999", MAX_SLEEP_SECONDS, "sleep")],
)
def test_sleep_is_bounded_and_combines(prompt: str, seconds: float, command: str) -> None:
    reply = answer([prompt])
    assert reply.sleep_seconds == seconds
    assert reply.command == command
    assert reply.text.startswith(MARKER)


def test_answers_are_deterministic() -> None:
    turns = ["remember: kiwi", "anything at all"]
    assert answer(turns) == answer(list(turns))


def test_strip_context_removes_leading_cli_blocks_only() -> None:
    text = "<current_datetime>2026-11-21T16:05:03.470+00:00</current_datetime>\n\n<x>y</x> recall <b>keep</b>"
    assert strip_context(text) == "recall <b>keep</b>"


def test_chat_turns_ignore_system_assistant_and_tools() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "remember: system-word"},
            {"role": "user", "content": "<current_datetime>t</current_datetime>\n\nremember: apple"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "content": "remember: tool-word", "tool_call_id": "1"},
            {"role": "user", "content": [{"type": "text", "text": "recall"}, {"type": "image_url", "image_url": {}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "remember: no"}}],
    }
    assert chat_user_turns(body) == ["remember: apple", "recall"]


def test_responses_turns_from_items_and_string() -> None:
    body = {
        "instructions": "remember: instructions-word",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "remember: apple"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "remember: no"}]},
            {"type": "function_call_output", "call_id": "c", "output": "remember: no"},
            {"role": "user", "content": "recall"},
        ],
    }
    assert responses_user_turns(body) == ["remember: apple", "recall"]
    assert responses_user_turns({"input": "count turns"}) == ["count turns"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'messages' is required"),
        ({"messages": "hi"}, "'messages' is required"),
        ({"messages": [{"content": "x"}]}, "messages[0] must be an object with a string 'role'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0]: content must be a string or a list"),
    ],
)
def test_chat_bad_bodies_name_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        chat_user_turns(body)


def test_responses_bad_input_names_the_field() -> None:
    with pytest.raises(RequestError, match="'input' is required"):
        responses_user_turns({"input": 3})
    with pytest.raises(RequestError, match=r"input\[0\] must be an object"):
        responses_user_turns({"input": ["x"]})
