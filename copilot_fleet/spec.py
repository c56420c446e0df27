"""The fleet spec: stack config (namespace `fleet`) validated once into one typed object.

Every renderer (Kubernetes, Azure, the local fleet, the offline render) starts from a `FleetSpec`. A bad or missing
value raises `ConfigError` before a single resource is registered or process started; its message names each
offending key as it is spelled in stack config (`fleet:storage.accessMode`) and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from copilot_fleet import CLI_VERSION, config_messages
from copilot_fleet.config_section import Section as _Section
from copilot_fleet.errors import FleetError
from copilot_fleet.isolation import Isolation, shares_session_state
from copilot_fleet.spec_kubernetes import (
    Affinity,
    Annotations,
    ImagePullCredentials,
    Labels,
    ObjectName,
    Toleration,
    registry_of,
    same_registry,
)

NAMESPACE = "fleet"

# What a Pulumi-encrypted value (`secure: v1:...`) reads as where no engine can decrypt it (offline render).
# Format checks skip it; the render masks every secret anyway, and no real server ever receives it.
OFFLINE_SECRET = "offline-placeholder-secret"

Platform = Literal["kubernetes", "azure", "local"]
LogLevel = Literal["none", "error", "warning", "info", "debug", "all"]

# The Secret the stack makes from fleet:imagePullCredentials (kubernetes.io/dockerconfigjson).
IMAGE_PULL_SECRET = "copilot-image-pull"

# Log levels that write full prompts and request bodies to $COPILOT_HOME/logs (measured with CLI 1.0.102).
PROMPT_LOGGING_LEVELS = frozenset({"debug", "all"})


class ConfigError(FleetError, ValueError):
    """Stack config that cannot be deployed. `problems` holds one line per offending key."""

    def __init__(self, problems: list[str], stack: str | None = None) -> None:
        self.problems = problems
        where = f"stack {stack!r}: " if stack else ""
        super().__init__(f"{where}invalid fleet config:\n" + "\n".join(f"  - {p}" for p in problems))


# --- scalar types -----------------------------------------------------------------------------------------------

# ASCII digits and a unit letter, nothing between them: `re`'s \d would also take other scripts' digits ("٣h").
_DURATION = re.compile(r"([0-9]{1,12})([smhd]?)", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 3650 * 86400  # ten years: anything longer is a typo, and would overflow some timers
_DURATION_HINT = "a duration such as 1800, '90s', '30m', '24h' or '7d' (ASCII digits, then s, m, h or d)"


def parse_duration(value: object) -> int:
    """Seconds from an int or a string like '90s', '30m', '24h', '7d', at most MAX_DURATION_SECONDS."""
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, not a boolean")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        seconds = int(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"a duration of at most 3650 days is allowed, got {value!r}")
    return seconds


Duration = Annotated[int, BeforeValidator(parse_duration)]

_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_QUANTITY_FACTORS = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3, "Ti": 1024.0**4,
}


def quantity_value(q: str) -> float:
    """The number a Kubernetes quantity stands for ('512Mi' -> 536870912.0, '250m' -> 0.25)."""
    m = _QUANTITY.fullmatch(q)
    if not m:
        raise ValueError(f"{q!r} is not a Kubernetes quantity (examples: 250m, 1, 512Mi, 10Gi)")
    return float(m.group(1)) * _QUANTITY_FACTORS[m.group(3)]


def _check_quantity(value: str) -> str:
    quantity_value(value)
    return value


Quantity = Annotated[str,
                     BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v),
                     AfterValidator(_check_quantity)]

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _check_dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError("must be a DNS label: lowercase letters, digits and '-', starting and ending "
                         "with a letter or digit, at most 63 characters")
    return value


DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]

# A user id must be usable in resource names (per-user servers) and in session ids: a DNS label of at most 40
# characters. It may contain '-', which the fleet client's session ids handle (an owner check that splits an id on
# '-' would not).
# 39 at most: the StatefulSet `copilot-user-<id>` must stay within 52 characters (its pods get a revision label).
_USER_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,37}[a-z0-9])?$")


def _check_user_id(value: str) -> str:
    if not _USER_ID.fullmatch(value):
        raise ValueError("user ids are 1-39 lowercase letters, digits and '-', starting and ending with a letter "
                         f"or digit, got {value!r}")
    return value


UserId = Annotated[str, AfterValidator(_check_user_id)]


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]

_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")


def _check_cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise ValueError(f"must be a 5-field cron schedule such as '*/15 * * * *', got {value!r}")
    return value


Cron = Annotated[str, AfterValidator(_check_cron)]


def _check_image(value: str) -> str:
    # A pinned image: a tag other than 'latest', or a digest. Unpinned images drift away from the SDK's CLI.
    if "@sha256:" in value:
        return value
    name, sep, tag = value.rpartition(":")
    if not sep or "/" in tag or not name:
        raise ValueError(f"must pin a tag or digest (for example registry.example.com/copilot-cli:{CLI_VERSION}), "
                         f"got {value!r}")
    if tag == "latest":
        raise ValueError("must not use ':latest': pin the tag that carries the CLI version the SDK expects "
                         f"({CLI_VERSION})")
    return value


Image = Annotated[str, AfterValidator(_check_image)]

Port = Annotated[int, Field(ge=1024, le=65535)]


# --- sections ---------------------------------------------------------------------------------------------------

class ProviderSpec(_Section):
    """A BYOK model endpoint used by every session (no GitHub authentication needed)."""

    type: Literal["openai", "azure", "anthropic"] = "openai"
    base_url: HttpUrl
    api_key: SecretStr | None = None
    wire_api: Literal["completions", "responses"] = "completions"
    model: str | None = None


class UserSpec(_Section):
    """A user of a `per-user` fleet: their own server, storage, connection token and, optionally, GitHub token."""

    id: UserId
    github_token: SecretStr | None = None


class StorageSpec(_Section):
    storage_class: str | None = None
    size: Quantity = "10Gi"
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    # Each replica's own COPILOT_HOME (config, the SQLite session store): never shared.
    home_size: Quantity = "1Gi"
    # Whether COPILOT_HOME outlives the pod (a ReadWriteOnce volume per replica) or lives as long as it (an emptyDir).
    # None: a volume for the shared patterns' few replicas, an emptyDir per-user (a disk per user runs into the
    # nodes' attach limits). Resume never needs it: the history is in session-state/.
    persistent_home: bool | None = None
    # The storage class of each replica's COPILOT_HOME volume (persistentHome): None is the cluster's default class.
    home_storage_class: ObjectName | None = None


class RedisSpec(_Section):
    mode: Literal["in-cluster", "external"] = "in-cluster"
    url: SecretStr | None = None
    # An external store reached with redis:// sends its password (AUTH) and every lease in clear: refused unless the
    # store is in the cluster, or this says the network on the way is trusted.
    accept_plaintext: bool = False
    # 7.2.12: 7.2.11 fixed Lua CVEs (CVE-2025-49844 and others) the leases' scripts would expose.
    image: Image = "redis:7.2.12-alpine"
    storage_size: Quantity = "1Gi"
    # The in-cluster Redis container's memory (request and limit). None: 256Mi for leases only; 1Gi in store mode,
    # where Redis holds every session and stops taking writes at half of it (maxmemory, noeviction): the other half
    # is for an AOF rewrite's copy-on-write and client buffers, so the kernel's OOM killer never ends it.
    memory: Quantity | None = None

    def memory_limit(self, store_mode: bool) -> str:
        return self.memory or ("1Gi" if store_mode else "256Mi")


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block such as 203.0.113.0/24 ({exc})") from None


class LoadBalancerTls(_Section):
    """The TLS-terminating front the user runs before a LoadBalancer or NodePort Service (the CLI's port speaks
    plain TCP): recorded in stack config, where the next reader of the stack finds it."""

    terminated_by: Annotated[str, Field(min_length=3, max_length=200)]


SessionStateMode = Literal["volume", "store"]


class SessionStateSpec(_Section):
    """Where the sessions' state lives. `volume`: each server's session-state/ directory, shared between the
    replicas of a shared pattern on one volume (ReadWriteMany). `store`: Redis, served to each CLI by its session
    filesystem provider (copilot_fleet.sessionstore): no session volume, and every write fenced by the session's
    lease (docs/session-store.md)."""

    mode: SessionStateMode = "volume"
    # The store's durability on the fleet's own Redis: what a machine crash may lose (docs/session-store.md).
    appendfsync: Literal["everysec", "always"] = "everysec"


class AutoscalingSpec(_Section):
    """A HorizontalPodAutoscaler (autoscaling/v2) for the shared patterns' CLI replicas: between fleet:replicas and
    `maxReplicas`, on the replicas' CPU use relative to their request (fleet:resources.requests.cpu). Scaling in
    removes one replica per `scaleDownPeriod` at most, after the use stayed low for `scaleDownStabilization`: each
    removed replica stops through its grace period (sessions on it resume on the others)."""

    max_replicas: Annotated[int, Field(ge=2, le=200)]
    cpu_utilization: Annotated[int, Field(ge=10, le=100)] = 70
    scale_down_stabilization: Annotated[Duration, Field(ge=0, le=3600)] = 300
    scale_down_period: Annotated[Duration, Field(ge=15, le=1800)] = 60


class LoadBalancerSpec(_Section):
    service_type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = "ClusterIP"
    session_affinity: Literal["None", "ClientIP"] = "None"
    # Clients outside the cluster: loadBalancerSourceRanges of the Service and ipBlock peers of the NetworkPolicy.
    source_ranges: list[Annotated[str, AfterValidator(_check_cidr)]] = Field(default_factory=list)
    # Outside clients reach the CLI's plain-TCP port (the token, every prompt): one of the two must say how it is
    # protected (see _exposure_problems).
    tls: LoadBalancerTls | None = None
    accept_plaintext: bool = False


NetworkPort = Annotated[int, Field(ge=1, le=65535)]


class EgressRule(_Section):
    """One more destination the CLI servers may reach: a CIDR block, or pods of a namespace in the cluster."""

    cidr: Annotated[str, AfterValidator(_check_cidr)] | None = None
    namespace: DnsLabel | None = None
    pod_labels: dict[str, str] | None = None  # with `namespace`: only these pods of it
    ports: list[NetworkPort] = Field(min_length=1)
    protocol: Literal["TCP", "UDP"] = "TCP"

    @model_validator(mode="after")
    def _one_destination(self) -> EgressRule:
        if (self.cidr is None) == (self.namespace is None):
            raise ValueError("give exactly one of cidr (an address block) and namespace (pods in the cluster)")
        if self.pod_labels is not None and self.namespace is None:
            raise ValueError("podLabels selects pods of a namespace: give namespace too")
        return self

    def covers(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, namespace: str | None,
               port: int) -> bool:
        if port not in self.ports or self.protocol != "TCP":
            return False
        if namespace is not None:
            return self.namespace == namespace
        return (address is not None and self.cidr is not None
                and address.version == ipaddress.ip_network(self.cidr).version
                and address in ipaddress.ip_network(self.cidr))


class EgressSpec(_Section):
    """Where the CLI servers' connections may go (NetworkPolicy egress; a session's tool run is untrusted code
    running with the server's network). `restricted`: DNS, public addresses on `publicPorts` (GitHub and public
    model endpoints), and the `allow` rules; never private, link-local (cloud metadata) or in-cluster addresses
    unless allowed. `open`: no egress policy."""

    mode: Literal["restricted", "open"] = "restricted"
    public_ports: list[NetworkPort] = Field(default_factory=lambda: [443])
    allow: list[EgressRule] = Field(default_factory=list)


class ResourceAmounts(_Section):
    cpu: Quantity
    memory: Quantity
    # Node-local disk: the CLI's emptyDirs (tmp, logs, the agents' workspace). None: the platform's default.
    ephemeral_storage: Quantity | None = None


class ResourcesSpec(_Section):
    # Idle CLI about 295 MiB, 3.4-4.1 MiB more per attached session (docs/config.md cites where each was measured):
    # 512Mi request, 2Gi limit fit the 50-session cap.
    requests: ResourceAmounts = ResourceAmounts(cpu="250m", memory="512Mi")
    limits: ResourceAmounts = ResourceAmounts(cpu="2", memory="2Gi")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourcesSpec:
        for kind in ("cpu", "memory", "ephemeral_storage"):
            req, lim = getattr(self.requests, kind), getattr(self.limits, kind)
            if req is not None and lim is not None and quantity_value(req) > quantity_value(lim):
                key = to_camel(kind)
                raise ValueError(f"requests.{key} ({req}) is larger than limits.{key} ({lim})")
        return self


class LocalSpec(_Section):
    """Where the local fleet listens on 127.0.0.1. Defaults suit one stack; give each stack its own range to run
    several side by side."""

    endpoint_port: Port = 4321
    replica_base_port: Port = 4401
    redis_port: Port = 6390
    model_port: Port = 18080


class AzureSpec(_Section):
    location: str = "westeurope"
    resource_group_name: str | None = None
    node_count: Annotated[int, Field(ge=1, le=100)] = 2
    node_vm_size: str = "Standard_D4s_v5"
    kubernetes_version: str | None = None
    file_share_quota_gb: Annotated[int, Field(ge=100, le=102400)] = 100
    redis_sku: Literal["Basic", "Standard", "Premium"] = "Standard"
    redis_capacity: Annotated[int, Field(ge=0, le=6)] = 1
    log_retention_days: Annotated[int, Field(ge=30, le=730)] = 30
    # An existing Azure Container Registry holding fleet:image: the cluster's kubelet identity gets AcrPull on it in
    # the same `pulumi up`, so the first image pull works.
    container_registry_id: str | None = None
    # Pulumi `protect` on what holds the users' data and credentials (storage accounts, shares, the vault): neither
    # `pulumi destroy` nor a change that replaces them deletes them until this is set false (and applied) first.
    protect_data: bool = True


class InfiniteSessionsSpec(_Section):
    """The SDK's infinite-session settings, passed by the fleet client on create: context-use fractions."""

    enabled: bool = True
    background_compaction_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.80
    buffer_exhaustion_threshold: Annotated[float, Field(gt=0, le=1)] = 0.95

    @model_validator(mode="after")
    def _ordered(self) -> InfiniteSessionsSpec:
        if self.background_compaction_threshold >= self.buffer_exhaustion_threshold:
            raise ValueError("backgroundCompactionThreshold must be below bufferExhaustionThreshold")
        return self


class RecycleSpec(_Section):
    """When `copilot-fleet recycle` drains and restarts a CLI server: its resident memory passed `maxRssMb` MiB,
    or it served `maxSessions` session creates + resumes since it started (the CLI never gives memory back).
    None: that bound is off."""

    max_rss_mb: Annotated[int, Field(ge=64, le=65536)] | None = None
    max_sessions: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # Local fleets: how often the supervised recycler checks (Kubernetes: the probes' own periods).
    check_every: Annotated[Duration, Field(ge=10, le=86400)] = 300

    @property
    def bounded(self) -> bool:
        return self.max_rss_mb is not None or self.max_sessions is not None


class FleetSpec(_Section):
    """The whole of one environment's fleet, validated."""

    isolation: Isolation
    platform: Platform
    replicas: Annotated[int, Field(ge=1, le=50)] = 2
    image: Image | None = None
    cli_version: str = CLI_VERSION
    port: Port = 4321
    users: list[UserSpec] = Field(default_factory=list)
    github_token: SecretStr | None = None
    provider: ProviderSpec | None = None
    model: str = "gpt-4.1"
    storage: StorageSpec = StorageSpec()
    session_state: SessionStateSpec = SessionStateSpec()
    # Shared patterns on kubernetes/azure: scale the CLI replicas between fleet:replicas and maxReplicas.
    autoscaling: AutoscalingSpec | None = None
    redis: RedisSpec = RedisSpec()
    load_balancer: LoadBalancerSpec = LoadBalancerSpec()
    session_ttl: Duration = 7 * 86400
    idle_timeout: Duration = 30 * 60
    resources: ResourcesSpec = ResourcesSpec()
    log_level: LogLevel = "info"
    allow_debug_logging: bool = False
    namespace: DnsLabel = "copilot-fleet"
    otlp_endpoint: HttpUrl | None = None
    client_selector: dict[str, str] = Field(default_factory=lambda: {"copilot-fleet/client": "true"})
    egress: EgressSpec = EgressSpec()
    # Client pods in other namespaces whose namespace has these labels may connect (with client_selector).
    client_namespace_selector: dict[str, str] | None = None
    # per-user: pods of a trusted backend that serves every user (it holds every user's connection token and keeps
    # users apart itself) may reach every user's server; client pods otherwise reach only their own user's.
    backend_selector: dict[str, str] | None = None
    janitor_schedule: Cron = "*/15 * * * *"
    # Kubernetes keys passed through to the pods and Services (copilot_fleet/spec_kubernetes.py).
    image_pull_secrets: list[ObjectName] = Field(default_factory=list)
    image_pull_credentials: ImagePullCredentials | None = None
    node_selector: Labels = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: Affinity | None = None
    pod_annotations: Annotations = Field(default_factory=dict)
    service_annotations: Annotations = Field(default_factory=dict)
    max_sessions_per_replica: Annotated[int, Field(ge=1, le=1000)] = 50
    termination_grace_seconds: Annotated[int, Field(ge=5, le=3600)] = 60
    infinite_sessions: InfiniteSessionsSpec = InfiniteSessionsSpec()
    recycle: RecycleSpec = RecycleSpec()
    local: LocalSpec = LocalSpec()
    azure: AzureSpec = AzureSpec()

    # Set by `load_spec`, not by config: which stack this is.
    stack: str = Field(default="", exclude=True)

    @property
    def shares_session_state(self) -> bool:
        """Shared patterns keep session-state/ on one volume; every such topology needs a lease per session."""
        return shares_session_state(self.isolation)

    @property
    def store_mode(self) -> bool:
        """Session state in the store (fleet:sessionState.mode store), not on volumes."""
        return self.session_state.mode == "store"

    @property
    def uses_lease_store(self) -> bool:
        """A Redis for leases: the shared patterns (one session-state/ for every replica), and every pattern in store
        mode, whose writes are fenced by the lease and whose state lives in that Redis."""
        return self.shares_session_state or self.store_mode

    @property
    def user_ids(self) -> list[str]:
        return [u.id for u in self.users]

    @property
    def home_is_persistent(self) -> bool:
        """COPILOT_HOME on a volume of its own per replica (storage.persistentHome; default: not for per-user)."""
        if self.storage.persistent_home is not None:
            return self.storage.persistent_home
        # Store mode: the home holds the CLI's config and logs only (no session, no session index): an emptyDir.
        return self.shares_session_state and not self.store_mode

    @property
    def session_model(self) -> str:
        return (self.provider.model if self.provider and self.provider.model else None) or self.model

    @model_validator(mode="after")
    def _consistent(self) -> FleetSpec:
        problems = _cross_field_problems(self)
        if problems:
            raise ValueError(" | ".join(problems))
        return self


def _cross_field_problems(spec: FleetSpec) -> list[str]:
    """Contradictions between keys: each message starts with the key to change."""
    p: list[str] = []
    set_keys = spec.model_fields_set
    if spec.isolation == "per-user":
        if not spec.users:
            p.append("fleet:users: per-user needs at least one user (a list of {id, githubToken?})")
        if "replicas" in set_keys and spec.replicas != 1:
            p.append(f"fleet:replicas: per-user runs exactly one server per user; remove it or set 1 "
                     f"(got {spec.replicas})")
        if "redis" in set_keys and not spec.store_mode:
            p.append("fleet:redis: per-user keeps each user's session state on the user's own volume and needs no "
                     "lease store; remove fleet:redis, or set fleet:sessionState.mode store (which keeps session "
                     "state in that Redis)")
        if spec.backend_selector is not None and not spec.backend_selector:
            p.append("fleet:backendSelector: an empty selector would admit every pod to every user's server; give "
                     "the labels of your backend's pods")
    else:
        if spec.users:
            p.append(f"fleet:users: only per-user deploys a server per user; {spec.isolation} routes every user "
                     "through the shared replicas (remove fleet:users or use isolation per-user)")
        if spec.backend_selector is not None:
            p.append(f"fleet:backendSelector: only for per-user; in {spec.isolation} every client pod "
                     "(fleet:clientSelector) reaches the shared servers")
        if spec.storage.access_mode != "ReadWriteMany" and not spec.store_mode:
            p.append(f"fleet:storage.accessMode: {spec.isolation} shares session-state/ between replicas, so it "
                     f"must be ReadWriteMany (got {spec.storage.access_mode})")
    if spec.uses_lease_store:
        if spec.redis.mode == "external" and spec.redis.url is None:
            p.append("fleet:redis.url: redis.mode external needs the URL, set as a secret "
                     "(pulumi config set --secret --path 'fleet:redis.url' rediss://...)")
        if spec.redis.mode == "in-cluster" and spec.redis.url is not None:
            p.append("fleet:redis.url: only for redis.mode external; in-cluster Redis gets a generated password")
        url = spec.redis.url.get_secret_value() if spec.redis.url is not None else None
        if url is not None and url != OFFLINE_SECRET and not url.startswith(("redis://", "rediss://")):
            p.append("fleet:redis.url: must start with redis:// or rediss://")
        elif url is not None and url != OFFLINE_SECRET:
            p.extend(_plaintext_store_problems(url, spec.redis.accept_plaintext))
        if spec.redis.accept_plaintext and spec.redis.mode != "external":
            p.append("fleet:redis.acceptPlaintext: only for redis.mode external (the URL you give); the in-cluster "
                     "store is reached over the cluster's pod network")
    p.extend(_session_state_problems(spec))
    ids = spec.user_ids
    dupes = sorted(u for u, seen in Counter(ids).items() if seen > 1)  # one pass: fleets have thousands of users
    if dupes:
        p.append(f"fleet:users: duplicate user ids {dupes}")
    if spec.log_level in PROMPT_LOGGING_LEVELS and not spec.allow_debug_logging:
        p.append(f"fleet:logLevel: {spec.log_level} writes full prompts and request bodies to disk; use none, "
                 "error, warning or info, or set fleet:allowDebugLogging true to accept that")
    if spec.cli_version != CLI_VERSION:
        p.append(f"fleet:cliVersion: github-copilot-sdk pins the CLI at exactly {CLI_VERSION} (got "
                 f"{spec.cli_version}); change both together")
    if spec.platform in ("kubernetes", "azure"):
        if spec.image is None:
            p.append(f"fleet:image: {spec.platform} needs a pinned CLI image (build images/cli/Dockerfile and push "
                     f"it, e.g. registry.example.com/copilot-cli:{CLI_VERSION})")
        elif "@sha256:" not in spec.image and not spec.image.rpartition(":")[2].startswith(spec.cli_version):
            p.append(f"fleet:image: the tag must carry the pinned CLI version {spec.cli_version} (or use a digest), "
                     f"got {spec.image}")
        every_user_has_token = bool(spec.users) and all(u.github_token for u in spec.users)
        if spec.github_token is None and spec.provider is None and not every_user_has_token:
            p.append("fleet:githubToken / fleet:provider: sessions need a credential: set a GitHub token as a "
                     "secret (pulumi config set --secret fleet:githubToken ...) or a BYOK provider "
                     "(fleet:provider with baseUrl and a secret apiKey)")
        if spec.provider is not None and spec.provider.api_key is None:
            p.append("fleet:provider.apiKey: a deployed fleet's provider needs its API key, set as a secret "
                     "(pulumi config set --secret --path 'fleet:provider.apiKey' ...)")
        lb = spec.load_balancer
        if lb.service_type != "ClusterIP" and not lb.source_ranges:
            p.append(f"fleet:loadBalancer.sourceRanges: a {lb.service_type} Service is for clients outside the "
                     "cluster, and the fleet's NetworkPolicies admit those only from these CIDRs: set your clients' "
                     "address ranges, or use serviceType ClusterIP for clients inside the cluster")
        p.extend(_exposure_problems(spec))
        p.extend(_image_pull_problems(spec))
        if spec.storage.home_storage_class is not None and not spec.home_is_persistent:
            p.append("fleet:storage.homeStorageClass: COPILOT_HOME is an emptyDir here (storage.persistentHome is "
                     f"{'false' if spec.storage.persistent_home is False else 'unset, false for per-user'}), so no "
                     "volume would use the class: set storage.persistentHome true, or remove homeStorageClass")
    if spec.platform in ("kubernetes", "azure") and spec.egress.mode == "restricted":
        endpoints = [("fleet:provider.baseUrl", spec.provider.base_url)] if spec.provider is not None else []
        if spec.otlp_endpoint is not None:
            endpoints.append(("fleet:otlpEndpoint", spec.otlp_endpoint))
        for key, url in endpoints:
            problem = egress_problem(url, spec.egress, spec.namespace)
            if problem:
                p.append(f"{key}: {problem}")
    if (spec.platform == "kubernetes" and spec.storage.access_mode == "ReadWriteMany"
            and spec.storage.storage_class is None and not spec.store_mode):
        p.append("fleet:storage.storageClass: the session volume is ReadWriteMany and, without a class, lands on the "
                 "cluster's default class, which is ReadWriteOnce on most clusters: the claim would stay Pending. "
                 "Name a class that offers ReadWriteMany (for example nfs-client, azurefile-csi, efs-sc)")
    if spec.platform == "local":
        p.extend(_local_port_problems(spec))
    if spec.platform == "azure":
        p.extend(_azure_problems(spec))
    if spec.platform in ("kubernetes", "azure") and spec.recycle.max_rss_mb is not None:
        limit_mib = quantity_value(spec.resources.limits.memory) / 1024.0**2
        if spec.recycle.max_rss_mb >= limit_mib:
            p.append(f"fleet:recycle.maxRssMb: {spec.recycle.max_rss_mb} MiB is not below the container's memory "
                     f"limit (fleet:resources.limits.memory {spec.resources.limits.memory} = {limit_mib:g} MiB): "
                     "the OOM killer would stop the server first, without a drain")
    p.extend(_autoscaling_problems(spec))
    if spec.idle_timeout and spec.idle_timeout < 60:
        p.append(f"fleet:idleTimeout: at least 60 seconds, or 0 to disable (got {spec.idle_timeout})")
    if spec.session_ttl < 3600:
        p.append(f"fleet:sessionTtl: at least 1h so the janitor never races a live conversation "
                 f"(got {spec.session_ttl} s)")
    return p


def _exposure_problems(spec: FleetSpec) -> list[str]:
    """A LoadBalancer or NodePort Service puts the CLI's port on a network outside the cluster. That port speaks
    plain JSON-RPC over TCP (the SDK has no TLS): the connection token, a credential that runs commands as the CLI,
    and every prompt and answer cross that network in clear. Refused unless the stack says how it is protected."""
    lb = spec.load_balancer
    if lb.service_type == "ClusterIP":
        named = [key for key, given in (("tls", lb.tls is not None), ("acceptPlaintext", lb.accept_plaintext)) if given]
        return [f"fleet:loadBalancer.{key}: only for serviceType LoadBalancer or NodePort (this Service is ClusterIP, "
                "reached inside the cluster only); remove it" for key in named]
    if lb.tls is not None and lb.accept_plaintext:
        return ["fleet:loadBalancer.acceptPlaintext: contradicts fleet:loadBalancer.tls (a TLS front protects the "
                "port); keep one"]
    if lb.tls is None and not lb.accept_plaintext:
        return [f"fleet:loadBalancer.serviceType: a {lb.service_type} Service exposes the CLI's port outside the "
                "cluster, and that port is plain TCP: the connection token (which lets its holder run commands as "
                "the CLI server) and every prompt and answer would cross the network in clear. Put a "
                "TLS-terminating front before it and name it in fleet:loadBalancer.tls.terminatedBy (for example a "
                "cloud load balancer's TLS listener set up through fleet:serviceAnnotations, or a TLS proxy; your "
                "application then needs a TLS-originating sidecar, the SDK speaks plain TCP), or set "
                "fleet:loadBalancer.acceptPlaintext true if the network between your clients and the nodes is "
                "private and trusted (a VPN, a peered network, an internal load balancer)"]
    return []


def _image_pull_problems(spec: FleetSpec) -> list[str]:
    """imagePullCredentials must be for a registry the fleet pulls from; its Secret's name is taken."""
    creds, p = spec.image_pull_credentials, []
    if creds is not None:
        # The in-cluster Redis is pulled too; on Azure the lease store is Azure Cache for Redis, not an image.
        runs_redis = (spec.platform == "kubernetes" and spec.shares_session_state and spec.redis.mode == "in-cluster")
        images = [i for i in (spec.image, spec.redis.image if runs_redis else None) if i]
        if images and not any(same_registry(creds.server, image) for image in images):
            pulled = ", ".join(f"{image} from {registry_of(image)}" for image in images)
            p.append(f"fleet:imagePullCredentials.server: {creds.server} is not a registry this fleet pulls from "
                     f"({pulled}): the credentials would never be used")
    if IMAGE_PULL_SECRET in spec.image_pull_secrets and creds is not None:
        p.append(f"fleet:imagePullSecrets: {IMAGE_PULL_SECRET!r} is the Secret the stack makes from "
                 "fleet:imagePullCredentials; name your own Secret differently")
    dupes = sorted(n for n, seen in Counter(spec.image_pull_secrets).items() if seen > 1)
    if dupes:
        p.append(f"fleet:imagePullSecrets: named twice: {dupes}")
    return p


def _plaintext_store_problems(url: str, accept_plaintext: bool) -> list[str]:
    """redis:// to a store outside the cluster: AUTH (the password) and every lease in clear on the way."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "redis" or accept_plaintext:
        return []
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or _SURELY_IN_CLUSTER.match(host):
        return []  # on this machine, or a Service of the cluster: the pod network, as the in-cluster store
    return [f"fleet:redis.url: redis:// to {host} sends the store's password and every lease in clear to a host "
            "outside the cluster: use rediss:// (TLS; Azure Cache for Redis and managed stores offer it), or set "
            "fleet:redis.acceptPlaintext true if the network on the way is private and trusted"]


# A Kubernetes Service name as a URL host: `svc` (the fleet's namespace) or `svc.ns.svc[.cluster.local]` surely;
# `svc.ns` maybe (it could be a public name too).
_SURELY_IN_CLUSTER = re.compile(r"^(?P<svc>[a-z0-9-]+)(?:\.(?P<ns>[a-z0-9-]+)\.svc(?:\.cluster\.local)?)?\.?$")
_MAYBE_IN_CLUSTER = re.compile(r"^(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.?$")
# Not "public": private, shared (CGNAT), link-local (cloud metadata), loopback.
_NOT_PUBLIC = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                   "169.254.0.0/16", "127.0.0.0/8", "fc00::/7", "fe80::/10",
                                                   "::1/128")]


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not any(address.version == n.version and address in n for n in _NOT_PUBLIC)


def egress_problem(url: str, egress: EgressSpec, namespace: str) -> str | None:
    """Why the restricted egress policy would block the CLI servers from `url` (None: it lets them through)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"{url!r} has no valid port"
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None and (match := _SURELY_IN_CLUSTER.match(host)):
        ns = match.group("ns") or namespace
        if any(rule.covers(None, ns, port) for rule in egress.allow):
            return None
        return (f"{url} is a Service in namespace {ns!r}, which the restricted egress policy does not reach: add "
                f"fleet:egress.allow {{namespace: {ns}, ports: [{port}]}} (podLabels to narrow it), or set "
                "fleet:egress.mode open")
    maybe = _MAYBE_IN_CLUSTER.match(host) if address is None else None
    if maybe is not None and any(rule.covers(None, maybe.group("ns"), port) for rule in egress.allow):
        return None
    if address is not None and not is_public_address(address):
        if any(rule.covers(address, None, port) for rule in egress.allow):
            return None
        return (f"{url} is a private or link-local address, which the restricted egress policy does not reach: "
                f"add fleet:egress.allow {{cidr: {address}/{address.max_prefixlen}, ports: [{port}]}}")
    if port in egress.public_ports:
        return None
    if any(rule.cidr is not None and port in rule.ports and rule.protocol == "TCP"
           and (address is None or rule.covers(address, None, port)) for rule in egress.allow):
        return None
    service = (f" If it is the Service {maybe.group('svc')} in namespace {maybe.group('ns')}, add fleet:egress.allow "
               f"{{namespace: {maybe.group('ns')}, ports: [{port}]}}." if maybe is not None else "")
    return (f"{url} uses port {port}, which the restricted egress policy does not open to public addresses "
            f"(fleet:egress.publicPorts: {egress.public_ports}): add it there, or a fleet:egress.allow rule with "
            f"the endpoint's address block and port.{service} (A public name that resolves to a private address "
            "needs an allow rule with that address block.)")


_AZURE_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.()-]{1,90}$")
_ACR_HOST = re.compile(r"^(?P<name>[A-Za-z0-9]{5,50})\.azurecr\.io(?=/)")
_ACR_ID = re.compile(r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[^/]+/providers/"
                     r"Microsoft\.ContainerRegistry/registries/(?P<name>[A-Za-z0-9]{5,50})$", re.IGNORECASE)
# Data disks a VM size attaches (Azure's published limits) for the sizes AKS users pick most; other sizes are not
# checked here.
_DATA_DISKS = {"standard_d2s_v5": 4, "standard_d4s_v5": 8, "standard_d8s_v5": 16, "standard_d16s_v5": 32,
               "standard_d2s_v3": 4, "standard_d4s_v3": 8, "standard_d8s_v3": 16, "standard_ds2_v2": 8,
               "standard_b2s": 4, "standard_b4ms": 8}


# Platforms whose renderers run the store mode's provider beside each CLI (the others refuse it, with a message).
STORE_MODE_PLATFORMS: tuple[str, ...] = ("local", "kubernetes", "azure")


def _session_state_problems(spec: FleetSpec) -> list[str]:
    """fleet:sessionState against the rest: store mode keeps no session volume, volume mode uses no store."""
    p: list[str] = []
    state_keys = spec.session_state.model_fields_set
    if not spec.store_mode:
        if "appendfsync" in state_keys:
            p.append("fleet:sessionState.appendfsync: only for fleet:sessionState.mode store (it sets how durable "
                     "the session store is); remove it, or set the mode to store")
        return p
    if spec.platform not in STORE_MODE_PLATFORMS:
        p.append(f"fleet:sessionState.mode: store is not available on platform {spec.platform} yet (available: "
                 f"{', '.join(STORE_MODE_PLATFORMS)}); use mode volume there")
    if spec.isolation == "per-user" and "shared" in spec.user_ids:
        p.append("fleet:users: in store mode a user's store scope is the user id, and 'shared' is the scope of the "
                 "shared patterns' servers (whose store user may read every session's lease): rename user 'shared'")
    if spec.platform in ("kubernetes", "azure") and spec.redis.mode == "external":
        p.append("fleet:redis.mode: store mode on a cluster runs its own Redis (in-cluster): the store needs one ACL "
                 "user per store scope, append-only persistence and maxmemory-policy noeviction, which the fleet can "
                 "only set on a Redis it runs; remove redis.mode external (and redis.url)")
    if (spec.platform in ("kubernetes", "azure")
            and quantity_value(spec.redis.storage_size) < quantity_value(spec.redis.memory_limit(True))):
        p.append(f"fleet:redis.storageSize: {spec.redis.storage_size} is less than the store's memory "
                 f"(fleet:redis.memory {spec.redis.memory_limit(True)}): the append-only file holds up to half of it "
                 "and a rewrite writes a second copy beside it; give at least as much storage as memory")
    if spec.platform == "azure":
        for key, name in (("redis_sku", "redisSku"), ("redis_capacity", "redisCapacity"),
                          ("file_share_quota_gb", "fileShareQuotaGb")):
            if key in spec.azure.model_fields_set:
                p.append(f"fleet:azure.{name}: store mode has no Azure Cache for Redis and no Azure Files share (the "
                         "store is a Redis on AKS with its own disk: fleet:redis.memory and storageSize); remove it")
    storage_keys = spec.storage.model_fields_set
    for key, name in (("size", "size"), ("access_mode", "accessMode"), ("storage_class", "storageClass")):
        if key in storage_keys:
            p.append(f"fleet:storage.{name}: sets the session volume, which fleet:sessionState.mode store does not "
                     "have (session state lives in Redis); remove it (storage.homeSize and storage.persistentHome "
                     "still apply)")
    return p


def _autoscaling_problems(spec: FleetSpec) -> list[str]:
    """fleet:autoscaling: a HorizontalPodAutoscaler over the shared replicas of a cluster's fleet."""
    auto = spec.autoscaling
    if auto is None:
        return []
    if spec.platform not in ("kubernetes", "azure"):
        return [f"fleet:autoscaling: a HorizontalPodAutoscaler needs a cluster (platform kubernetes or azure), not "
                f"{spec.platform}; remove it"]
    if not spec.shares_session_state:
        return ["fleet:autoscaling: per-user runs exactly one server per user; autoscaling is for the shared "
                "patterns' replicas (shared-cli, shared-session)"]
    if auto.max_replicas <= spec.replicas:
        return [f"fleet:autoscaling.maxReplicas: {auto.max_replicas} must be above fleet:replicas ({spec.replicas}), "
                "the number of replicas the autoscaler keeps at least"]
    return []


def _local_port_problems(spec: FleetSpec) -> list[str]:
    """Two servers of a local fleet on one port. Checked here, with the rest of the config, so that a clash is
    refused before anything runs (the CLI servers take fleet:local.replicaBasePort upwards, one per replica, or one
    per user for per-user)."""
    local = spec.local
    servers = spec.replicas if spec.shares_session_state else len(spec.users)
    replica_ports = range(local.replica_base_port, local.replica_base_port + servers)
    named: list[tuple[int, str]] = []
    if spec.shares_session_state:
        named.append((local.endpoint_port, "fleet:local.endpointPort"))
    if spec.uses_lease_store:
        named.append((local.redis_port, "fleet:local.redisPort"))
    if spec.provider is None:  # the local test model serves the sessions
        named.append((local.model_port, "fleet:local.modelPort"))
    problems = []
    seen: dict[int, str] = {}
    for port, key in named:
        if port in seen:
            problems.append(f"{key} {port} is also {seen[port]}")
        elif port in replica_ports:
            problems.append(f"{key} {port} falls in the CLI servers' ports {local.replica_base_port}.."
                            f"{replica_ports[-1]} (fleet:local.replicaBasePort and {servers} "
                            f"{'replicas' if spec.shares_session_state else 'users'})")
        seen.setdefault(port, key)
    if problems:
        problems = [f"fleet:local: ports overlap: {'; '.join(problems)}; give every server of the fleet its own port"]
    if replica_ports and replica_ports[-1] > 65535:
        problems.append(f"fleet:local.replicaBasePort: {local.replica_base_port} leaves no room for {servers} CLI "
                        f"servers (the last would get port {replica_ports[-1]}; ports end at 65535)")
    return problems


def _azure_problems(spec: FleetSpec) -> list[str]:
    """Limits of the Azure resources the azure platform creates."""
    az, p = spec.azure, []
    if not spec.store_mode and quantity_value(spec.storage.size) > az.file_share_quota_gb * 1024.0**3:
        p.append(f"fleet:storage.size: {spec.storage.size} is more than the Azure Files share quota "
                 f"(fleet:azure.fileShareQuotaGb: {az.file_share_quota_gb}); the claim could never bind to the share")
    if az.redis_sku == "Premium" and not 1 <= az.redis_capacity <= 5:
        p.append(f"fleet:azure.redisCapacity: Premium caches come in sizes 1-5 (P1-P5), got {az.redis_capacity}")
    registry = _ACR_HOST.match(spec.image or "")
    if az.container_registry_id is not None:
        match = _ACR_ID.match(az.container_registry_id)
        if match is None:
            p.append("fleet:azure.containerRegistryId: expected a registry's resource id, /subscriptions/<id>/"
                     "resourceGroups/<group>/providers/Microsoft.ContainerRegistry/registries/<name> (az acr show -n "
                     f"<name> --query id -o tsv), got {az.container_registry_id!r}")
        elif registry is not None and match.group("name").lower() != registry.group("name").lower():
            p.append(f"fleet:azure.containerRegistryId: names registry {match.group('name')!r} but fleet:image is in "
                     f"{registry.group(0)}")
    elif registry is not None:
        p.append(f"fleet:azure.containerRegistryId: fleet:image is in Azure Container Registry {registry.group(0)}; "
                 "give its resource id (az acr show -n " + registry.group("name") + " --query id -o tsv) so the "
                 "cluster's kubelet identity gets AcrPull in the same pulumi up: without it the first image pull "
                 "fails")
    if spec.isolation == "per-user" and spec.home_is_persistent:
        disks = _DATA_DISKS.get(az.node_vm_size.lower())
        if disks is not None and len(spec.users) > disks * az.node_count:
            p.append(f"fleet:storage.persistentHome: every user's home would be an Azure Disk, and "
                     f"{az.node_count} x {az.node_vm_size} attach at most {disks * az.node_count} data disks "
                     f"({disks} each) for {len(spec.users)} users: leave persistentHome unset (an emptyDir home; "
                     "sessions resume from the user's share), or add nodes")
    name = az.resource_group_name
    if name is not None and (not _AZURE_GROUP_NAME.fullmatch(name) or name.endswith(".")):
        p.append(f"fleet:azure.resourceGroupName: 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in "
                 f"'.' (got {name!r})")
    return p


# --- loading ----------------------------------------------------------------------------------------------------

# Config keys (camelCase, as in stack config) whose values are credentials: they must come from Pulumi secrets.
# Paths use '.' for object keys and '[]' for every list element.
SECRET_PATHS: tuple[str, ...] = ("githubToken", "provider.apiKey", "redis.url", "users[].githubToken",
                                 "imagePullCredentials.password")


@dataclass(frozen=True)
class RawConfig:
    """Stack config of the `fleet` namespace: keys without the prefix, native values, and which keys the stack
    holds as secrets (Pulumi marks a whole top-level key secret when any part of it is)."""

    values: Mapping[str, Any]
    secret_keys: frozenset[str] = field(default_factory=frozenset)
    stack: str = ""
    # Keys of the stack's other namespaces (`ns:key`) and the project's name: a fleet setting set there by mistake
    # (`copilot-fleet:replicas`, what `pulumi config set replicas 4` writes) is refused rather than ignored.
    other_keys: frozenset[str] = field(default_factory=frozenset)
    project: str = ""


def _present(values: Mapping[str, Any], path: str) -> bool:
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = values.get(head[:-2])
        return isinstance(items, list) and any(isinstance(i, Mapping) and _present(i, rest) for i in items)
    if head not in values:
        return False
    return True if not rest else isinstance(values[head], Mapping) and _present(values[head], rest)


def _unknown_key_problems(values: Mapping[str, Any]) -> list[str]:
    return [config_messages.unknown_key(FleetSpec, (key,)) for key in values
            if key not in config_messages.known_keys(FleetSpec)]


def _is_secret_key(key: str) -> bool:
    """`fleet:users[1].githubToken` and the like: values never echoed in a message."""
    flat = re.sub(r"\[\d+\]", "[]", key.removeprefix(f"{NAMESPACE}:"))
    return flat in SECRET_PATHS or flat.endswith(("Token", "apiKey", "url", "password"))


def load_spec(raw: RawConfig) -> FleetSpec:
    """Validate stack config into a FleetSpec, or raise ConfigError naming every offending key."""
    problems = config_messages.foreign_key_problems(FleetSpec, raw.other_keys, raw.project)
    problems += _unknown_key_problems(raw.values)
    for path in SECRET_PATHS:
        top = path.partition(".")[0].removesuffix("[]")
        if _present(raw.values, path) and top not in raw.secret_keys:
            problems.append(f"fleet:{path.replace('[]', '[*]')}: a credential must be set as a secret "
                            f"(pulumi config set --secret ...), not in plain text")
    if not problems:
        try:
            spec = FleetSpec.model_validate(dict(raw.values))
        except ValidationError as exc:
            problems.extend(config_messages.format_errors(FleetSpec, exc.errors(), _is_secret_key))
        else:
            return spec.model_copy(update={"stack": raw.stack})
    raise ConfigError(problems, stack=raw.stack or None)


def namespace_values(flat: Mapping[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    """Keys of one namespace from a flat `ns:key -> value` map, without the prefix."""
    prefix = f"{namespace}:"
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def secret_namespace_keys(keys: Iterable[str], namespace: str = NAMESPACE) -> frozenset[str]:
    prefix = f"{namespace}:"
    return frozenset(k[len(prefix):] for k in keys if k.startswith(prefix))
