"""Which Key Vault secret holds what, and which Kubernetes Secret key it is synced into (no Pulumi resources here).

The Kubernetes fleet decides the Secrets its pods read
(`copilot_fleet.components.kubernetes.secrets.secret_material`: name -> key -> value); on Azure every one of them is
stored in Key Vault under `<secret>-<key>` and synced back under the same name and key. Azure adds one Secret per
session volume for the Azure Files CSI mount (`azurestorageaccountname`/`azurestorageaccountkey`, the names the
driver reads) and the lease store's key and URL. The key only applications read (not synced); the URL is also what
the session janitor takes leases with, so it is stored once, as `lease-store-redis-url`, and synced into the
janitor's Secret (`copilot-janitor-credentials`, key `redis-url`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from copilot_fleet.components.azure.names import kv_secret_name
from copilot_fleet.components.azure.secret_sync import SyncedSecret
from copilot_fleet.components.kubernetes.secrets import JANITOR_CREDENTIALS, REDIS_URL_KEY, SECRET_TYPES

# Keys the Azure Files CSI driver reads from a node-stage Secret.
ACCOUNT_NAME_KEY = "azurestorageaccountname"
ACCOUNT_KEY_KEY = "azurestorageaccountkey"
REDIS_KEY_SECRET = "lease-store-redis-key"
REDIS_URL_SECRET = "lease-store-redis-url"


def files_secret_name(volume: str) -> str:
    """The Kubernetes Secret the CSI driver mounts a session volume's share with."""
    return f"{volume}-azure-files"


@dataclass(frozen=True)
class StorageCredentials:
    account_name: pulumi.Input[str]
    account_key: pulumi.Input[str]


@dataclass
class SecretLayout:
    values: dict[str, pulumi.Input[str]] = field(default_factory=dict)  # Key Vault secret -> value
    synced: list[SyncedSecret] = field(default_factory=list)  # what the cluster gets back, and where

    def add(self, vault_secret: str, value: pulumi.Input[str], k8s_secret: str | None = None,
            key: str | None = None) -> None:
        if vault_secret in self.values:
            raise ValueError(f"two values map to the Key Vault secret {vault_secret!r}")
        self.values[vault_secret] = value
        if k8s_secret is not None and key is not None:
            self.synced.append(SyncedSecret(vault_secret, k8s_secret, key, SECRET_TYPES.get(k8s_secret, "Opaque")))


def secret_layout(material: Mapping[str, Mapping[str, pulumi.Input[str]]],
                  storage: Mapping[str, StorageCredentials],
                  redis_key: pulumi.Input[str] | None = None,
                  redis_url: pulumi.Input[str] | None = None) -> SecretLayout:
    """Everything the vault holds: the fleet's Secrets (synced), the share credentials (synced), the lease store's
    key (kept for applications) and URL (kept for applications, synced for the janitor when it reads one)."""
    layout = SecretLayout()
    janitor_url = (JANITOR_CREDENTIALS, REDIS_URL_KEY)
    for name, data in sorted(material.items()):
        for key, value in sorted(data.items()):
            if (name, key) == janitor_url:
                continue  # the lease store URL below: one Key Vault secret, not two copies that could drift
            layout.add(kv_secret_name(name, key), value, name, key)
    wants_url = REDIS_URL_KEY in material.get(JANITOR_CREDENTIALS, {})
    if wants_url and redis_url is None:
        raise ValueError(f"the janitor reads {JANITOR_CREDENTIALS}/{REDIS_URL_KEY} but no lease store URL was given")
    for volume, creds in sorted(storage.items()):
        secret = files_secret_name(volume)
        layout.add(kv_secret_name(secret, "account-name"), creds.account_name, secret, ACCOUNT_NAME_KEY)
        layout.add(kv_secret_name(secret, "account-key"), creds.account_key, secret, ACCOUNT_KEY_KEY)
    if redis_key is not None:
        layout.add(REDIS_KEY_SECRET, redis_key)
    if redis_url is not None and wants_url:
        layout.add(REDIS_URL_SECRET, redis_url, *janitor_url)
    elif redis_url is not None:
        layout.add(REDIS_URL_SECRET, redis_url)
    return layout
