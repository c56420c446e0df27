"""fleet:autoscaling: a HorizontalPodAutoscaler (autoscaling/v2) over the shared patterns' CLI StatefulSet.

Between fleet:replicas and `maxReplicas`, on the replicas' average CPU use relative to their request. Scaling out
adds as many replicas as the metric asks for at once; scaling in removes one replica per `scaleDownPeriod`, and only
after the use stayed low for `scaleDownStabilization`: a removed replica stops through its grace period (preStop,
then the CLI finishes its turns), and the PodDisruptionBudget protects the others meanwhile.

Which mode to scale: in store mode any replica serves any session straight from the store, so a replica added by
the autoscaler is useful at once and one removed loses nothing. In the volume mode every replica mounts the
ReadWriteMany session volume too (its class must take the extra mounts).

The target lists the replicas fleet:replicas makes (the StatefulSet keeps those, the lowest ordinals, whatever the
autoscaler does); clients that route by replica use those, and the replicas added above them take sessions through
the load-balanced Service (`endpoint`).
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes.autoscaling.v2 as autoscaling

from copilot_fleet.components.kubernetes.meta import CLI, FleetMeta
from copilot_fleet.topology import CliGroup


def cli_autoscaler(meta: FleetMeta, group: CliGroup, opts: pulumi.ResourceOptions
                   ) -> autoscaling.HorizontalPodAutoscaler | None:
    auto = meta.spec.autoscaling
    if auto is None or group.user is not None:
        return None
    return autoscaling.HorizontalPodAutoscaler(
        group.name,
        metadata=meta.metadata(group.name, CLI, group),
        spec={
            "scale_target_ref": {"api_version": "apps/v1", "kind": "StatefulSet", "name": group.name},
            "min_replicas": group.replicas,
            "max_replicas": auto.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "average_utilization": auto.cpu_utilization}}}],
            "behavior": {
                "scale_down": {
                    "stabilization_window_seconds": auto.scale_down_stabilization,
                    "select_policy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "period_seconds": auto.scale_down_period}],
                },
            },
        },
        opts=opts,
    )
