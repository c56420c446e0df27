"""Session volumes: the PersistentVolumeClaim that holds `session-state/` for a CLI group.

Either dynamically provisioned (a storage class, `fleet:storage`) or, through `PlatformHooks.session_volume`, a
static PersistentVolume on a platform's file share with a claim bound to it by name.
"""

from __future__ import annotations

from collections.abc import Callable

import pulumi
import pulumi_kubernetes.core.v1 as core

from copilot_fleet.components.kubernetes.hooks import StaticVolume
from copilot_fleet.components.kubernetes.meta import FleetMeta
from copilot_fleet.topology import CliGroup


def static_volume_name(meta: FleetMeta, volume: str) -> str:
    # PersistentVolumes are cluster-wide: prefix the namespace so two fleets on one cluster never collide.
    return f"{meta.namespace}-{volume}"


def session_volume_claim(meta: FleetMeta, group: CliGroup, opts: pulumi.ResourceOptions,
                         static: Callable[[str], StaticVolume] | None = None) -> core.PersistentVolumeClaim:
    storage = meta.spec.storage
    name = group.volume_name()
    spec: dict[str, object] = {
        "access_modes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    claim_opts = opts
    if static is None:
        if storage.storage_class is not None:
            spec["storage_class_name"] = storage.storage_class
    else:
        source = static(name)
        pv_name = static_volume_name(meta, name)
        volume = core.PersistentVolume(
            pv_name,
            metadata=meta.metadata(pv_name, "cli", group, namespaced=False),
            spec={
                "access_modes": [storage.access_mode],
                "capacity": {"storage": source.capacity or storage.size},
                "csi": source.csi,
                "mount_options": list(source.mount_options) or None,
                "persistent_volume_reclaim_policy": source.reclaim_policy,
                "storage_class_name": "",
                # Pre-bound: no other claim in the cluster can take this share.
                "claim_ref": {"namespace": meta.namespace, "name": name},
            },
            opts=opts,
        )
        spec["storage_class_name"] = ""
        spec["volume_name"] = pv_name
        claim_opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[volume]))
    return core.PersistentVolumeClaim(
        name,
        metadata=meta.metadata(name, "cli", group),
        spec=spec,
        opts=claim_opts,
    )
