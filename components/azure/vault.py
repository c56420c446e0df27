"""Key Vault in RBAC mode: the fleet's credentials, and who may read which of them.

Secrets are written through Azure Resource Manager (Microsoft.KeyVault/vaults/secrets), which the deploying
principal's Contributor role allows; no data-plane role is needed to deploy. Workloads read through the data
plane with their workload identity, granted "Key Vault Secrets User" on the vault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, keyvault

from copilot_fleet.components.azure.names import kv_secret_name

# Built-in role "Key Vault Secrets User": read secret contents (data plane), nothing else.
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def role_definition_id(subscription_id: str, role: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role}"


@dataclass(frozen=True)
class VaultReader:
    """A principal allowed to read every secret of the vault."""

    principal_id: pulumi.Input[str]


@dataclass(frozen=True)
class SecretVaultArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    vault_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    secrets: Mapping[str, pulumi.Input[str]]  # Key Vault secret name -> value (made a Pulumi secret here)
    readers: Mapping[str, VaultReader]  # a logical name per reader (used in resource names) -> the reader
    tags: dict[str, str]
    protect: bool = True  # every credential of the fleet lives here


class SecretVault(pulumi.ComponentResource):
    vault_name: pulumi.Output[str]
    vault_id: pulumi.Output[str]
    vault_uri: pulumi.Output[str]
    secret_names: list[str]

    def __init__(self, name: str, args: SecretVaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:SecretVault", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        for secret in args.secrets:
            kv_secret_name(secret)  # refuse names Key Vault would refuse, before anything registers

        vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.tenant_id,
                sku=keyvault.SkuArgs(family=keyvault.SkuFamily.A, name=keyvault.SkuName.STANDARD),
                # Access policies off: data-plane access only through Azure RBAC role assignments.
                enable_rbac_authorization=True,
                enable_soft_delete=True,
                soft_delete_retention_in_days=90,
                # Irreversible by design: nobody can purge a deleted secret before the retention ends.
                enable_purge_protection=True,
                enabled_for_deployment=False,
                enabled_for_disk_encryption=False,
                enabled_for_template_deployment=False,
            ),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        for secret, value in sorted(args.secrets.items()):
            keyvault.Secret(
                f"{name}-{secret}",
                secret_name=secret,
                vault_name=vault.name,
                resource_group_name=args.resource_group_name,
                properties=keyvault.SecretPropertiesArgs(value=pulumi.Output.secret(value)),
                opts=child,
            )

        role = pulumi.Output.from_input(args.subscription_id).apply(
            lambda sub: role_definition_id(sub, KEY_VAULT_SECRETS_USER))
        for reader_name, reader in sorted(args.readers.items()):
            authorization.RoleAssignment(
                f"{name}-read-{reader_name}",
                principal_id=reader.principal_id,
                # Without the type ARM looks the new identity up in Entra ID and may not find it yet.
                principal_type=authorization.PrincipalType.SERVICE_PRINCIPAL,
                role_definition_id=role,
                scope=vault.id,
                description=f"copilot-fleet {reader_name}: read fleet secrets",
                opts=child,
            )

        self.vault_name = vault.name
        self.vault_id = vault.id
        self.vault_uri = vault.properties.vault_uri
        self.secret_names = sorted(args.secrets)
        self.register_outputs({"vault_name": self.vault_name, "vault_uri": self.vault_uri,
                               "secret_names": self.secret_names})
