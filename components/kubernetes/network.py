"""NetworkPolicies: nothing reaches a fleet pod unless a policy below lets it.

- default deny: every pod of the fleet (CLI servers, Redis, janitors) refuses all ingress;
- CLI port: only from client pods (`fleet:clientSelector`); in `per-user`, a user's server only from client pods
  that also carry `copilot-fleet/user: <id>`, so no user's pods reach another user's server, and from the pods
  of a trusted backend that serves every user (`fleet:backendSelector`), when one is named;
- Redis: only from the client pods (the fleet client takes the leases) and the janitor pods (the janitor takes a
  session's lease before it deletes the session); not from the CLI pods, which never use it.

Clients in other namespaces are admitted when `client_namespace_selector` is given (namespaceSelector AND
podSelector in one peer); without it only client pods in the fleet's namespace match. `source_ranges` (CIDRs) admit
traffic from outside the cluster through a LoadBalancer or NodePort Service.
Egress is not restricted: the servers must reach GitHub or the model provider and the OTLP collector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes.networking.v1 as networking

from components.kubernetes.meta import (
    CLI,
    DEFAULT_DENY_POLICY,
    JANITOR,
    LEASE_STORE,
    REDIS,
    REDIS_PORT,
    USER_LABEL,
    FleetMeta,
)
from copilot_fleet.topology import CliGroup


@dataclass(frozen=True)
class ClientPeers:
    """Who counts as a client of the fleet. `backend_selector` (per-user): a trusted backend's pods, which serve
    every user and so may reach every user's server."""

    pod_selector: Mapping[str, str]
    namespace_selector: Mapping[str, str] | None = None
    source_ranges: Sequence[str] = field(default_factory=tuple)
    backend_selector: Mapping[str, str] | None = None

    def _pods(self, labels: Mapping[str, str]) -> dict[str, Any]:
        peer: dict[str, Any] = {"pod_selector": {"match_labels": dict(labels)}}
        if self.namespace_selector is not None:
            peer["namespace_selector"] = {"match_labels": dict(self.namespace_selector)}
        return peer

    def peers(self, user: str | None = None) -> list[dict[str, Any]]:
        labels = dict(self.pod_selector)
        if user is not None:
            labels[USER_LABEL] = user
        pods = [self._pods(labels)]
        if user is not None and self.backend_selector:
            pods.append(self._pods(self.backend_selector))
        return [*pods, *({"ip_block": {"cidr": cidr}} for cidr in self.source_ranges)]


def default_deny(meta: FleetMeta, opts: pulumi.ResourceOptions) -> networking.NetworkPolicy:
    return networking.NetworkPolicy(
        DEFAULT_DENY_POLICY,
        metadata=meta.metadata(DEFAULT_DENY_POLICY),
        spec={"pod_selector": {"match_labels": meta.fleet_pods()}, "policy_types": ["Ingress"], "ingress": []},
        opts=opts,
    )


def cli_ingress(meta: FleetMeta, group: CliGroup, clients: ClientPeers,
                opts: pulumi.ResourceOptions) -> networking.NetworkPolicy:
    name = meta.ingress_policy(group)
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, CLI, group),
        spec={
            "pod_selector": {"match_labels": meta.selector(CLI, group)},
            "policy_types": ["Ingress"],
            "ingress": [{
                "from": clients.peers(group.user),
                "ports": [{"port": meta.spec.port, "protocol": "TCP"}],
            }],
        },
        opts=opts,
    )


def redis_ingress(meta: FleetMeta, clients: ClientPeers, opts: pulumi.ResourceOptions) -> networking.NetworkPolicy:
    name = f"{REDIS}-ingress"
    # Not the CLI pods: the servers never use the lease store (clients and the janitor take the leases), and a
    # session's tool run on a server must not reach it.
    janitor_pods = {"pod_selector": {"match_labels": meta.selector(JANITOR)}}
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, LEASE_STORE),
        spec={
            "pod_selector": {"match_labels": meta.selector(LEASE_STORE)},
            "policy_types": ["Ingress"],
            # Redis is never exposed outside the cluster: no ipBlock peers here.
            "ingress": [{
                "from": [janitor_pods, clients.peers()[0]],
                "ports": [{"port": REDIS_PORT, "protocol": "TCP"}],
            }],
        },
        opts=opts,
    )
