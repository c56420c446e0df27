"""What Azure would answer, for running the program under the mock engine (tests and the offline render).

Mocks do no provider work: no ARM ids, no generated names, no host names, no invoke results. Without them the Azure
program cannot even finish (the Kubernetes provider needs a kubeconfig, the Redis URL a host and a key). These
functions answer with plausible values derived from the resource's name, so one stack always renders the same.
Nothing here imports pulumi_azure_native; a mock can call it for every registration and skip what returns None.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
TENANT = "00000000-0000-4000-8000-0000000000aa"

_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"

# Pulumi type token -> (ARM type path, the input that holds the resource's own name)
_ARM: dict[str, tuple[str, str]] = {
    "azure-native:storage:StorageAccount": ("Microsoft.Storage/storageAccounts", "accountName"),
    "azure-native:keyvault:Vault": ("Microsoft.KeyVault/vaults", "vaultName"),
    "azure-native:redis:Redis": ("Microsoft.Cache/redis", "name"),
    "azure-native:managedidentity:UserAssignedIdentity": (
        "Microsoft.ManagedIdentity/userAssignedIdentities", "resourceName"),
    "azure-native:containerservice:ManagedCluster": ("Microsoft.ContainerService/managedClusters", "resourceName"),
    "azure-native:operationalinsights:Workspace": ("Microsoft.OperationalInsights/workspaces", "workspaceName"),
}

OFFLINE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: aks-offline
  cluster: {server: 'https://aks-offline.hcp.westeurope.azmk8s.io:443', certificate-authority-data: b2ZmbGluZQ==}
users:
- name: clusterUser
  user: {token: offline-placeholder}
contexts:
- name: aks-offline
  context: {cluster: aks-offline, user: clusterUser}
current-context: aks-offline
"""


def _clear(value: Any) -> Any:
    if isinstance(value, Mapping) and _SECRET_SIG_KEY in value:
        return _clear(value.get("value"))
    return value


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "copilot-fleet-offline/" + "/".join(parts)))


def resource_state(typ: str, name: str, inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(id, state) for an azure-native resource, or None for any other type."""
    if not typ.startswith("azure-native:"):
        return None
    state = dict(inputs)
    rg = _clear(inputs.get("resourceGroupName")) or "rg-offline"
    sub_rg = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}"
    if typ == "azure-native:resources:ResourceGroup":
        own = inputs.get("resourceGroupName") or name  # the engine would add a random suffix
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{own}", {**state, "name": own}
    if typ in _ARM:
        arm_type, key = _ARM[typ]
        own = _clear(inputs.get(key)) or name
        state["name"] = own
        if typ == "azure-native:redis:Redis":
            state.update(hostName=f"{own}.redis.cache.windows.net", sslPort=6380, port=6379)
        elif typ == "azure-native:managedidentity:UserAssignedIdentity":
            state.update(clientId=_uuid("client", own), principalId=_uuid("principal", own), tenantId=TENANT)
        elif typ == "azure-native:containerservice:ManagedCluster":
            issuer = f"https://westeurope.oic.prod-aks.azure.com/{TENANT}/{_uuid('oidc', own)}/"
            state["oidcIssuerProfile"] = {**(_clear(state.get("oidcIssuerProfile")) or {}), "issuerURL": issuer}
            state["fqdn"] = f"{own}.hcp.westeurope.azmk8s.io"
            state["identityProfile"] = {"kubeletidentity": {
                "clientId": _uuid("kubelet-client", own), "objectId": _uuid("kubelet-object", own),
                "resourceId": f"{sub_rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{own}-agentpool"}}
        elif typ == "azure-native:keyvault:Vault":
            state["properties"] = {**(_clear(state.get("properties")) or {}),
                                   "vaultUri": f"https://{own}.vault.azure.net/"}
        elif typ == "azure-native:operationalinsights:Workspace":
            state["customerId"] = _uuid("workspace", own)
        return f"{sub_rg}/providers/{arm_type}/{own}", state
    if typ == "azure-native:storage:FileShare":
        own = inputs.get("shareName") or name
        account = _clear(inputs.get("accountName"))
        return (f"{sub_rg}/providers/Microsoft.Storage/storageAccounts/{account}/fileServices/default/shares/{own}",
                {**state, "name": own})
    if typ == "azure-native:keyvault:Secret":
        own = inputs.get("secretName") or name
        vault = _clear(inputs.get("vaultName"))
        return f"{sub_rg}/providers/Microsoft.KeyVault/vaults/{vault}/secrets/{own}", {**state, "name": own}
    if typ == "azure-native:managedidentity:FederatedIdentityCredential":
        identity = _clear(inputs.get("resourceName"))
        return (f"{sub_rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{identity}/"
                f"federatedIdentityCredentials/{inputs.get('federatedIdentityCredentialResourceName') or name}", state)
    if typ == "azure-native:authorization:RoleAssignment":
        guid = _uuid("role-assignment", name)
        scope = _clear(inputs.get("scope"))
        return f"{scope}/providers/Microsoft.Authorization/roleAssignments/{guid}", {**state, "name": guid}
    return f"{sub_rg}/providers/offline/{name}", {**state, "name": name}


def invoke_result(token: str, args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result of an azure-native invoke, or None for any other token."""
    if token == "azure-native:authorization:getClientConfig":
        return {"clientId": _uuid("deployer"), "objectId": _uuid("deployer-object"),
                "subscriptionId": SUBSCRIPTION, "tenantId": TENANT}
    if token == "azure-native:containerservice:listManagedClusterUserCredentials":
        return {"kubeconfigs": [{"name": "clusterUser",
                                 "value": base64.b64encode(OFFLINE_KUBECONFIG.encode()).decode()}]}
    if token == "azure-native:redis:listRedisKeys":
        cache = _clear(args.get("name"))
        return {"primaryKey": f"offline-redis-primary-{cache}", "secondaryKey": f"offline-redis-secondary-{cache}"}
    if token == "azure-native:storage:listStorageAccountKeys":
        account = _clear(args.get("accountName"))
        return {"keys": [{"keyName": "key1", "value": f"offline-storage-key1-{account}", "permissions": "FULL"},
                         {"keyName": "key2", "value": f"offline-storage-key2-{account}", "permissions": "FULL"}]}
    return None
