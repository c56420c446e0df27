"""Azure Cache for Redis as the lease store of the shared patterns: TLS only, and no key ever evicted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pulumi
from pulumi_azure_native import redis

# Azure Cache for Redis serves TLS on 6380; the plain port 6379 stays closed (enable_non_ssl_port False).
TLS_PORT = 6380


def redis_url(host: str, key: str, port: int = TLS_PORT) -> str:
    """The URL the fleet client's lease store takes (redis-py understands rediss:// as TLS)."""
    return f"rediss://:{key}@{host}:{port}/0"


def sku_family(sku: Literal["Basic", "Standard", "Premium"], capacity: int) -> redis.SkuFamily:
    """C (Basic/Standard, sizes 0-6) or P (Premium, sizes 1-5); other combinations do not exist."""
    if sku == "Premium":
        if not 1 <= capacity <= 5:
            raise ValueError(f"fleet:azure.redisCapacity: Premium caches come in sizes 1-5 (P1-P5), got {capacity}")
        return redis.SkuFamily.P
    return redis.SkuFamily.C


@dataclass(frozen=True)
class LeaseCacheArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    cache_name: pulumi.Input[str]
    sku: Literal["Basic", "Standard", "Premium"]
    capacity: int
    tags: dict[str, str]


class LeaseCache(pulumi.ComponentResource):
    host_name: pulumi.Output[str]
    access_key: pulumi.Output[str]  # secret
    url: pulumi.Output[str]  # secret: rediss://:<key>@<host>:6380/0

    def __init__(self, name: str, args: LeaseCacheArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:azure:LeaseCache", name, None, opts)
        family = sku_family(args.sku, args.capacity)
        cache = redis.Redis(
            f"{name}-redis",
            name=args.cache_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=redis.SkuArgs(name=args.sku, family=family, capacity=args.capacity),
            enable_non_ssl_port=False,
            minimum_tls_version=redis.TlsVersion.TLS_VERSION_1_2,
            redis_version="6",
            # A lease that is evicted under memory pressure is a lock silently released: refuse writes instead.
            redis_configuration=redis.RedisCommonPropertiesRedisConfigurationArgs(maxmemory_policy="noeviction"),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        keys = redis.list_redis_keys_output(name=cache.name, resource_group_name=args.resource_group_name,
                                            opts=pulumi.InvokeOutputOptions(parent=self))
        self.host_name = cache.host_name
        self.access_key = pulumi.Output.secret(keys.primary_key)
        self.url = pulumi.Output.secret(pulumi.Output.all(cache.host_name, keys.primary_key, cache.ssl_port).apply(
            lambda v: redis_url(v[0], v[1], int(v[2] or TLS_PORT))))
        self.register_outputs({"host_name": self.host_name, "url": self.url})
