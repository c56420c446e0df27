"""Key Vault -> Kubernetes Secrets through the Secrets Store CSI driver (the AKS `azureKeyvaultSecretsProvider`).

A SecretProviderClass names the Key Vault secrets to fetch and the Kubernetes Secrets to sync them into
(`secretObjects`). The driver fetches them with a pod's federated service-account token (workload identity) when
the pod mounts the CSI volume, and creates the Secrets; with rotation on it re-syncs every poll interval.

Who mounts it: a small sync Deployment of its own (a pause container), not the CLI pods. The CLI runs the agent's
tools (shell commands) for whoever holds a connection token. Mounting the vault's files into it, or giving it a
federated identity, would hand every tool run the storage account key, the Redis key and, in `per-user`, every
other user's token. So only the sync pods carry the identity; the CLI pods read their own Secrets by `secretKeyRef`
exactly as on plain Kubernetes, and hold no Azure identity at all. The driver keeps a synced Secret while at least
one pod mounts its class, hence two sync replicas and a PodDisruptionBudget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.policy.v1 as policy

from copilot_fleet.components.common import child_options
from copilot_fleet.components.kubernetes.meta import FleetMeta
from copilot_fleet.components.kubernetes.pod import (
    container_security_context,
    placement,
    pod_annotations,
    pod_security_context,
)

API_VERSION = "secrets-store.csi.x-k8s.io/v1"
KIND = "SecretProviderClass"
CSI_DRIVER = "secrets-store.csi.k8s.io"
MOUNT_PATH = "/mnt/secrets-store"
NAME = "copilot-keyvault-sync"
COMPONENT = "secret-sync"
# The workload-identity webhook and the CSI driver read these names.
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
# Does nothing but hold the CSI volume mounted; runs as 65535 and needs no shell.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PAUSE_UID = 65535
REPLICAS = 2


@dataclass(frozen=True)
class SyncedSecret:
    """One Key Vault secret and the Kubernetes Secret key it lands in."""

    vault_secret: str  # Key Vault secret name
    k8s_secret: str  # Kubernetes Secret name
    key: str  # key inside that Secret
    k8s_type: str = "Opaque"  # the Secret's type (an image pull Secret is kubernetes.io/dockerconfigjson)


def _objects_parameter(items: Sequence[SyncedSecret]) -> str:
    """The provider's `objects` parameter: a YAML document whose `array` holds one YAML string per object."""
    lines = ["array:"]
    for n in sorted({i.vault_secret for i in items}):
        lines += ["  - |", f"    objectName: {n}", "    objectType: secret"]
    return "\n".join(lines) + "\n"


def provider_class_spec(*, client_id: str, vault_name: str, tenant_id: str,
                        items: Sequence[SyncedSecret]) -> dict[str, Any]:
    """The `spec` of a SecretProviderClass using workload identity (`clientID`; no pod or VM identity)."""
    if not items:
        raise ValueError("a SecretProviderClass needs at least one secret to sync")
    clash = sorted(k for k, n in Counter((i.k8s_secret, i.key) for i in items).items() if n > 1)
    if clash:
        raise ValueError(f"two Key Vault secrets sync into the same Kubernetes Secret key: {clash}")
    secrets: dict[str, list[dict[str, str]]] = {}
    types: dict[str, str] = {}
    for i in sorted(items, key=lambda i: (i.k8s_secret, i.key)):
        secrets.setdefault(i.k8s_secret, []).append({"objectName": i.vault_secret, "key": i.key})
        if types.setdefault(i.k8s_secret, i.k8s_type) != i.k8s_type:
            raise ValueError(f"Kubernetes Secret {i.k8s_secret} synced with two types: {types[i.k8s_secret]}, "
                             f"{i.k8s_type}")
    return {
        "provider": "azure",
        "parameters": {
            "usePodIdentity": "false",
            "useVMManagedIdentity": "false",
            "clientID": client_id,
            "keyvaultName": vault_name,
            # The provider reads `tenantID`; `tenantId` is its deprecated spelling.
            "tenantID": tenant_id,
            "objects": _objects_parameter(items),
        },
        "secretObjects": [{"secretName": name, "type": types[name], "data": data}
                          for name, data in sorted(secrets.items())],
    }


def sync_labels(meta: FleetMeta) -> tuple[dict[str, str], dict[str, str]]:
    """(selector, all labels). The instance and part-of labels put the sync pods under the fleet's default-deny
    ingress policy: nothing needs to reach them."""
    selector = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": meta.instance,
                "app.kubernetes.io/component": COMPONENT}
    return selector, {**meta.labels(), **selector}


def sync_pod_spec(meta: FleetMeta) -> dict[str, Any]:
    """The sync pods run where the fleet's pods may (nodeSelector, tolerations) and carry its pod annotations;
    they pull the public pause image without the fleet's pull Secret, which they sync themselves."""
    selector, labels = sync_labels(meta)
    return {
        "metadata": {"labels": labels, "annotations": pod_annotations(meta)},
        "spec": {
            "service_account_name": NAME,
            # The CSI driver requests the service-account token itself; the container needs none.
            "automount_service_account_token": False,
            "enable_service_links": False,
            "security_context": pod_security_context(PAUSE_UID),
            "termination_grace_period_seconds": 5,
            "topology_spread_constraints": [{
                "max_skew": 1, "topology_key": "kubernetes.io/hostname", "when_unsatisfiable": "ScheduleAnyway",
                "label_selector": {"match_labels": selector},
            }],
            "containers": [{
                "name": "pause",
                "image": PAUSE_IMAGE,
                "image_pull_policy": "IfNotPresent",
                "resources": {"requests": {"cpu": "5m", "memory": "8Mi"},
                              "limits": {"cpu": "50m", "memory": "32Mi"}},
                "security_context": container_security_context(),
                "volume_mounts": [{"name": "keyvault", "mount_path": MOUNT_PATH, "read_only": True}],
            }],
            "volumes": [{"name": "keyvault", "csi": {
                "driver": CSI_DRIVER, "read_only": True, "volume_attributes": {"secretProviderClass": NAME}}}],
            **placement(meta, image_pulls=False),
        },
    }


@dataclass(frozen=True)
class KeyVaultSyncArgs:
    meta: FleetMeta
    client_id: pulumi.Input[str]
    vault_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    items: Sequence[SyncedSecret]


class KeyVaultSync(pulumi.ComponentResource):
    """ServiceAccount (federated with the sync identity), SecretProviderClass, the sync Deployment and its
    PodDisruptionBudget. The Deployment is ready only once its pods mounted the volume, i.e. once the Secrets exist:
    depend on `ready` to start workloads that read them."""

    ready: apps.Deployment

    def __init__(self, name: str, args: KeyVaultSyncArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:KeyVaultSync", name, None, opts)
        meta = args.meta
        child = child_options(self, opts)
        selector, labels = sync_labels(meta)
        metadata = {"name": NAME, "namespace": meta.namespace, "labels": labels}
        account = core.ServiceAccount(
            NAME,
            metadata={**metadata, "annotations": {CLIENT_ID_ANNOTATION: args.client_id}},
            automount_service_account_token=False,
            opts=child,
        )
        spec = pulumi.Output.all(args.client_id, args.vault_name, args.tenant_id).apply(
            lambda v: provider_class_spec(client_id=v[0], vault_name=v[1], tenant_id=v[2], items=args.items))
        provider_class = k8s.apiextensions.CustomResource(
            NAME, api_version=API_VERSION, kind=KIND, metadata=metadata, spec=spec, opts=child)
        self.ready = apps.Deployment(
            NAME,
            metadata=metadata,
            spec={
                "replicas": REPLICAS,
                "selector": {"match_labels": selector},
                # Never fewer than one pod mounting the class: the driver deletes a synced Secret with its last pod.
                "strategy": {"type": "RollingUpdate", "rolling_update": {"max_unavailable": 0, "max_surge": 1}},
                "template": sync_pod_spec(meta),
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[account, provider_class])),
        )
        policy.PodDisruptionBudget(
            NAME,
            metadata=metadata,
            # A crash-looping pod must not stall node drains behind it (it is not running anyway).
            spec={"min_available": 1, "selector": {"match_labels": selector},
                  "unhealthy_pod_eviction_policy": "AlwaysAllow"},
            opts=child,
        )
        self.register_outputs({"service_account": NAME, "secret_provider_class": NAME})
