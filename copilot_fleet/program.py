"""The Pulumi program: stack config -> FleetSpec -> Topology -> the platform's components -> the target outputs.

`__main__.py` only calls `run()`; the offline render (copilot_fleet.render) calls it under the mock engine.
Config is validated before a single resource is registered: a bad value raises ConfigError and nothing exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pulumi

from copilot_fleet.pulumi_config import load_engine_spec
from copilot_fleet.spec import ConfigError, FleetSpec
from copilot_fleet.topology import Topology, build_topology

if TYPE_CHECKING:
    from copilot_fleet.components.common import ConnectionTokens, FleetEndpoints

# What a platform provides: deploy the topology with these tokens, say where the fleet answers.
Deployer = Callable[[Topology, "ConnectionTokens"], "FleetEndpoints | Mapping[str, Any]"]

# The keys of the target (docs/target.md), exported one stack output each, in this order.
TARGET_KEYS = ("stack", "platform", "isolation", "endpoint", "replicas", "users", "connection_token",
               "user_tokens", "redis_url", "provider", "model", "namespace", "session_state")


def run() -> dict[str, Any]:
    """Deploy the fleet of the current stack and export the target. Returns what it exported."""
    spec = load_engine_spec()
    topology = build_topology(spec)
    deploy = _platform_deployer(spec)  # refuses local (and a missing Azure module) before anything registers

    from copilot_fleet.components.common import ConnectionTokens, FleetEndpoints

    tokens = ConnectionTokens("connection-tokens", topology)
    endpoints = deploy(topology, tokens)
    if isinstance(endpoints, Mapping):  # a platform may hand back the FleetEndpoints fields as a dict
        endpoints = FleetEndpoints(**endpoints)
    target = target_outputs(spec, topology, tokens, endpoints)
    for key, value in target.items():
        pulumi.export(key, value)
    return target


def _platform_deployer(spec: FleetSpec) -> Deployer:
    if spec.platform == "local":
        raise ConfigError([
            f"fleet:platform: local fleets run as processes on this machine, not through Pulumi: use "
            f"`copilot-fleet up --stack {spec.stack or 'NAME'}` (or pick kubernetes or azure for `pulumi up`)"
        ], stack=spec.stack or None)
    if spec.platform == "azure":
        try:
            from copilot_fleet.components.azure import deploy_azure
        except ImportError as exc:  # the Azure components are a separate part of the project
            raise RuntimeError(f"fleet:platform azure needs copilot_fleet.components.azure.deploy_azure, which cannot "
                               f"be imported here ({exc}); use platform kubernetes or install the Azure components"
                               ) from exc
        return deploy_azure
    return _deploy_kubernetes


def _deploy_kubernetes(topology: Topology, tokens: ConnectionTokens) -> FleetEndpoints:
    from copilot_fleet.components.kubernetes import KubernetesFleet, KubernetesFleetArgs

    spec = topology.spec
    fleet = KubernetesFleet("copilot-fleet", KubernetesFleetArgs(
        topology=topology,
        tokens=tokens,
        client_namespace_selector=spec.client_namespace_selector,
        source_ranges=tuple(spec.load_balancer.source_ranges),
    ))
    return fleet.endpoints


def target_outputs(spec: FleetSpec, topology: Topology, tokens: ConnectionTokens,
                   endpoints: FleetEndpoints) -> dict[str, Any]:
    """The target (docs/target.md) as stack outputs; tokens, the Redis URL and the provider's key are secrets.

    Keys that do not apply to this fleet (no load-balanced endpoint in per-user, no lease store, no provider)
    are left out rather than exported as null.
    """
    per_user = spec.isolation == "per-user"
    provider: dict[str, Any] | None = None
    if spec.provider is not None:
        provider = {"type": spec.provider.type, "base_url": spec.provider.base_url,
                    "wire_api": spec.provider.wire_api}
        if spec.provider.api_key is not None:
            provider["api_key"] = pulumi.Output.secret(spec.provider.api_key.get_secret_value())
    target: dict[str, Any] = {
        "stack": spec.stack or pulumi.get_stack(),
        "platform": spec.platform,
        "isolation": spec.isolation,
        "endpoint": endpoints.endpoint,
        "replicas": list(endpoints.replicas),
        "users": dict(endpoints.users),
        "connection_token": None if per_user else tokens.by_key["fleet"],
        "user_tokens": {g.user: tokens.for_group(g) for g in topology.groups if g.user is not None},
        "redis_url": endpoints.redis_url,
        "provider": provider,
        "model": spec.session_model,
        # Where the pods run: verify's pod checks and port-forwards look there (Kubernetes and AKS alike).
        "namespace": spec.namespace if spec.platform in ("kubernetes", "azure") else None,
        # Store mode only: an old target (and the volume mode) has none.
        "session_state": dict(endpoints.session_state) if endpoints.session_state is not None else None,
    }
    return {key: target[key] for key in TARGET_KEYS if target[key] is not None}
