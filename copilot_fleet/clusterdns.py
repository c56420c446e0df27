"""Cluster DNS names in a target, and the Kubernetes objects behind them.

The target of a Kubernetes or Azure (AKS) stack names its servers by cluster DNS (components/kubernetes):

```
copilot-cli.<ns>.svc.cluster.local:4321                                the load-balanced Service (endpoint)
copilot-cli-0.copilot-cli-headless.<ns>.svc.cluster.local:4321         one replica: a StatefulSet pod, by hostname
copilot-user-alice.<ns>.svc.cluster.local:4321                         a per-user server's Service
redis://:<password>@copilot-redis.<ns>.svc.cluster.local:6379/0        in-cluster Redis (the lease store)
```

Such a name resolves only inside the cluster. From outside, the same server is reached through the API server
(`kubectl port-forward pod/<pod> | svc/<service>`), which needs to know the object and its namespace: both are in
the name. Anything else (an IP, a public load balancer, Azure Cache for Redis) is not a cluster name and is used
as it is.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_NAMESPACE = "copilot-fleet"  # fleet:namespace's default


@dataclass(frozen=True)
class ClusterAddress:
    """A `host:port` of the target that names an object inside a cluster."""

    address: str  # as written in the target
    host: str
    port: int
    namespace: str
    service: str
    pod: str | None = None  # set for `<pod>.<headless service>.<ns>.svc...`: the StatefulSet pod itself

    @property
    def resource(self) -> str:
        """What `kubectl port-forward` takes: the pod when the name is a pod's, else the Service."""
        return f"pod/{self.pod}" if self.pod else f"svc/{self.service}"


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_cluster_address(address: str) -> ClusterAddress | None:
    """The object behind a cluster DNS name (`<svc>.<ns>.svc[.<cluster domain>]`, or with the pod's hostname in
    front), or None for any other address."""
    host, port = split_host_port(address)
    labels = host.lower().split(".")
    if "svc" not in labels:
        return None
    at = labels.index("svc")
    before = labels[:at]
    if len(before) == 2:
        return ClusterAddress(address, host, port, namespace=before[1], service=before[0])
    if len(before) == 3:
        return ClusterAddress(address, host, port, namespace=before[2], service=before[1], pod=before[0])
    return None


def redis_address(url: str) -> str | None:
    """`host:port` of a redis:// or rediss:// URL (the password is not part of it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return None
    return f"{parts.hostname}:{parts.port or 6379}"


def replace_redis_address(url: str, address: str) -> str:
    """The URL with its host:port replaced, password, database and options kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{address}" if "@" in parts.netloc else address
    return parts._replace(netloc=netloc).geturl()


def resolves(host: str) -> bool:
    """Whether this machine can resolve the name (inside the cluster, or with cluster DNS configured)."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def namespaces(addresses: Iterable[ClusterAddress]) -> list[str]:
    seen: list[str] = []
    for a in addresses:
        if a.namespace not in seen:
            seen.append(a.namespace)
    return seen
