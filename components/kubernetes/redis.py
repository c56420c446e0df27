"""The in-cluster lease store: one Redis with a generated password and append-only persistence.

Deployed for `shared-cli` and `shared-session` when `fleet:redis.mode` is in-cluster. The password reaches Redis
only through the environment (`--requirepass $(REDIS_PASSWORD)`, expanded by the kubelet), never in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_random as random

from components.common import child_options
from components.kubernetes import secrets
from components.kubernetes.meta import LEASE_STORE, REDIS, REDIS_PORT, FleetMeta
from components.kubernetes.pod import container_security_context, pod_security_context

# The `redis` user of the official images (alpine and debian variants alike).
REDIS_UID = 999
DATA = "/data"


@dataclass(frozen=True)
class InClusterRedisArgs:
    meta: FleetMeta


def redis_password(name: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    password = random.RandomPassword(name, length=40, special=False, opts=opts)
    return pulumi.Output.secret(password.result)


def in_cluster_url(meta: FleetMeta, password: pulumi.Input[str]) -> pulumi.Output[str]:
    """The in-cluster Redis' URL (a secret): known before the StatefulSet exists, so the janitor's Secret can hold
    it too."""
    host = f"{REDIS}.{meta.namespace}.svc.cluster.local:{REDIS_PORT}"
    return pulumi.Output.secret(pulumi.Output.concat("redis://:", password, "@", host, "/0"))


class InClusterRedis(pulumi.ComponentResource):
    """Service `copilot-redis` + StatefulSet `copilot-redis` (data on a volumeClaimTemplate); the password Secret
    is one of the fleet's Secrets (see secrets.py)."""

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
        tcp = {"tcp_socket": {"port": "redis"}}
        ping = {"exec": {"command": ["/bin/sh", "-c",
                                     'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p 6379 ping | grep -q PONG']}}
        self.stateful_set = apps.StatefulSet(
            REDIS,
            metadata=meta.metadata(REDIS, LEASE_STORE),
            spec={
                "service_name": REDIS,
                "replicas": 1,
                "selector": {"match_labels": selector},
                "template": {
                    "metadata": {"labels": meta.labels(LEASE_STORE)},
                    "spec": {
                        "automount_service_account_token": False,
                        # No Service variables: Redis reads none, and they would change with every Service.
                        "enable_service_links": False,
                        "security_context": pod_security_context(REDIS_UID),
                        "termination_grace_period_seconds": 30,
                        "containers": [{
                            "name": "redis",
                            "image": spec.redis.image,
                            "image_pull_policy": "IfNotPresent",
                            "command": ["redis-server"],
                            "args": ["--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes",
                                     "--appendfsync", "everysec", "--dir", DATA, "--port", str(REDIS_PORT)],
                            "env": [secrets.redis_password_ref().env("REDIS_PASSWORD")],
                            "ports": [{"name": "redis", "container_port": REDIS_PORT, "protocol": "TCP"}],
                            "readiness_probe": {**ping, "period_seconds": 5, "timeout_seconds": 3},
                            "liveness_probe": {**tcp, "period_seconds": 20, "timeout_seconds": 5},
                            # Data is on its volume; only /tmp (64Mi) and its output are node-local.
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "32Mi"},
                                          "limits": {"cpu": "500m", "memory": "256Mi",
                                                     "ephemeral-storage": "128Mi"}},
                            "security_context": container_security_context(),
                            "volume_mounts": [{"name": "data", "mount_path": DATA},
                                              {"name": "tmp", "mount_path": "/tmp"}],
                        }],
                        "volumes": [{"name": "tmp", "empty_dir": {"size_limit": "64Mi"}}],
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
