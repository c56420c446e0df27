"""The Azure platform: AKS running the Kubernetes fleet, Azure Files for `session-state/`, Key Vault for every
credential (synced into the cluster by the Secrets Store CSI driver with workload identity) and Azure Cache for
Redis as the lease store. See docs/azure.md.

`deploy_azure(topology, tokens)` is what `copilot_fleet.program.run()` calls for `fleet:platform azure`.
Only the azure-native submodules used here are imported (the whole package costs seconds and hundreds of MB).
"""

from __future__ import annotations

import pulumi

from copilot_fleet.components.azure.azure_fleet import AzureFleet, AzureFleetArgs
from copilot_fleet.components.common import ConnectionTokens, FleetEndpoints
from copilot_fleet.topology import Topology

__all__ = ["AzureFleet", "AzureFleetArgs", "deploy_azure"]


def deploy_azure(topology: Topology, tokens: ConnectionTokens) -> FleetEndpoints:
    """Deploy the topology on Azure; return where it answers (the program builds the target from it).

    Also exports `azure`: the resource group, cluster, Key Vault, storage accounts and Redis host, for `az` commands.
    """
    fleet = AzureFleet("copilot-fleet-azure", AzureFleetArgs(topology=topology, tokens=tokens))
    pulumi.export("azure", fleet.names.as_output())
    return fleet.endpoints
