"""The session janitor: a CronJob that removes sessions older than `fleet:sessionTtl` from a session volume.

The CLI never deletes sessions on its own, and `delete_session` leaves `.session-operation-locks/<id>.lock` behind
(facts: copilot-runtime.md). A session counts as live while its directory, `workspace.yaml` or `events.jsonl`
changed within the TTL (the spec requires a TTL of at least 1 h, so a sweep never races a live turn).

One janitor per session volume: the shared patterns have one; `per-user` has one per user, scheduled onto the node
of the user's server when the volume is ReadWriteOnce (a second pod can only mount it there).
The job runs the CLI image (Debian: /bin/sh and find) as the same non-root user, with a read-only root filesystem.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes.batch.v1 as batch

from components.kubernetes.meta import CLI, JANITOR, FleetMeta
from components.kubernetes.pod import container_security_context, pod_security_context
from copilot_fleet.topology import CliGroup

MOUNT = "/sessions"

# POSIX sh (dash, busybox ash) and find -mmin (GNU or busybox). Inputs: SESSION_ROOT, SESSION_TTL_SECONDS.
SWEEP_SCRIPT = r"""set -eu
root="${SESSION_ROOT:?}"
ttl_min=$(( (${SESSION_TTL_SECONDS:?} + 59) / 60 ))
locks="$root/.session-operation-locks"
removed=0
stale=0
for dir in "$root"/*; do
  [ -d "$dir" ] || continue
  id=${dir##*/}
  case "$id" in *[!A-Za-z0-9_-]*) continue ;; esac
  recent=$(find "$dir" -maxdepth 1 \( -path "$dir" -o -name workspace.yaml -o -name events.jsonl \) -mmin "-$ttl_min" -print | head -n 1)
  [ -z "$recent" ] || continue
  rm -rf -- "$dir"
  rm -f -- "$locks/$id.lock"
  removed=$((removed + 1))
done
if [ -d "$locks" ]; then
  for lock in "$locks"/*.lock; do
    [ -f "$lock" ] || continue
    id=${lock##*/}
    id=${id%.lock}
    [ ! -d "$root/$id" ] || continue
    recent=$(find "$lock" -mmin "-$ttl_min" -print)
    [ -z "$recent" ] || continue
    rm -f -- "$lock"
    stale=$((stale + 1))
  done
fi
echo "session-janitor: removed $removed sessions and $stale orphaned lock files idle for over $ttl_min min in $root"
"""


def janitor_cron_job(meta: FleetMeta, group: CliGroup, opts: pulumi.ResourceOptions) -> batch.CronJob:
    spec = meta.spec
    name = meta.janitor(group)
    pod_spec: dict[str, Any] = {
        "restart_policy": "Never",
        "automount_service_account_token": False,
        "security_context": pod_security_context(),
        "containers": [{
            "name": "janitor",
            "image": spec.image,
            "image_pull_policy": "IfNotPresent",
            "command": ["/bin/sh", "-c", SWEEP_SCRIPT],
            "env": [
                {"name": "SESSION_ROOT", "value": MOUNT},
                {"name": "SESSION_TTL_SECONDS", "value": str(spec.session_ttl)},
            ],
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
            "security_context": container_security_context(),
            "volume_mounts": [{"name": "sessions", "mount_path": MOUNT}],
        }],
        "volumes": [{"name": "sessions", "persistent_volume_claim": {"claim_name": group.session_volume}}],
    }
    if spec.storage.access_mode == "ReadWriteOnce":
        pod_spec["affinity"] = {"pod_affinity": {"required_during_scheduling_ignored_during_execution": [{
            "label_selector": {"match_labels": meta.selector(CLI, group)},
            "topology_key": "kubernetes.io/hostname",
        }]}}
    return batch.CronJob(
        name,
        metadata=meta.metadata(name, JANITOR, group),
        spec={
            "schedule": spec.janitor_schedule,
            "concurrency_policy": "Forbid",
            "starting_deadline_seconds": 300,
            "successful_jobs_history_limit": 1,
            "failed_jobs_history_limit": 3,
            "job_template": {
                "metadata": {"labels": meta.labels(JANITOR, group)},
                "spec": {
                    "backoff_limit": 1,
                    "active_deadline_seconds": 3600,
                    "ttl_seconds_after_finished": 86400,
                    "template": {"metadata": {"labels": meta.labels(JANITOR, group)}, "spec": pod_spec},
                },
            },
        },
        opts=opts,
    )
