"""Workload identity: a user-assigned managed identity that one Kubernetes service account may act as.

The AKS OIDC issuer signs the service account's projected token; the federated credential tells Entra ID to
trust exactly that issuer and subject, so the pod gets Azure tokens without any stored credential.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import managedidentity

from copilot_fleet.components.azure.names import identity_name

# The audience Entra ID expects on federated Kubernetes service-account tokens.
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


def service_account_subject(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


@dataclass(frozen=True)
class WorkloadIdentityArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    oidc_issuer_url: pulumi.Input[str]
    namespace: str
    service_account: str
    stack: str
    tags: dict[str, str]


class WorkloadIdentity(pulumi.ComponentResource):
    client_id: pulumi.Output[str]
    principal_id: pulumi.Output[str]
    subject: str

    def __init__(self, name: str, args: WorkloadIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:WorkloadIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_name_=identity_name(name, args.stack),
            resource_group_name=args.resource_group_name,
            location=args.location,
            tags=args.tags,
            opts=child,
        )
        self.subject = service_account_subject(args.namespace, args.service_account)
        managedidentity.FederatedIdentityCredential(
            f"{name}-federation",
            federated_identity_credential_resource_name=f"aks-{args.service_account}",
            resource_name_=identity.name,
            resource_group_name=args.resource_group_name,
            issuer=args.oidc_issuer_url,
            subject=self.subject,
            audiences=[TOKEN_EXCHANGE_AUDIENCE],
            opts=child,
        )
        self.client_id = identity.client_id
        self.principal_id = identity.principal_id
        self.register_outputs({"client_id": self.client_id, "principal_id": self.principal_id,
                               "subject": self.subject})
