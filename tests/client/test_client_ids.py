"""Session ids: unambiguous owner, CLI rules enforced before anything is sent."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime

import pytest

from copilot_fleet.client import (
    MAX_SESSION_ID_LENGTH,
    InvalidSessionId,
    is_fleet_session_id,
    new_session_id,
    parse_session_id,
    shared_session_id,
    validate_session_id,
)

ALLOWED = string.ascii_letters + string.digits + "_-"
CLI_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def test_dashed_user_round_trips_where_a_split_on_dashes_breaks() -> None:
    sid = new_session_id("alice-smith", "code-review", now=1706932800, nonce="0badcafe")
    assert sid == "u-11-alice-smith-code-review-1706932800-0badcafe"
    assert sid.split("-")[0] != "alice-smith"  # what an owner check splitting on '-' would see
    parts = parse_session_id(sid)
    assert (parts.kind, parts.owner, parts.purpose) == ("user", "alice-smith", "code-review")
    assert parts.created_at == datetime(2024, 2, 3, 4, 0, 0, tzinfo=UTC)
    assert parts.nonce == "0badcafe"


def test_user_that_is_a_prefix_of_another_gets_a_different_owner() -> None:
    alice = parse_session_id(new_session_id("alice", "smith-review"))
    alice_smith = parse_session_id(new_session_id("alice-smith", "review"))
    assert alice.owner == "alice" and alice.purpose == "smith-review"
    assert alice_smith.owner == "alice-smith" and alice_smith.purpose == "review"


def test_now_accepts_aware_datetimes_and_rejects_naive_ones() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_session_id(new_session_id("bob", "x", now=when)).created_at == when
    with pytest.raises(InvalidSessionId, match="timezone-aware"):
        new_session_id("bob", "x", now=datetime(2025, 1, 2))


def test_ids_are_unique_within_one_second() -> None:
    ids = {new_session_id("bob", "deploy", now=1_700_000_000) for _ in range(500)}
    assert len(ids) == 500


@pytest.mark.parametrize("char", [".", ":", "/", "@", " ", "é", "\n", "+"])
def test_rejects_characters_the_cli_rejects(char: str) -> None:
    with pytest.raises(InvalidSessionId) as user_err:
        new_session_id(f"al{char}ice", "review")
    message = str(user_err.value)
    assert repr(char) in message and "position 2" in message and "letters, digits, '_' and '-'" in message
    with pytest.raises(InvalidSessionId, match="purpose"):
        new_session_id("alice", f"re{char}view")
    with pytest.raises(InvalidSessionId, match="the CLI allows only"):
        validate_session_id(f"u-5-alice-x{char}y-1-00000000")
    with pytest.raises(InvalidSessionId, match="shared session name"):
        shared_session_id(f"team{char}")


def test_rejects_empty_parts_and_non_strings() -> None:
    with pytest.raises(InvalidSessionId, match="user is empty"):
        new_session_id("", "review")
    with pytest.raises(InvalidSessionId, match="purpose is empty"):
        new_session_id("alice", "")
    with pytest.raises(InvalidSessionId, match="shared session name is empty"):
        shared_session_id("")
    with pytest.raises(InvalidSessionId, match="session id is empty"):
        validate_session_id("")
    with pytest.raises(InvalidSessionId, match="must be a string"):
        validate_session_id(42)


def test_length_limit_is_enforced_with_the_budget_named() -> None:
    assert validate_session_id("a" * MAX_SESSION_ID_LENGTH)
    with pytest.raises(InvalidSessionId, match="129 characters long; at most 128"):
        validate_session_id("a" * 129)
    user = "u" * 40
    overhead = len(new_session_id(user, "p", now=1_700_000_000)) - len(user) - 1  # "u-40-" "-" ts "-" nonce
    budget = MAX_SESSION_ID_LENGTH - overhead
    fits = new_session_id(user, "p" * (budget - len(user)), now=1_700_000_000)
    assert len(fits) == MAX_SESSION_ID_LENGTH
    with pytest.raises(InvalidSessionId, match=f"may total at most {budget}"):
        new_session_id(user, "p" * (budget - len(user) + 1), now=1_700_000_000)
    with pytest.raises(InvalidSessionId, match="at most 126"):
        shared_session_id("n" * 127)


@pytest.mark.parametrize(
    "sid",
    [
        "alice-code-review-1706932800",  # {user}-{task}-{timestamp}
        "3f2b8c1e-0d6a-4a8e-9a3c-2a1d5b7c9e10",  # a CLI-generated UUID
        "u-5-alice-review-1706932800",  # no nonce
        "u-6-alice-review-1706932800-0badcafe",  # length does not match the owner
        "u-0--review-1-0badcafe",  # empty owner
        "u-05-alice-review-1-0badcafe",  # non-canonical length
        "u-5-alice--1-0badcafe",  # empty purpose
        "u-5-alice-review-x1-0badcafe",  # timestamp not digits
        "u-5-alice-review-1-0BADCAFE",  # nonce not lowercase hex
        "u-99-alice-review-1-0badcafe",  # length longer than the rest
        "s-",  # empty shared name
    ],
)
def test_parse_rejects_ids_that_are_not_fleet_ids(sid: str) -> None:
    with pytest.raises(InvalidSessionId):
        parse_session_id(sid)
    assert not is_fleet_session_id(sid)


def test_shared_ids_round_trip() -> None:
    parts = parse_session_id(shared_session_id("team-project_review"))
    assert (parts.kind, parts.name, parts.owner, parts.created_at) == ("shared", "team-project_review", None, None)


def test_property_many_generated_ids_round_trip_and_obey_cli_rules() -> None:
    rng = random.Random(20261121)
    for _ in range(3000):
        user = "".join(rng.choice(ALLOWED) for _ in range(rng.randint(1, 30)))
        purpose = "".join(rng.choice(ALLOWED) for _ in range(rng.randint(1, 40)))
        ts = rng.randint(0, 4_000_000_000)
        sid = new_session_id(user, purpose, now=ts)
        assert CLI_ID_RE.fullmatch(sid), sid
        parts = parse_session_id(sid)
        assert parts.created_at is not None, sid
        assert (parts.owner, parts.purpose, int(parts.created_at.timestamp())) == (user, purpose, ts), sid
        # Any other user's id never parses to this owner.
        other = user + rng.choice(ALLOWED)
        assert parse_session_id(new_session_id(other, purpose, now=ts)).owner == other
