"""Azure Files for `session-state/`: one storage account with one SMB share per session volume.

Why an account per volume rather than one account with a share (or a directory) per user: the Azure Files CSI
driver mounts SMB with the storage account key, and a key opens every share of its account. The key sits in a
Kubernetes Secret (synced from Key Vault) and on every node that mounts the volume; with an account per user, a
leaked key or a compromised node exposes that user's share and nobody else's. Storage accounts have no fixed
charge; the default limit is 250 accounts per region and subscription, which caps a `per-user` fleet at about
that many users."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import storage

from copilot_fleet.components.azure.names import share_name, storage_account_name


@dataclass(frozen=True)
class SessionStorageArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    volume: str  # the topology's session volume this share backs
    suffix: pulumi.Input[str]  # the stack's random name suffix
    quota_gb: int
    tags: dict[str, str]
    protect: bool = True  # the sessions' history lives here


class SessionStorage(pulumi.ComponentResource):
    """A StorageV2 account locked down to what an SMB mount needs, and the share for one session volume."""

    account_name: pulumi.Output[str]
    share_name: pulumi.Output[str]
    account_key: pulumi.Output[str]  # secret; Key Vault holds it for the CSI mount's nodeStageSecret

    def __init__(self, name: str, args: SessionStorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:SessionStorage", name, None, opts)
        data = pulumi.ResourceOptions(parent=self, protect=args.protect)
        account = storage.StorageAccount(
            f"{name}-account",
            account_name=pulumi.Output.from_input(args.suffix).apply(
                lambda s: storage_account_name(args.volume, s)),
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind=storage.Kind.STORAGE_V2,
            sku=storage.SkuArgs(name=storage.SkuName.STANDARD_LRS),
            minimum_tls_version=storage.MinimumTlsVersion.TLS1_2,
            enable_https_traffic_only=True,
            allow_blob_public_access=False,
            # The CSI driver's SMB mount authenticates with the account key: shared-key access must stay on.
            # Identity-based SMB (Kerberos) is not available to Linux pods through the CSI driver.
            allow_shared_key_access=True,
            allow_cross_tenant_replication=False,
            # Large file shares lift the 5 TiB share cap and raise IOPS; harmless at 100 GiB.
            large_file_shares_state=storage.LargeFileSharesState.ENABLED,
            tags=args.tags,
            opts=data,
        )
        share = storage.FileShare(
            f"{name}-share",
            account_name=account.name,
            resource_group_name=args.resource_group_name,
            share_name=share_name(args.volume),
            share_quota=args.quota_gb,
            enabled_protocols=storage.EnabledProtocols.SMB,
            access_tier=storage.ShareAccessTier.TRANSACTION_OPTIMIZED,
            opts=data,
        )
        keys = storage.list_storage_account_keys_output(
            account_name=account.name, resource_group_name=args.resource_group_name,
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.account_name = account.name
        self.share_name = share.name
        self.account_key = pulumi.Output.secret(keys.keys[0].value)
        self.register_outputs({"account_name": self.account_name, "share_name": self.share_name})
