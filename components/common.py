"""What every platform's components share: the generated connection tokens and the addresses a fleet hands back.

`program.run()` creates the `ConnectionTokens` before it dispatches on the platform, so the Kubernetes and the
Azure components receive the same tokens and the target exports them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_random as random

from copilot_fleet.topology import CliGroup, Topology

# 48 alphanumeric characters: about 285 bits, and no character a shell, a URL or an env file would mangle.
TOKEN_LENGTH = 48


class ConnectionTokens(pulumi.ComponentResource):
    """One generated `COPILOT_CONNECTION_TOKEN` per CLI group: "fleet" for the shared replicas, one per user for
    `per-user` (a token opens one user's server and no other)."""

    by_key: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, topology: Topology, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:common:ConnectionTokens", name, None, opts)
        self.by_key = {}
        for group in topology.groups:
            password = random.RandomPassword(
                f"{group.name}-connection-token",
                length=TOKEN_LENGTH,
                special=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            # RandomPassword.result is secret in the engine; say so here too, so mocks and renders treat it alike.
            self.by_key[group.token_key] = pulumi.Output.secret(password.result)
        self.register_outputs({})

    def for_group(self, group: CliGroup) -> pulumi.Output[str]:
        return self.by_key[group.token_key]


@dataclass(frozen=True)
class FleetEndpoints:
    """Where a deployed fleet answers: what a platform returns to `program.run()` for the target.

    Addresses are `host:port`. `endpoint` is the load-balanced entry (None for `per-user`), `replicas` the direct
    per-replica addresses, `users` each user's own server (`per-user` only), `redis_url` the lease store (a secret;
    None when the pattern has no lease store), `session_state` what a client needs in store mode.
    """

    endpoint: pulumi.Input[str] | None = None
    replicas: list[pulumi.Input[str]] = field(default_factory=list)
    users: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    redis_url: pulumi.Input[str] | None = None
    # Store mode: the target's `session_state` (docs/target.md): scopes and each server's id; None in volume mode.
    session_state: Mapping[str, Any] | None = None


def child_options(parent: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it (so they inherit its provider) and waiting for what the
    component was told to wait for (Pulumi does not pass a component's depends_on on to its children)."""
    given: Any = opts.depends_on if opts is not None else None
    depends_on: list[Any] = list(given) if isinstance(given, list | tuple) else ([given] if given else [])
    return pulumi.ResourceOptions(parent=parent, depends_on=depends_on or None)
