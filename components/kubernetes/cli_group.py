"""One CLI group (the shared replicas, or one user's server) as Kubernetes objects.

StatefulSet (stable per-replica names and a COPILOT_HOME volume each) under the fleet's headless Service, a client
Service (type and session affinity from `fleet:loadBalancer`), the session volume, the ingress NetworkPolicy, the
session janitor, and a PodDisruptionBudget when there is more than one replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.policy.v1 as policy

from copilot_fleet.components.common import child_options
from copilot_fleet.components.kubernetes import network, pod, storage, store
from copilot_fleet.components.kubernetes.hooks import PlatformHooks
from copilot_fleet.components.kubernetes.janitor import janitor_cron_job
from copilot_fleet.components.kubernetes.meta import CLI, HEADLESS_SERVICE, SERVICE_ACCOUNT, FleetMeta
from copilot_fleet.components.kubernetes.secrets import SecretKeyRef
from copilot_fleet.topology import CliGroup

# Kubernetes' own default for ClientIP affinity, used when the idle timeout is off; the API allows 1..86400.
DEFAULT_AFFINITY_SECONDS = 10800


@dataclass(frozen=True)
class CliGroupArgs:
    meta: FleetMeta
    group: CliGroup
    hooks: PlatformHooks
    clients: network.ClientPeers
    service_type: str
    session_affinity: str
    source_ranges: tuple[str, ...] = ()
    janitor_lease_store: SecretKeyRef | None = None  # the Secret key holding the lease store URL, if any
    secrets_checksum: pulumi.Input[str] | None = None  # of the Secrets the CLI pods read (secrets.checksum)


def affinity_seconds(idle_timeout: int) -> int:
    """A client sticks to one replica for as long as the server keeps an idle session loaded."""
    return min(86400, idle_timeout) if idle_timeout > 0 else DEFAULT_AFFINITY_SECONDS


def client_service_spec(args: CliGroupArgs) -> dict[str, Any]:
    meta = args.meta
    spec: dict[str, Any] = {
        "type": args.service_type,
        "selector": meta.selector(CLI, args.group),
        "ports": [{"name": pod.PORT_NAME, "port": meta.spec.port, "target_port": pod.PORT_NAME,
                   "protocol": "TCP"}],
        "session_affinity": args.session_affinity,
    }
    if args.session_affinity == "ClientIP":
        spec["session_affinity_config"] = {"client_ip": {"timeout_seconds": affinity_seconds(meta.spec.idle_timeout)}}
    if args.service_type != "ClusterIP":
        # Keep the client's source address (no SNAT to a node): the NetworkPolicies match outside clients by it
        # (loadBalancer.sourceRanges), and ClientIP affinity would otherwise see only node addresses.
        spec["external_traffic_policy"] = "Local"
    if args.service_type == "LoadBalancer" and args.source_ranges:
        spec["load_balancer_source_ranges"] = list(args.source_ranges)
    return spec


def cli_container(meta: FleetMeta, group: CliGroup, hooks: PlatformHooks) -> dict[str, Any]:
    """The CLI container; in store mode its session store provider starts the CLI (components/kubernetes/store.py)."""
    container = pod.cli_container(meta, group, hooks.extra_volume_mounts)
    return store.provider_container(meta, group, container) if group.store_scope is not None else container


def pod_template(args: CliGroupArgs) -> dict[str, Any]:
    meta, group, hooks = args.meta, args.group, args.hooks
    spec: dict[str, Any] = {
        "service_account_name": SERVICE_ACCOUNT,
        "automount_service_account_token": False,
        "enable_service_links": False,
        "security_context": pod.pod_security_context(),
        "termination_grace_period_seconds": meta.spec.termination_grace_seconds,
        "containers": [cli_container(meta, group, hooks)],
        "volumes": [
            # Store mode: no session volume (the provider serves session state from the store).
            *([] if group.session_volume is None else
              [{"name": "sessions", "persistent_volume_claim": {"claim_name": group.volume_name()}}]),
            *pod.cli_scratch_volumes(),
            *([] if meta.spec.home_is_persistent else [pod.ephemeral_home_volume(meta)]),
            *hooks.extra_volumes,
        ],
        **pod.placement(meta),
    }
    if meta.spec.affinity is not None:
        spec["affinity"] = meta.spec.affinity.model_dump(exclude_none=True)
    if group.replicas > 1:
        # Spread replicas over nodes so one node going away takes at most one.
        spec["topology_spread_constraints"] = [{
            "max_skew": 1,
            "topology_key": "kubernetes.io/hostname",
            "when_unsatisfiable": "ScheduleAnyway",
            "label_selector": {"match_labels": meta.selector(CLI, group)},
        }]
    metadata: dict[str, Any] = {"labels": {**meta.labels(CLI, group), **hooks.pod_labels}}
    # A rotated credential changes the template (its checksum), so the pods roll and read it (env is read at start).
    annotations = pod.pod_annotations(meta, args.secrets_checksum)
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


class CliGroupDeployment(pulumi.ComponentResource):
    """The Kubernetes objects of one CliGroup."""

    def __init__(self, name: str, args: CliGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:kubernetes:CliGroup", name, None, opts)
        meta, group = args.meta, args.group
        self.group = group
        child = child_options(self, opts)
        self.session_claim = (None if group.session_volume is None else
                              storage.session_volume_claim(meta, group, child, args.hooks.session_volume))
        autoscaled = meta.spec.autoscaling is not None and group.user is None
        self.stateful_set = apps.StatefulSet(
            group.name,
            metadata=meta.metadata(group.name, CLI, group),
            spec={
                "service_name": HEADLESS_SERVICE,
                "replicas": group.replicas,
                "pod_management_policy": "Parallel",
                "update_strategy": {"type": "RollingUpdate"},
                "revision_history_limit": 5,
                "selector": {"match_labels": meta.selector(CLI, group)},
                "template": pod_template(args),
                "volume_claim_templates": [pod.home_volume_claim(meta)] if meta.spec.home_is_persistent else None,
                # Keep each replica's COPILOT_HOME when scaling down or deleting: it holds the session store.
                "persistent_volume_claim_retention_policy": ({"when_deleted": "Retain", "when_scaled": "Retain"}
                                                             if meta.spec.home_is_persistent else None),
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[self.session_claim] if self.session_claim is not None else None,
                # fleet:autoscaling: the HorizontalPodAutoscaler owns the replica count once the set exists.
                ignore_changes=["spec.replicas"] if autoscaled else None)),
        )
        # fleet:serviceAnnotations: the client Service is the one clients (and cloud load balancers) see.
        self.service = core.Service(
            group.name,
            metadata={**meta.metadata(group.name, CLI, group),
                      "annotations": dict(meta.spec.service_annotations) or None},
            spec=client_service_spec(args),
            opts=child,
        )
        self.disruption_budget: policy.PodDisruptionBudget | None = None
        if group.replicas > 1:
            self.disruption_budget = policy.PodDisruptionBudget(
                group.name,
                metadata=meta.metadata(group.name, CLI, group),
                # AlwaysAllow: a crash-looping replica (not ready, so not counted as available) must not stall a
                # node drain; only healthy replicas are protected.
                spec={"max_unavailable": 1, "selector": {"match_labels": meta.selector(CLI, group)},
                      "unhealthy_pod_eviction_policy": "AlwaysAllow"},
                opts=child,
            )
        self.ingress_policy = network.cli_ingress(meta, group, args.clients, child)
        self.janitor = janitor_cron_job(meta, group, child, args.janitor_lease_store)
        self.register_outputs({})
