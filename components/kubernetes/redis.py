"""The in-cluster lease store: one Redis with a generated password and append-only persistence.

Deployed for `shared-cli` and `shared-session` when `fleet:redis.mode` is in-cluster. The password reaches Redis
as a config file from its Secret (`requirepass ...`, mounted read-only), so it is in neither the manifest, nor
Redis' command line (`ps`, /proc/<pid>/cmdline), nor its environment; the readiness probe reads the same file.

One replica, on purpose without a PodDisruptionBudget: a budget on a single pod either blocks every node drain or
protects nothing. A drain moves Redis (its AOF volume re-attaches elsewhere, leases survive); meanwhile clients
cannot take leases and fail closed (no session is attached twice). For a lease store that stays up through node
maintenance, use `redis.mode: external` with a managed, replicated Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_random as random

from copilot_fleet.components.common import child_options
from copilot_fleet.components.kubernetes import secrets, store
from copilot_fleet.components.kubernetes.meta import LEASE_STORE, REDIS, REDIS_PORT, FleetMeta
from copilot_fleet.components.kubernetes.pod import (
    container_security_context,
    image_pull_policy,
    placement,
    pod_annotations,
    pod_security_context,
)
from copilot_fleet.spec import quantity_value

# The `redis` user of the official images (alpine and debian variants alike).
REDIS_UID = 999
DATA = "/data"
AUTH_DIR = "/etc/copilot-redis"
AUTH_FILE = f"{AUTH_DIR}/auth.conf"
STORE_FILE = f"{AUTH_DIR}/store.conf"  # store mode: the ACL users of the store scopes (components/kubernetes/store.py)
HEADLESS_SERVICE = f"{REDIS}-headless"  # governs the StatefulSet (stable pod DNS); clients use the REDIS Service



@dataclass(frozen=True)
class InClusterRedisArgs:
    meta: FleetMeta
    secrets_checksum: pulumi.Input[str] | None = None  # of Secret copilot-redis (a rotation restarts Redis)


def redis_password(name: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    password = random.RandomPassword(name, length=40, special=False, opts=opts)
    return pulumi.Output.secret(password.result)


def in_cluster_url(meta: FleetMeta, password: pulumi.Input[str]) -> pulumi.Output[str]:
    """The in-cluster Redis' URL (a secret): known before the StatefulSet exists, so the janitor's Secret can hold
    it too."""
    host = f"{REDIS}.{meta.namespace}.svc.cluster.local:{REDIS_PORT}"
    return pulumi.Output.secret(pulumi.Output.concat("redis://:", password, "@", host, "/0"))


class InClusterRedis(pulumi.ComponentResource):
    """Service `copilot-redis` (clients) + headless Service `copilot-redis-headless` (the StatefulSet's) +
    StatefulSet `copilot-redis` (data on a volumeClaimTemplate); the password Secret is one of the fleet's Secrets
    (see secrets.py)."""

    url: pulumi.Output[str]

    def __init__(self, name: str, args: InClusterRedisArgs, password: pulumi.Output[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:kubernetes:InClusterRedis", name, None, opts)
        meta = args.meta
        spec = meta.spec
        child = child_options(self, opts)
        selector = meta.selector(LEASE_STORE)
        port = {"name": "redis", "port": REDIS_PORT, "target_port": "redis", "protocol": "TCP"}
        self.service = core.Service(
            REDIS,
            metadata=meta.metadata(REDIS, LEASE_STORE),
            spec={"type": "ClusterIP", "selector": selector, "ports": [port]},
            opts=child,
        )
        self.headless_service = core.Service(
            HEADLESS_SERVICE,
            metadata=meta.metadata(HEADLESS_SERVICE, LEASE_STORE),
            spec={"cluster_ip": "None", "selector": selector, "ports": [port], "publish_not_ready_addresses": False},
            opts=child,
        )
        tcp = {"tcp_socket": {"port": "redis"}}
        ping = {"exec": {"command": [
            "/bin/sh", "-c",
            f'REDISCLI_AUTH="$(sed -n "s/^requirepass //p" {AUTH_FILE})" redis-cli -p {REDIS_PORT} ping '
            "| grep -q PONG"]}}
        auth = secrets.redis_auth_config_ref()
        # Store mode: Redis holds every session (docs/session-store.md): durable as the stack says, never evicting,
        # one ACL user per store scope; its memory is its own (request = limit) and writes stop at half of it.
        memory_limit = spec.redis.memory_limit(spec.store_mode)
        appendfsync = spec.session_state.appendfsync if spec.store_mode else "everysec"
        memory_request = memory_limit if spec.store_mode else "64Mi"
        store_args: list[str] = []
        store_items: list[dict[str, str]] = []
        if spec.store_mode:
            store_args = store.redis_store_args(quantity_value(memory_limit), STORE_FILE)
            store_items = [{"key": store.STORE_CONFIG_KEY, "path": "store.conf"}]
        template_metadata: dict[str, object] = {"labels": meta.labels(LEASE_STORE),
                                                "annotations": pod_annotations(meta, args.secrets_checksum)}
        self.stateful_set = apps.StatefulSet(
            REDIS,
            metadata=meta.metadata(REDIS, LEASE_STORE),
            spec={
                "service_name": HEADLESS_SERVICE,
                "replicas": 1,
                "selector": {"match_labels": selector},
                "template": {
                    "metadata": template_metadata,
                    "spec": {
                        "automount_service_account_token": False,
                        # No Service variables: Redis reads none, and they would change with every Service.
                        "enable_service_links": False,
                        "security_context": pod_security_context(REDIS_UID),
                        "termination_grace_period_seconds": 30,
                        "containers": [{
                            "name": "redis",
                            "image": spec.redis.image,
                            "image_pull_policy": image_pull_policy(spec.redis.image),
                            "command": ["redis-server"],
                            # The config file first (the password), then the options.
                            "args": [AUTH_FILE, "--appendonly", "yes", "--appendfsync", appendfsync, "--dir", DATA,
                                     "--port", str(REDIS_PORT), *store_args],
                            "ports": [{"name": "redis", "container_port": REDIS_PORT, "protocol": "TCP"}],
                            "readiness_probe": {**ping, "period_seconds": 5, "timeout_seconds": 3},
                            "liveness_probe": {**tcp, "period_seconds": 20, "timeout_seconds": 5},
                            # Data is on its volume; only /tmp (64Mi) and its output are node-local.
                            "resources": {"requests": {"cpu": "50m", "memory": memory_request,
                                                       "ephemeral-storage": "32Mi"},
                                          "limits": {"cpu": "500m", "memory": memory_limit,
                                                     "ephemeral-storage": "128Mi"}},
                            "security_context": container_security_context(),
                            "volume_mounts": [{"name": "data", "mount_path": DATA},
                                              {"name": "auth", "mount_path": AUTH_DIR, "read_only": True},
                                              {"name": "tmp", "mount_path": "/tmp"}],
                        }],
                        "volumes": [
                            {"name": "tmp", "empty_dir": {"size_limit": "64Mi"}},
                            # 0440: the owner (root) and the fsGroup (Redis' group) read it, nobody else.
                            {"name": "auth", "secret": {"secret_name": auth.name, "default_mode": 0o440,
                                                        "items": [{"key": auth.key, "path": "auth.conf"},
                                                                  *store_items]}},
                        ],
                        **placement(meta),
                    },
                },
                "volume_claim_templates": [{
                    "metadata": {"name": "data", "labels": meta.labels(LEASE_STORE)},
                    "spec": {"access_modes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": spec.redis.storage_size}}},
                }],
            },
            opts=child,
        )
        self.url = in_cluster_url(meta, password)
        self.register_outputs({"url": self.url})
