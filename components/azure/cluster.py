"""AKS: the cluster the CLI fleet runs on, its monitoring, and a Kubernetes provider built from its kubeconfig."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import containerservice, operationalinsights

from copilot_fleet.components.azure.names import dns_prefix

SECRETS_PROVIDER_ADDON = "azureKeyvaultSecretsProvider"
MONITORING_ADDON = "omsagent"


def kubelet_object_id(profile: object) -> str:
    """The object id of the cluster's kubelet identity (identityProfile.kubeletidentity): what pulls images."""
    identity = (profile or {}).get("kubeletidentity") if isinstance(profile, dict) else None
    if identity is None:
        raise ValueError("AKS reported no kubelet identity (identityProfile.kubeletidentity)")
    value = getattr(identity, "object_id", None) or (identity.get("objectId") if isinstance(identity, dict) else None)
    if not value:
        raise ValueError("AKS reported a kubelet identity without an object id")
    return str(value)


def decode_kubeconfig(credentials: containerservice.ListManagedClusterUserCredentialsResult) -> str:
    """The first kubeconfig AKS hands back, decoded (the API returns it base64-encoded)."""
    if not credentials.kubeconfigs:
        raise ValueError("AKS returned no kubeconfig for the cluster user")
    return base64.b64decode(credentials.kubeconfigs[0].value).decode()


@dataclass(frozen=True)
class AksClusterArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    stack: str
    node_count: int
    node_vm_size: str
    kubernetes_version: str | None
    log_retention_days: int
    tags: dict[str, str]


class AksCluster(pulumi.ComponentResource):
    """An AKS cluster with what the fleet relies on: workload identity (OIDC issuer), the Key Vault secrets
    provider, the Azure Files CSI driver, enforced NetworkPolicies (Calico) and Container Insights."""

    cluster_name: pulumi.Output[str]
    oidc_issuer_url: pulumi.Output[str]
    kubelet_object_id: pulumi.Output[str]  # the identity the nodes pull images with
    workspace_id: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]  # secret
    provider: k8s.Provider

    def __init__(self, name: str, args: AksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:AksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=operationalinsights.WorkspaceSkuArgs(name=operationalinsights.WorkspaceSkuNameEnum.PER_GB2018),
            retention_in_days=args.log_retention_days,
            tags=args.tags,
            opts=child,
        )
        cs = containerservice
        cluster = cs.ManagedCluster(
            f"{name}-aks",
            resource_group_name=args.resource_group_name,
            location=args.location,
            dns_prefix=dns_prefix(args.stack),
            kubernetes_version=args.kubernetes_version,
            sku=cs.ManagedClusterSKUArgs(name=cs.ManagedClusterSKUName.BASE, tier=cs.ManagedClusterSKUTier.FREE),
            identity=cs.ManagedClusterIdentityArgs(type=cs.ResourceIdentityType.SYSTEM_ASSIGNED),
            enable_rbac=True,
            agent_pool_profiles=[cs.ManagedClusterAgentPoolProfileArgs(
                name="system",
                mode=cs.AgentPoolMode.SYSTEM,
                count=args.node_count,
                vm_size=args.node_vm_size,
                os_type=cs.OSType.LINUX,
                type=cs.AgentPoolType.VIRTUAL_MACHINE_SCALE_SETS,
                enable_auto_scaling=False,
            )],
            # Azure CNI overlay + Calico: the fleet's NetworkPolicies are enforced, not just stored.
            network_profile=cs.ContainerServiceNetworkProfileArgs(
                network_plugin=cs.NetworkPlugin.AZURE,
                network_plugin_mode=cs.NetworkPluginMode.OVERLAY,
                network_policy=cs.NetworkPolicy.CALICO,
                load_balancer_sku=cs.LoadBalancerSku.STANDARD,
            ),
            oidc_issuer_profile=cs.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            security_profile=cs.ManagedClusterSecurityProfileArgs(
                workload_identity=cs.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True)),
            storage_profile=cs.ManagedClusterStorageProfileArgs(
                file_csi_driver=cs.ManagedClusterStorageProfileFileCSIDriverArgs(enabled=True)),
            addon_profiles={
                # Rotation re-syncs a rotated Key Vault secret into the pod volume and the synced Secret.
                SECRETS_PROVIDER_ADDON: cs.ManagedClusterAddonProfileArgs(
                    enabled=True, config={"enableSecretRotation": "true", "rotationPollInterval": "2m"}),
                MONITORING_ADDON: cs.ManagedClusterAddonProfileArgs(
                    enabled=True, config={"logAnalyticsWorkspaceResourceID": workspace.id}),
            },
            auto_upgrade_profile=cs.ManagedClusterAutoUpgradeProfileArgs(
                upgrade_channel=cs.UpgradeChannel.PATCH,
                node_os_upgrade_channel=cs.NodeOSUpgradeChannel.NODE_IMAGE,
            ),
            tags=args.tags,
            opts=child,
        )
        credentials = cs.list_managed_cluster_user_credentials_output(
            resource_group_name=args.resource_group_name, resource_name=cluster.name,
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.kubeconfig = pulumi.Output.secret(credentials.apply(decode_kubeconfig))
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=child,
        )
        self.cluster_name = cluster.name
        self.oidc_issuer_url = cluster.oidc_issuer_profile.apply(
            lambda p: (p.issuer_url if p is not None else None) or "")
        self.kubelet_object_id = cluster.identity_profile.apply(kubelet_object_id)
        self.workspace_id = workspace.id
        self.register_outputs({"cluster_name": self.cluster_name, "oidc_issuer_url": self.oidc_issuer_url,
                               "workspace_id": self.workspace_id})
