"""AzureFleet: a fleet on Azure. AKS runs the Kubernetes fleet; Azure Files holds `session-state/`; Key Vault holds
every credential; Azure Cache for Redis is the lease store of the shared patterns. In store mode
(fleet:sessionState.mode store) there is no share: the session store is a Redis on AKS with its append-only file on
an Azure Disk (why not Azure Cache for Redis: see below, and docs/azure.md).

Order of creation (each step waits for what it reads):
resource group -> AKS (+ Log Analytics) -> sync identity federated with the cluster's OIDC issuer -> shares,
Redis -> Key Vault (secrets, role assignment) -> namespace -> Key Vault sync (Secrets exist once it is ready)
-> KubernetesFleet (static PersistentVolumes on the shares, no Secrets of its own, Redis outside the cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_random as random
from pulumi_azure_native import authorization, resources

from copilot_fleet.components.azure.cache import LeaseCache, LeaseCacheArgs
from copilot_fleet.components.azure.cluster import AksCluster, AksClusterArgs
from copilot_fleet.components.azure.identity import WorkloadIdentity, WorkloadIdentityArgs
from copilot_fleet.components.azure.layout import StorageCredentials, files_secret_name, secret_layout
from copilot_fleet.components.azure.names import SUFFIX_LENGTH, redis_name, vault_name
from copilot_fleet.components.azure.secret_sync import NAME as SYNC_NAME
from copilot_fleet.components.azure.secret_sync import KeyVaultSync, KeyVaultSyncArgs
from copilot_fleet.components.azure.storage import SessionStorage, SessionStorageArgs
from copilot_fleet.components.azure.vault import SecretVault, SecretVaultArgs, VaultReader, role_definition_id
from copilot_fleet.components.common import ConnectionTokens, FleetEndpoints
from copilot_fleet.components.kubernetes import KubernetesFleet, KubernetesFleetArgs, PlatformHooks, StaticVolume
from copilot_fleet.components.kubernetes.meta import FleetMeta
from copilot_fleet.components.kubernetes.pod import RUN_AS_USER
from copilot_fleet.components.kubernetes.redis import in_cluster_url
from copilot_fleet.components.kubernetes.secrets import secret_material
from copilot_fleet.components.kubernetes.store import StoreCredentials, add_store_material, generate_credentials
from copilot_fleet.topology import Topology

FILE_CSI_DRIVER = "file.csi.azure.com"
# Built-in role "AcrPull": pull images from a container registry, nothing else.
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"

# SMB mount options for a non-root server: the share's files belong to the CLI's uid/gid and nobody else's;
# mfsymlinks keeps symlinks working on SMB; nosharesock gives each mount its own connection. actimeo=1 (the
# usual 30 s is too long here): a session resumed on another replica must see the events.jsonl size the previous
# replica left, not a cached one.
MOUNT_OPTIONS = (f"uid={RUN_AS_USER}", f"gid={RUN_AS_USER}", "dir_mode=0770", "file_mode=0660", "mfsymlinks",
                 "cache=strict", "nosharesock", "actimeo=1")


@dataclass(frozen=True)
class AzureFleetArgs:
    topology: Topology
    tokens: ConnectionTokens


@dataclass(frozen=True)
class AzureNames:
    """Where things landed, for `az` commands (exported as the `azure` stack output)."""

    resource_group: pulumi.Output[str]
    cluster: pulumi.Output[str]
    vault: pulumi.Output[str]
    vault_uri: pulumi.Output[str]
    storage_accounts: dict[str, pulumi.Output[str]]
    redis_host: pulumi.Output[str] | None
    oidc_issuer_url: pulumi.Output[str]

    def as_output(self) -> dict[str, object]:
        out: dict[str, object] = {
            "resource_group": self.resource_group, "cluster": self.cluster, "key_vault": self.vault,
            "key_vault_uri": self.vault_uri, "storage_accounts": self.storage_accounts,
            "oidc_issuer_url": self.oidc_issuer_url,
        }
        if self.redis_host is not None:
            out["redis_host"] = self.redis_host
        return out


class AzureFleet(pulumi.ComponentResource):
    endpoints: FleetEndpoints
    names: AzureNames
    kubernetes: KubernetesFleet

    def __init__(self, name: str, args: AzureFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:Fleet", name, None, opts)
        topology = args.topology
        spec = topology.spec
        az = spec.azure
        stack = spec.stack or pulumi.get_stack()
        meta = FleetMeta(spec)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"copilot-fleet-stack": stack, "copilot-fleet-isolation": spec.isolation, "managed-by": "pulumi"}

        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        # Storage account, vault and cache names are global DNS names: one random suffix per stack.
        suffix = random.RandomString("name-suffix", length=SUFFIX_LENGTH, special=False, upper=False,
                                     numeric=True, lower=True, opts=child).result
        group = resources.ResourceGroup(
            "resource-group", resource_group_name=az.resource_group_name or f"rg-copilot-{stack}"[:90].rstrip("."),
            location=az.location, tags=tags, opts=child)
        rg = group.name

        cluster = AksCluster("cluster", AksClusterArgs(
            resource_group_name=rg, location=az.location, stack=stack, node_count=az.node_count,
            node_vm_size=az.node_vm_size, kubernetes_version=az.kubernetes_version,
            log_retention_days=az.log_retention_days, tags=tags), opts=child)

        sync_identity = WorkloadIdentity(SYNC_NAME, WorkloadIdentityArgs(
            resource_group_name=rg, location=az.location, oidc_issuer_url=cluster.oidc_issuer_url,
            namespace=meta.namespace, service_account=SYNC_NAME, stack=stack, tags=tags), opts=child)

        shares = {
            volume: SessionStorage(volume, SessionStorageArgs(
                resource_group_name=rg, location=az.location, volume=volume, suffix=suffix,
                quota_gb=az.file_share_quota_gb, tags=tags, protect=az.protect_data), opts=child)
            for volume in topology.session_volumes
        }

        cache: LeaseCache | None = None
        external_redis: pulumi.Input[str] | None = None
        store_credentials: StoreCredentials | None = None
        lease_store_url: pulumi.Input[str] | None = None
        if topology.store_mode:
            # Store mode: the session store is a Redis StatefulSet on AKS, its append-only file on an Azure Disk (the
            # cluster's default class), not Azure Cache for Redis: the store needs one ACL user per scope with key
            # patterns (Redis 7 selectors; Azure Cache for Redis runs Redis 6 and authenticates with access keys or
            # Entra ID), multi-key Lua scripts on one primary (no cluster), appendfsync as the stack says (Azure
            # Cache persists to AOF only on Premium, with no choice of fsync) and noeviction. docs/azure.md.
            store_credentials = generate_credentials(topology, child)
            lease_store_url = in_cluster_url(meta, store_credentials.admin_password)
        elif topology.lease_store == "in-cluster":
            # On Azure "in-cluster" means: this stack runs the lease store, as Azure Cache for Redis.
            cache = LeaseCache("lease-store", LeaseCacheArgs(
                resource_group_name=rg, location=az.location,
                cache_name=suffix.apply(lambda s: redis_name(stack, s)),
                sku=az.redis_sku, capacity=az.redis_capacity, tags=tags), opts=child)
            external_redis = cache.url
        elif topology.lease_store == "external" and spec.redis.url is not None:
            external_redis = pulumi.Output.secret(spec.redis.url.get_secret_value())

        # The Secrets the pods read (in-cluster Redis is never deployed here, so no Redis password Secret; the
        # janitor's lease store URL is the cache's).
        if store_credentials is not None:
            material = add_store_material(
                secret_material(topology, args.tokens, store_credentials.admin_password, lease_store_url), meta,
                topology, store_credentials)
        else:
            material = secret_material(topology, args.tokens, None, external_redis)
            lease_store_url = external_redis
        layout = secret_layout(
            material,
            {v: StorageCredentials(s.account_name, s.account_key) for v, s in shares.items()},
            redis_key=cache.access_key if cache is not None else None,
            redis_url=lease_store_url,
        )
        vault = SecretVault("vault", SecretVaultArgs(
            resource_group_name=rg, location=az.location,
            vault_name=suffix.apply(lambda s: vault_name(stack, s)),
            tenant_id=client.tenant_id, subscription_id=client.subscription_id,
            secrets=layout.values,
            # The sync identity is the only reader: it syncs what the cluster needs and nothing reads on its behalf.
            readers={SYNC_NAME: VaultReader(sync_identity.principal_id)},
            tags=tags, protect=az.protect_data), opts=child)

        image_pull: list[pulumi.Resource] = []
        if az.container_registry_id is not None:
            # The nodes pull fleet:image with the kubelet identity: AcrPull on the registry, before any pod exists.
            image_pull.append(authorization.RoleAssignment(
                "acr-pull",
                principal_id=cluster.kubelet_object_id,
                principal_type=authorization.PrincipalType.SERVICE_PRINCIPAL,
                role_definition_id=role_definition_id(az.container_registry_id.split("/")[2], ACR_PULL),
                scope=az.container_registry_id,
                description=f"copilot-fleet {stack}: AKS nodes pull the CLI image",
                opts=child))

        k8s_opts = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        namespace = core.Namespace(
            meta.namespace,
            metadata={"name": meta.namespace,
                      "labels": {**meta.labels(), "pod-security.kubernetes.io/enforce": "restricted"}},
            opts=k8s_opts)
        sync = KeyVaultSync(SYNC_NAME, KeyVaultSyncArgs(
            meta=meta, client_id=sync_identity.client_id, vault_name=vault.vault_name,
            tenant_id=client.tenant_id, items=layout.synced),
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                depends_on=[namespace, vault, sync_identity])))

        def session_volume(volume: str) -> StaticVolume:
            share = shares[volume]
            return StaticVolume(
                csi=core.CSIPersistentVolumeSourceArgs(
                    driver=FILE_CSI_DRIVER,
                    volume_handle=pulumi.Output.concat(rg, "#", share.account_name, "#", share.share_name),
                    volume_attributes={"resourceGroup": rg, "storageAccount": share.account_name,
                                       "shareName": share.share_name},
                    node_stage_secret_ref=core.SecretReferenceArgs(
                        name=files_secret_name(volume), namespace=meta.namespace),
                ),
                mount_options=MOUNT_OPTIONS,
                capacity=f"{az.file_share_quota_gb}Gi",
            )

        self.kubernetes = KubernetesFleet("copilot-fleet", KubernetesFleetArgs(
            topology=topology, tokens=args.tokens, create_namespace=False,
            # The same client rules as on any cluster (these were dropped on Azure, so outside clients never got in).
            client_namespace_selector=spec.client_namespace_selector,
            source_ranges=tuple(spec.load_balancer.source_ranges),
            platform=PlatformHooks(session_volume=session_volume, manage_secrets=False,
                                   external_redis_url=external_redis),
            store_credentials=store_credentials,
        ), opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
            depends_on=[namespace, sync.ready, *image_pull])))
        drift = set(self.kubernetes.secret_material) ^ set(material)
        if drift:
            raise RuntimeError(f"the Kubernetes fleet reads Secrets that Key Vault does not sync (or the reverse): "
                               f"{sorted(drift)}")

        self.endpoints = self.kubernetes.endpoints
        self.names = AzureNames(
            resource_group=rg, cluster=cluster.cluster_name, vault=vault.vault_name, vault_uri=vault.vault_uri,
            storage_accounts={v: s.account_name for v, s in shares.items()},
            redis_host=cache.host_name if cache is not None else None,
            oidc_issuer_url=cluster.oidc_issuer_url,
        )
        self.register_outputs({"endpoint": self.endpoints.endpoint, "azure": self.names.as_output()})
