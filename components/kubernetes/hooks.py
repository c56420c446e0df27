"""Extension points for a platform that runs the Kubernetes fleet on its own cluster (Azure: AKS).

`KubernetesFleetArgs.platform` takes one `PlatformHooks`. Every field is optional; the defaults give the plain
Kubernetes fleet (dynamically provisioned volumes, Secrets created from stack config, no extra labels).

Contract, field by field:

- `session_volume(volume) -> StaticVolume`: called once per session volume of the topology (`copilot-sessions` for
  the shared patterns, `copilot-user-<id>-sessions` per user). When set, the fleet does NOT ask a storage class
  for the volume: it creates a static PersistentVolume named `<namespace>-<volume>` from the returned CSI source
  (for example driver `file.csi.azure.com` with `volumeHandle`, `volumeAttributes` {shareName, ...} and a
  `nodeStageSecretRef`), pre-bound through `claimRef`, and a PersistentVolumeClaim `<volume>` with
  `storageClassName: ""` and `volumeName` pointing at it. Access mode and size still come from
  `fleet:storage` unless the StaticVolume overrides the capacity. The pods mount that PVC exactly as before
  (only at `$COPILOT_HOME/session-state`), and the janitor mounts it too.
- `pod_labels`: extra labels on every CLI pod template (e.g. `azure.workload.identity/use: "true"`). They are not
  part of any selector, so adding or changing them later only rolls the pods.
- `service_account_annotations`: annotations of the CLI pods' ServiceAccount `copilot-cli` (e.g.
  `azure.workload.identity/client-id`). The ServiceAccount never mounts an API token into the pods.
- `extra_volumes` / `extra_volume_mounts`: appended to the CLI pod's volumes and to the CLI container's mounts
  (e.g. a Secrets Store CSI volume: the driver only syncs Key Vault secrets into Kubernetes Secrets while a pod
  mounts its volume). Names must not clash with the fleet's own volumes: `copilot-home`, `sessions`, `tmp`.
- `manage_secrets`: when False the fleet creates no Kubernetes Secret at all; another system (Key Vault sync)
  must create every Secret listed by `KubernetesFleet.secret_material` (name -> key -> value), under exactly those
  names and keys. Pods read them with `secretKeyRef` (the janitor through a secret volume) either way, so
  nothing else changes.
- `external_redis_url`: the lease store lives outside the cluster (e.g. Azure Cache for Redis). No in-cluster
  Redis is deployed, whatever `fleet:redis.mode` says, and this URL (a secret) becomes the target's `redis_url`
  and the session janitor's (Secret `copilot-janitor-credentials`, key `redis-url`, mounted as a file).

The Kubernetes provider (a cluster built by the platform) is passed as `opts=ResourceOptions(provider=...)` on the
KubernetesFleet itself; every child inherits it through `parent`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_kubernetes.core.v1 as core

# The names the fleet uses for the CLI pod's own volumes; extra volumes must not reuse them.
RESERVED_VOLUME_NAMES = frozenset({"copilot-home", "sessions", "logs", "work", "tmp"})


@dataclass(frozen=True)
class StaticVolume:
    """A pre-provisioned volume (a file share) for one session volume: what `PlatformHooks.session_volume` returns.

    `csi` is the PersistentVolume's CSI source (typed args or a dict with snake_case keys). `mount_options` matter
    for SMB shares mounted by a non-root server (uid/gid 1000). `capacity` defaults to `fleet:storage.size`.
    """

    csi: core.CSIPersistentVolumeSourceArgs | Mapping[str, object]
    mount_options: Sequence[str] = ()
    reclaim_policy: Literal["Retain", "Delete"] = "Retain"
    capacity: str | None = None


@dataclass(frozen=True)
class PlatformHooks:
    """How a platform adapts the Kubernetes fleet; see the module docstring for the contract of each field."""

    session_volume: Callable[[str], StaticVolume] | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    service_account_annotations: Mapping[str, str] = field(default_factory=dict)
    extra_volumes: Sequence[core.VolumeArgs | Mapping[str, object]] = ()
    extra_volume_mounts: Sequence[core.VolumeMountArgs | Mapping[str, object]] = ()
    manage_secrets: bool = True
    external_redis_url: pulumi.Input[str] | None = None

    def __post_init__(self) -> None:
        for volume in self.extra_volumes:
            name = volume.get("name") if isinstance(volume, Mapping) else volume.name
            if name in RESERVED_VOLUME_NAMES:
                raise ValueError(f"PlatformHooks.extra_volumes: {name!r} is one of the fleet's own volumes "
                                 f"({', '.join(sorted(RESERVED_VOLUME_NAMES))}); pick another name")
