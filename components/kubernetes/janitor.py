"""The session janitor: a CronJob that removes sessions older than `fleet:sessionTtl` from a session volume.

The CLI never deletes sessions on its own, and `delete_session` leaves `.session-operation-locks/<id>.lock` behind
(CLI 1.0.102). The job runs `python3 -m copilot_fleet.pod.janitor`, the same janitor local fleets run
(see its docstring): it never removes a session a client holds the lease of or a CLI has attached.

One janitor per session volume: the shared patterns have one; `per-user` has one per user, scheduled onto the node
of the user's server when the volume is ReadWriteOnce (a second pod can only mount it there).
With a lease store (the shared patterns) the job reads the Redis URL from a Secret mounted as a file and refuses to
run without it (`--require-leases`): replicas sharing `session-state/` may have a session attached that only its
lease shows. Per-user fleets have no lease store; there the CLI's in-use lock is the guard.
The job runs the CLI image (it carries copilot-fleet) as the same non-root user, with a read-only root filesystem.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes.batch.v1 as batch

from copilot_fleet.components.kubernetes.meta import CLI, JANITOR, FleetMeta
from copilot_fleet.components.kubernetes.pod import (
    container_security_context,
    image_pull_policy,
    placement,
    pod_annotations,
    pod_security_context,
)
from copilot_fleet.components.kubernetes.secrets import SecretKeyRef
from copilot_fleet.topology import CliGroup

MOUNT = "/sessions"
LEASE_STORE_DIR = "/var/run/copilot-fleet"
LEASE_STORE_FILE = "redis-url"
# Read-only for the owner (root) and the fsGroup (the janitor's gid): the kubelet gives the files to the fsGroup.
LEASE_STORE_MODE = 0o440
# Python with redis-py: about 45 MiB resident; deleting a large tree stays well within the limit.
# It writes nothing but its output (the root filesystem is read-only; the volume is the session volume).
RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi", "ephemeral-storage": "16Mi"},
             "limits": {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "64Mi"}}


def janitor_command(session_ttl: int, lease_store: bool, store_scope: str | None = None) -> list[str]:
    """The container command: `copilot_fleet.pod.janitor` once over the mounted volume, or in store mode over the
    group's store scope (tests parse it with the janitor's own argument parser)."""
    where = ["--store-scope", store_scope] if store_scope is not None else ["--session-state", MOUNT]
    command = ["python3", "-m", "copilot_fleet.pod.janitor", *where, "--ttl", f"{session_ttl}s"]
    if lease_store:
        command += ["--redis-url-file", f"{LEASE_STORE_DIR}/{LEASE_STORE_FILE}", "--require-leases"]
    return command


def janitor_cron_job(meta: FleetMeta, group: CliGroup, opts: pulumi.ResourceOptions,
                     lease_store: SecretKeyRef | None = None) -> batch.CronJob:
    """`lease_store`: the Secret key holding the lease store URL; None when the fleet has no lease store."""
    spec = meta.spec
    name = meta.janitor(group)
    # Store mode: no volume, the sessions are in the store (the lease store) and the janitor deletes them there.
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if group.session_volume is not None:
        mounts.append({"name": "sessions", "mount_path": MOUNT})
        volumes.append({"name": "sessions", "persistent_volume_claim": {"claim_name": group.volume_name()}})
    if lease_store is not None:
        # A file, never an env value or an argument: those show in `kubectl describe` and in /proc/<pid>/cmdline.
        mounts.append({"name": "lease-store", "mount_path": LEASE_STORE_DIR, "read_only": True})
        volumes.append({"name": "lease-store", "secret": {
            "secret_name": lease_store.name,
            "items": [{"key": lease_store.key, "path": LEASE_STORE_FILE}],
            "default_mode": LEASE_STORE_MODE,
        }})
    pod_spec: dict[str, Any] = {
        "restart_policy": "Never",
        "automount_service_account_token": False,
        "enable_service_links": False,
        "security_context": pod_security_context(),
        "containers": [{
            "name": "janitor",
            "image": spec.image,
            "image_pull_policy": image_pull_policy(spec.image),
            "command": janitor_command(spec.session_ttl, lease_store is not None, group.store_scope),
            # The root filesystem is read-only: no bytecode to write; print each line as it comes.
            "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
            "resources": RESOURCES,
            "security_context": container_security_context(),
            "volume_mounts": mounts or None,
        }],
        "volumes": volumes or None,
        **placement(meta),
    }
    if spec.storage.access_mode == "ReadWriteOnce" and group.session_volume is not None:
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
                    "template": {"metadata": {"labels": meta.labels(JANITOR, group),
                                              "annotations": pod_annotations(meta)},
                                 "spec": pod_spec},
                },
            },
        },
        opts=opts,
    )
