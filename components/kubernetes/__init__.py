"""The Kubernetes platform: a fleet of Copilot CLI servers for any isolation pattern on any cluster.

`KubernetesFleet(name, KubernetesFleetArgs(topology, tokens, platform=PlatformHooks(...)))` deploys a Topology;
`PlatformHooks` (hooks.py) is how another platform (Azure) adapts it. See docs/kubernetes.md.
"""

from copilot_fleet.components.kubernetes.hooks import PlatformHooks, StaticVolume
from copilot_fleet.components.kubernetes.kubernetes_fleet import KubernetesFleet, KubernetesFleetArgs

__all__ = ["KubernetesFleet", "KubernetesFleetArgs", "PlatformHooks", "StaticVolume"]
