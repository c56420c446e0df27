"""NetworkPolicies: nothing reaches a fleet pod unless a policy below lets it.

- default deny: every pod of the fleet (CLI servers, Redis, janitors) refuses all ingress;
- CLI port: only from client pods (`fleet:clientSelector`); in `per-user`, a user's server only from client pods
  that also carry `copilot-fleet/user: <id>`, so no user's pods reach another user's server, and from the pods
  of a trusted backend that serves every user (`fleet:backendSelector`), when one is named;
- Redis: only from the client pods (the fleet client takes the leases) and the janitor pods (the janitor takes a
  session's lease before it deletes the session); not from the CLI pods, which never use it, except in store mode,
  where their providers keep the sessions in it.

Clients in other namespaces are admitted when `client_namespace_selector` is given (namespaceSelector AND
podSelector in one peer); without it only client pods in the fleet's namespace match. `source_ranges` (CIDRs) admit
traffic from outside the cluster through a LoadBalancer or NodePort Service.

Egress (`fleet:egress.mode: restricted`, the default): a session's tool run is untrusted code with the server's
network, so the CLI pods reach only DNS (the cluster's kube-dns pods), public addresses on `fleet:egress.publicPorts`
(443: GitHub, public model endpoints) and the `fleet:egress.allow` rules; no private, shared or link-local address
(other pods, the node, cloud metadata at 169.254.169.254) unless allowed. The janitor reaches DNS and the lease
store; Redis reaches nothing. The config check refuses a provider or OTLP endpoint these rules would block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes.networking.v1 as networking

from copilot_fleet.components.kubernetes.meta import (
    CLI,
    DEFAULT_DENY_POLICY,
    JANITOR,
    LEASE_STORE,
    REDIS,
    REDIS_PORT,
    USER_LABEL,
    FleetMeta,
)
from copilot_fleet.spec import EgressRule, EgressSpec
from copilot_fleet.topology import CliGroup

CLI_EGRESS_POLICY = "copilot-cli-egress"
JANITOR_EGRESS_POLICY = "copilot-janitor-egress"
REDIS_TLS_PORT = 6380  # Azure Cache for Redis and most managed Redis speak TLS there


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


# Addresses that are not "public" for the egress policy (kept in step with copilot_fleet.spec.is_public_address).
NOT_PUBLIC_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"]
NOT_PUBLIC_V6 = ["fc00::/7", "fe80::/10", "::1/128"]
DNS_PEER = {"namespace_selector": {}, "pod_selector": {"match_labels": {"k8s-app": "kube-dns"}}}


def dns_rule() -> dict[str, Any]:
    return {"to": [DNS_PEER], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


def allow_rule(rule: EgressRule) -> dict[str, Any]:
    if rule.cidr is not None:
        peer: dict[str, Any] = {"ip_block": {"cidr": rule.cidr}}
    else:
        peer = {"namespace_selector": {"match_labels": {"kubernetes.io/metadata.name": rule.namespace}}}
        if rule.pod_labels:
            peer["pod_selector"] = {"match_labels": dict(rule.pod_labels)}
    return {"to": [peer], "ports": [{"port": p, "protocol": rule.protocol} for p in rule.ports]}


def cli_egress(meta: FleetMeta, egress: EgressSpec, opts: pulumi.ResourceOptions,
               extra_rules: Sequence[Mapping[str, Any]] = ()) -> networking.NetworkPolicy:
    """Every CLI pod of the fleet: DNS, public addresses on the public ports, the allow rules (and in store mode the
    in-cluster store: `extra_rules`)."""
    name = CLI_EGRESS_POLICY
    public = {"to": [{"ip_block": {"cidr": "0.0.0.0/0", "except": NOT_PUBLIC_V4}},
                     {"ip_block": {"cidr": "::/0", "except": NOT_PUBLIC_V6}}],
              "ports": [{"port": p, "protocol": "TCP"} for p in egress.public_ports]}
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, CLI),
        spec={"pod_selector": {"match_labels": meta.selector(CLI)}, "policy_types": ["Egress"],
              "egress": [dns_rule(), public, *(allow_rule(r) for r in egress.allow), *extra_rules]},
        opts=opts,
    )


def external_store_ports(url: str | None) -> list[int]:
    """The port of a lease store outside the cluster, from its URL when it names one (Azure Managed Redis serves
    10000); else Redis' usual ports, plain and TLS (Azure Cache for Redis: 6380)."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(url).port if url and url.startswith(("redis://", "rediss://")) else None
    except ValueError:
        port = None
    return [port] if port else [REDIS_PORT, REDIS_TLS_PORT]


def janitor_egress(meta: FleetMeta, lease_store: Literal["in-cluster", "external"] | None,
                   opts: pulumi.ResourceOptions, external_ports: Sequence[int] = ()) -> networking.NetworkPolicy:
    """The janitors: DNS and the lease store: the in-cluster Redis pods, or an external Redis on its port (its
    address is not known here); per-user fleets have none."""
    name = JANITOR_EGRESS_POLICY
    rules: list[dict[str, Any]] = [dns_rule()]
    if lease_store == "in-cluster":
        rules.append({"to": [{"pod_selector": {"match_labels": meta.selector(LEASE_STORE)}}],
                      "ports": [{"port": REDIS_PORT, "protocol": "TCP"}]})
    elif lease_store == "external":
        ports = external_ports or (REDIS_PORT, REDIS_TLS_PORT)
        rules.append({"ports": [{"port": p, "protocol": "TCP"} for p in ports]})
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, JANITOR),
        spec={"pod_selector": {"match_labels": meta.selector(JANITOR)}, "policy_types": ["Egress"], "egress": rules},
        opts=opts,
    )


def redis_egress(meta: FleetMeta, opts: pulumi.ResourceOptions) -> networking.NetworkPolicy:
    """Redis opens no connection of its own."""
    name = f"{REDIS}-egress"
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, LEASE_STORE),
        spec={"pod_selector": {"match_labels": meta.selector(LEASE_STORE)}, "policy_types": ["Egress"],
              "egress": []},
        opts=opts,
    )


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


def redis_ingress(meta: FleetMeta, clients: ClientPeers, opts: pulumi.ResourceOptions,
                  extra_peers: Sequence[Mapping[str, Any]] = ()) -> networking.NetworkPolicy:
    name = f"{REDIS}-ingress"
    # Not the CLI pods in the volume mode: the servers never use the lease store (clients and the janitor take the
    # leases), and a session's tool run on a server must not reach it. In store mode the CLI pods' providers keep
    # the sessions there (`extra_peers`): a tool run then reaches the port, without any password.
    janitor_pods = {"pod_selector": {"match_labels": meta.selector(JANITOR)}}
    return networking.NetworkPolicy(
        name,
        metadata=meta.metadata(name, LEASE_STORE),
        spec={
            "pod_selector": {"match_labels": meta.selector(LEASE_STORE)},
            "policy_types": ["Ingress"],
            # Redis is never exposed outside the cluster: no ipBlock peers here.
            "ingress": [{
                "from": [janitor_pods, clients.peers()[0], *extra_peers],
                "ports": [{"port": REDIS_PORT, "protocol": "TCP"}],
            }],
        },
        opts=opts,
    )
