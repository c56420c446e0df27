"""One definition of the isolation patterns and of which share state (copilot_fleet/isolation.py): the spec, the
target and the topology all follow it."""

from __future__ import annotations

from typing import get_args

from copilot_fleet.isolation import ISOLATIONS, shares_session_state
from copilot_fleet.spec import FleetSpec, RawConfig, load_spec
from copilot_fleet.target import Target
from copilot_fleet.topology import build_topology


def spec_of(**values: object) -> FleetSpec:
    return load_spec(RawConfig(values=values, stack="t"))


def test_one_definition_of_the_patterns_and_of_which_share_state() -> None:
    """The spec, the target and the topology take the pattern names and the shared-state rule from one place."""
    assert ISOLATIONS == ("per-user", "shared-cli", "shared-session")
    assert get_args(FleetSpec.model_fields["isolation"].annotation) == ISOLATIONS
    assert get_args(Target.model_fields["isolation"].annotation) == ISOLATIONS
    for isolation in ISOLATIONS:
        users = [{"id": "alice"}] if isolation == "per-user" else []
        spec = spec_of(isolation=isolation, platform="local", **({"users": users} if users else {}))
        topology = build_topology(spec)
        shared = shares_session_state(isolation)
        assert spec.shares_session_state == topology.shares_session_state == shared
        assert (topology.lease_store is not None) == shared  # a lease per session wherever session-state is shared
    assert not shares_session_state("no-such-pattern")
