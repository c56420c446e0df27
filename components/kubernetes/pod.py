"""The CLI server pod: container args, environment, probes, volumes and security context.

Layout inside the pod (HOME is the per-replica volume, so the CLI's own defaults land there):

    /var/lib/copilot                 HOME and COPILOT_HOME: copilot-home, per replica (volumeClaimTemplate,
                                     ReadWriteOnce): config, logs, session-store.db (SQLite: never shared)
    /var/lib/copilot/session-state   sessions: the shared ReadWriteMany PVC (per-user: the user's own PVC)
    /var/lib/copilot/logs            logs: emptyDir: the CLI writes a log per process start and never removes one
    /workspace                       work: emptyDir, the working directory: files the agents' tools write
    /tmp                             tmp: emptyDir (the root filesystem is read-only)

Only the CLI's config and its session store stay on the retained home volume: logs and the agents' files live as
long as the pod (container restarts keep them, for debugging), bounded by their sizeLimits and the container's
ephemeral-storage limit, instead of filling a volume that outlives every pod.

Every mount point sits directly in another volume's root, never deeper: the container runtime creates a missing
mount point, and every directory above it, as root with mode 0755. With the session volume at
`~/.copilot/session-state`, runc created `~/.copilot` that way, the CLI (uid 1000) could not write its config
there and exited 1 without a word on every start; the kubelet's fsGroup change (OnRootMismatch) never repairs a
directory inside a volume whose root looks right. `mount_points_are_direct` checks the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from copilot_fleet.components.kubernetes import secrets
from copilot_fleet.components.kubernetes.meta import FleetMeta
from copilot_fleet.spec import RecycleSpec
from copilot_fleet.topology import CliGroup

HOME = "/var/lib/copilot"
COPILOT_HOME = HOME  # the home volume's root itself: see the module docstring
SESSION_STATE = f"{COPILOT_HOME}/session-state"
LOGS = f"{COPILOT_HOME}/logs"  # where the CLI writes its logs (its default, under COPILOT_HOME)
WORKSPACE = "/workspace"

# emptyDir sizes: the kubelet evicts a pod whose emptyDir passes its sizeLimit. Logs at info are a few KiB per
# session (measured with the runtime tier); the workspace holds what the agents' tools write.
TMP_SIZE = "1Gi"
LOGS_SIZE = "256Mi"
WORKSPACE_SIZE = "2Gi"
# Node-local disk for the container (its emptyDirs count towards it): used when fleet:resources leaves it unset.
EPHEMERAL_STORAGE_REQUEST = "512Mi"
EPHEMERAL_STORAGE_LIMIT = "4Gi"
PORT_NAME = "copilot"
CONTAINER_NAME = "copilot"

# The non-root user of images/cli/Dockerfile.
RUN_AS_USER = 1000

# Drain before SIGTERM: the endpoints controller and kube-proxy take the pod out of every Service within a few
# seconds (asynchronously; the short sleep covers that), then `copilot_fleet.pod.drain` waits until no attached session
# of this server has a turn in flight. Half the grace period, at most 30 s, leaves the rest for the CLI to stop.
MAX_PRESTOP_SECONDS = 30
ENDPOINT_REMOVAL_SECONDS = 2

# The container's command execs the CLI (copilot_fleet.pod.start), so the CLI is the container's PID 1. The image
# installs it execute-only, which makes the process non-dumpable: a session's tool run (same uid) cannot read its
# environment, and neither can the probes find it from its socket; they name it by this PID instead.
CLI_BINARY = "/usr/local/bin/copilot"
CLI_PID = 1


def cli_command() -> list[str]:
    """Prune the per-start logs on the log volume (an emptyDir that outlives container restarts), then exec the
    CLI; the args (cli_args) follow."""
    return ["python3", "-m", "copilot_fleet.pod.start", "--logs", LOGS, "--", CLI_BINARY]


def cli_args(meta: FleetMeta) -> list[str]:
    """`--host 0.0.0.0`: without it the CLI binds 127.0.0.1 and no Service can reach it."""
    spec = meta.spec
    args = ["--headless", "--no-auto-update", "--no-auto-login", "--host", "0.0.0.0",
            "--port", str(spec.port), "--log-level", spec.log_level]
    if spec.idle_timeout > 0:
        args += ["--session-idle-timeout", str(spec.idle_timeout)]
    return args


def secret_env_names(env: Sequence[Mapping[str, Any]]) -> list[str]:
    """The variables the container gets from Secrets."""
    return [e["name"] for e in env if "secret_key_ref" in (e.get("value_from") or {})]


def cli_env(meta: FleetMeta, group: CliGroup) -> list[dict[str, Any]]:
    """Credentials only through secretKeyRef; plain settings as values. Order matters: $(VAR) refers back."""
    spec = meta.spec
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": HOME},
        {"name": "COPILOT_HOME", "value": COPILOT_HOME},
        {"name": "COPILOT_AUTO_UPDATE", "value": "false"},
        secrets.connection_token_ref(meta, group).env("COPILOT_CONNECTION_TOKEN"),
    ]
    github = secrets.github_token_ref(meta, group)
    if github is not None:
        env.append(github.env("COPILOT_GITHUB_TOKEN"))
    if spec.provider is not None:
        env += [
            {"name": "COPILOT_PROVIDER_BASE_URL", "value": spec.provider.base_url},
            {"name": "COPILOT_PROVIDER_TYPE", "value": spec.provider.type},
            {"name": "COPILOT_PROVIDER_WIRE_API", "value": spec.provider.wire_api},
            {"name": "COPILOT_MODEL", "value": spec.session_model},
        ]
        api_key = secrets.provider_api_key_ref(meta)
        if api_key is not None:
            env.append(api_key.env("COPILOT_PROVIDER_API_KEY"))
        if github is None:
            # BYOK only: no GitHub auth, telemetry, web tools or update checks from inside the cluster.
            env.append({"name": "COPILOT_OFFLINE", "value": "true"})
    if spec.otlp_endpoint is not None:
        attributes = [
            "k8s.pod.name=$(POD_NAME)", "k8s.namespace.name=$(POD_NAMESPACE)", "service.instance.id=$(POD_NAME)",
            f"copilot_fleet.stack={meta.instance}", f"copilot_fleet.isolation={spec.isolation}",
        ]
        if group.user is not None:
            attributes.append(f"copilot_fleet.user={group.user}")
        env += [
            {"name": "POD_NAME", "value_from": {"field_ref": {"field_path": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "value_from": {"field_ref": {"field_path": "metadata.namespace"}}},
            {"name": "COPILOT_OTEL_ENABLED", "value": "true"},
            # Spans carry token counts and timings; prompts and answers stay out of the telemetry.
            {"name": "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "value": "false"},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": spec.otlp_endpoint},
            {"name": "OTEL_SERVICE_NAME", "value": "copilot-cli"},
            {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": ",".join(attributes)},
        ]
    return env


@dataclass(frozen=True)
class Probes:
    startup: dict[str, Any]
    readiness: dict[str, Any]
    liveness: dict[str, Any]


def health_command(port: int, timeout: int, recycle: RecycleSpec | None = None) -> dict[str, Any]:
    """`copilot_fleet.pod.health` in the CLI image: a JSON-RPC round trip with the container's connection token, so a
    server that accepts TCP but does not answer fails the probe; with `fleet:recycle` bounds, so does a server past
    one (its RSS, or the sessions counted from the logs in $COPILOT_HOME, which the probe inherits). The CLI is
    `CLI_PID`: non-dumpable, it cannot be found from its port by its own user."""
    command = ["python3", "-m", "copilot_fleet.pod.health", "--port", str(port), "--timeout", str(timeout),
               "--pid", str(CLI_PID)]
    if recycle is not None and recycle.max_rss_mb is not None:
        command += ["--recycle-rss-mb", str(recycle.max_rss_mb)]
    if recycle is not None and recycle.max_sessions is not None:
        command += ["--recycle-sessions", str(recycle.max_sessions)]
    return {"exec": {"command": command}}


def cli_probes(port: int, recycle: RecycleSpec | None = None) -> Probes:
    """The one place that decides how the CLI's health is checked.

    The startup probe is a TCP connect: it only covers the first launch, which unpacks about 235 MB into the cache
    before listening. Readiness and liveness do the real round trip.

    Recycling (the CLI never gives memory back): past a `fleet:recycle` bound both probes fail. Readiness first
    (after 2 x 10 s the pod leaves the Services: no new connections), then liveness (after 3 x 20 s the kubelet
    restarts the container; the preStop hook drains its turns first). Same pod, same volumes, so sessions resume
    with their history; a fresh process is under the bounds again.
    """
    return Probes(
        startup={"tcp_socket": {"port": port}, "period_seconds": 2, "timeout_seconds": 2, "failure_threshold": 60},
        readiness={**health_command(port, 2, recycle), "period_seconds": 10, "timeout_seconds": 5,
                   "failure_threshold": 2},
        liveness={**health_command(port, 3, recycle), "period_seconds": 20, "timeout_seconds": 5,
                  "failure_threshold": 3},
    )


def prestop_seconds(grace_seconds: int) -> int:
    return max(1, min(MAX_PRESTOP_SECONDS, grace_seconds // 2))


def image_pull_policy(image: str | None) -> str:
    """A digest names one build: pull it once. A tag can be pushed again: check it at every start, or nodes keep
    running different builds under one name (pin `name:tag@sha256:...` to drop the check)."""
    return "IfNotPresent" if image is not None and "@sha256:" in image else "Always"


def placement(meta: FleetMeta, *, image_pulls: bool = True) -> dict[str, Any]:
    """Pod spec fields every pod of the fleet gets from stack config (CLI servers, janitor Jobs, the in-cluster
    Redis): the nodes it may run on (`nodeSelector`, `tolerations`) and the Secrets its node pulls images with.
    `affinity` is the CLI pods' alone (cli_group.pod_template): its pod (anti-)affinity terms are about them."""
    spec = meta.spec
    out: dict[str, Any] = {}
    if spec.node_selector:
        out["node_selector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    pulls = secrets.image_pull_secret_names(spec) if image_pulls else []
    if pulls:
        out["image_pull_secrets"] = [{"name": name} for name in pulls]
    return out


def pod_annotations(meta: FleetMeta, secrets_checksum: Any = None) -> dict[str, Any] | None:
    """`fleet:podAnnotations` on every pod of the fleet, with the template's secrets checksum where it has one
    (the spec refuses user keys under copilot-fleet/, so neither hides the other)."""
    annotations: dict[str, Any] = dict(meta.spec.pod_annotations)
    if secrets_checksum is not None:
        annotations[secrets.CHECKSUM_ANNOTATION] = secrets_checksum
    return annotations or None


def container_security_context(read_only_root: bool = True) -> dict[str, Any]:
    return {
        "allow_privilege_escalation": False,
        "capabilities": {"drop": ["ALL"]},
        "read_only_root_filesystem": read_only_root,
        "run_as_non_root": True,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def pod_security_context(uid: int = RUN_AS_USER) -> dict[str, Any]:
    return {
        "run_as_non_root": True,
        "run_as_user": uid,
        "run_as_group": uid,
        "fs_group": uid,
        "fs_group_change_policy": "OnRootMismatch",
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def cli_container(meta: FleetMeta, group: CliGroup,
                  extra_mounts: Sequence[Mapping[str, Any] | Any] = ()) -> dict[str, Any]:
    spec = meta.spec
    probes = cli_probes(spec.port, spec.recycle)
    env = cli_env(meta, group)
    mounts: list[Mapping[str, Any] | Any] = [
        {"name": "copilot-home", "mount_path": HOME},
        # Only session-state/ is shared: the SQLite session-store.db next to it must stay per replica.
        {"name": "sessions", "mount_path": SESSION_STATE},
        {"name": "logs", "mount_path": LOGS},
        {"name": "work", "mount_path": WORKSPACE},
        {"name": "tmp", "mount_path": "/tmp"},
        *extra_mounts,
    ]
    nested = mount_points_are_direct([m["mount_path"] if isinstance(m, Mapping) else m.mount_path for m in mounts])
    if nested:
        raise ValueError(f"CLI container mounts {', '.join(nested)}: a mount point must sit directly in the root "
                         "of the volume it is in (the runtime would create the directories between as root)")
    return {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "image_pull_policy": image_pull_policy(spec.image),
        "command": cli_command(),
        # The server needs its credentials; the shell and MCP servers a session starts (untrusted tool runs) do
        # not: the CLI strips these from their environment and redacts them from their output.
        "args": [*cli_args(meta), f"--secret-env-vars={','.join(secret_env_names(env))}"],
        "env": env,
        "working_dir": WORKSPACE,
        "ports": [{"name": PORT_NAME, "container_port": spec.port, "protocol": "TCP"}],
        "startup_probe": probes.startup,
        "readiness_probe": probes.readiness,
        "liveness_probe": probes.liveness,
        "resources": {
            "requests": {"cpu": spec.resources.requests.cpu, "memory": spec.resources.requests.memory,
                         "ephemeral-storage": spec.resources.requests.ephemeral_storage or EPHEMERAL_STORAGE_REQUEST},
            "limits": {"cpu": spec.resources.limits.cpu, "memory": spec.resources.limits.memory,
                       "ephemeral-storage": spec.resources.limits.ephemeral_storage or EPHEMERAL_STORAGE_LIMIT},
        },
        "lifecycle": {"pre_stop": {"exec": {"command": [
            "/bin/sh", "-c",
            f"sleep {ENDPOINT_REMOVAL_SECONDS}; exec python3 -m copilot_fleet.pod.drain "
            f"--session-state {SESSION_STATE} "
            f"--pid {CLI_PID} --timeout {prestop_seconds(spec.termination_grace_seconds)}"]}}},
        "security_context": container_security_context(),
        "volume_mounts": mounts,
    }


def mount_points_are_direct(mount_paths: Sequence[str]) -> list[str]:
    """The mount paths that lie inside another mount but not directly in its root (the runtime would create the
    directories between them as root, 0755): empty when the layout is safe."""
    paths = sorted({p.rstrip("/") or "/" for p in mount_paths})
    bad = []
    for path in paths:
        parents = [p for p in paths if p != path and path.startswith(p.rstrip("/") + "/")]
        if parents:
            closest = max(parents, key=len)
            if path.rpartition("/")[0] != closest.rstrip("/"):
                bad.append(f"{path} (inside {closest})")
    return bad


def cli_scratch_volumes() -> list[dict[str, Any]]:
    """The CLI pod's emptyDirs (see the module docstring)."""
    return [
        {"name": "logs", "empty_dir": {"size_limit": LOGS_SIZE}},
        {"name": "work", "empty_dir": {"size_limit": WORKSPACE_SIZE}},
        {"name": "tmp", "empty_dir": {"size_limit": TMP_SIZE}},
    ]


def ephemeral_home_volume(meta: FleetMeta) -> dict[str, Any]:
    """COPILOT_HOME as an emptyDir (storage.persistentHome false; the per-user default): the CLI's config and its
    session store (a search index) start afresh with each pod; sessions resume from session-state/ regardless."""
    return {"name": "copilot-home", "empty_dir": {"size_limit": meta.spec.storage.home_size}}


def home_volume_claim(meta: FleetMeta) -> dict[str, Any]:
    """COPILOT_HOME's volumeClaimTemplate: one ReadWriteOnce volume per replica, from `storage.homeStorageClass`
    or else the default storage class (the session storage class is typically a network share, which SQLite
    should not live on)."""
    spec: dict[str, Any] = {
        "access_modes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": meta.spec.storage.home_size}},
    }
    if meta.spec.storage.home_storage_class is not None:
        spec["storage_class_name"] = meta.spec.storage.home_storage_class
    return {"metadata": {"name": "copilot-home", "labels": meta.labels("cli")}, "spec": spec}
