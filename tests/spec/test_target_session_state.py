"""The target's session_state: old targets mean volume mode, store targets name scopes and server ids."""

from __future__ import annotations

import json

import pytest

from copilot_fleet.target import TargetError, parse_target

SHARED = {"stack": "s", "platform": "local", "isolation": "shared-cli", "endpoint": "127.0.0.1:4323",
          "replicas": ["127.0.0.1:4431", "127.0.0.1:4432"]}
PER_USER = {"stack": "p", "platform": "local", "isolation": "per-user",
            "users": {"alice": "127.0.0.1:4451", "bob-smith": "127.0.0.1:4452"}}


def test_a_target_without_session_state_is_volume_mode_and_keeps_its_shape() -> None:
    target = parse_target(json.dumps(SHARED))
    assert target.session_state.mode == "volume" and not target.store_mode
    assert "session_state" not in target.to_json_dict()


def test_a_store_target_round_trips_and_says_where_to_bind() -> None:
    doc = {**SHARED, "session_state": {"mode": "store", "server_ids": {"127.0.0.1:4432": "replica-1"}}}
    target = parse_target(json.dumps(doc))
    assert target.store_mode
    assert target.store_scope(None) == "shared"
    assert target.server_id("127.0.0.1:4431") == "127.0.0.1:4431"  # default: the address itself
    assert target.server_id("127.0.0.1:4432") == "replica-1"
    assert target.server_id("127.0.0.1:4323") == "*"  # through the load balancer: whichever replica writes first
    again = parse_target(json.dumps(target.to_json_dict()))
    assert again.session_state == target.session_state


def test_per_user_scopes_default_to_the_user_and_unknown_users_have_none() -> None:
    target = parse_target(json.dumps({**PER_USER, "session_state": {"mode": "store",
                                                                      "user_scopes": {"alice": "a1"}}}))
    assert target.store_scope("alice") == "a1"
    assert target.store_scope("bob-smith") == "bob-smith"
    with pytest.raises(KeyError, match="mallory"):
        target.store_scope("mallory")


@pytest.mark.parametrize(("state", "words"), [
    ({"mode": "disk"}, "session_state.mode"),
    ({"mode": "store", "server_ids": {"not-an-address": "x"}}, "is not host:port"),
    ({"mode": "store", "scope": "x"}, "session_state.scope"),
])
def test_a_bad_session_state_names_the_field(state: dict[str, object], words: str) -> None:
    with pytest.raises(TargetError, match=words):
        parse_target(json.dumps({**SHARED, "session_state": state}))
