"""KubernetesFleet: a whole fleet (any isolation pattern) on one Kubernetes cluster, from its Topology."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.core.v1 as core

from copilot_fleet.components.common import ConnectionTokens, FleetEndpoints, child_options
from copilot_fleet.components.kubernetes import network, secrets, store
from copilot_fleet.components.kubernetes.autoscaler import cli_autoscaler
from copilot_fleet.components.kubernetes.cli_group import CliGroupArgs, CliGroupDeployment
from copilot_fleet.components.kubernetes.hooks import PlatformHooks
from copilot_fleet.components.kubernetes.meta import CLI, HEADLESS_SERVICE, REDIS, SERVICE_ACCOUNT, FleetMeta
from copilot_fleet.components.kubernetes.pod import PORT_NAME
from copilot_fleet.components.kubernetes.redis import InClusterRedis, InClusterRedisArgs, in_cluster_url, redis_password
from copilot_fleet.spec import IMAGE_PULL_SECRET
from copilot_fleet.topology import Topology


@dataclass(frozen=True)
class KubernetesFleetArgs:
    """What the fleet is made from.

    `tokens` come from `program.run()` (shared with other platforms). `platform` adapts the fleet to a platform's
    cluster (see hooks.py). `client_namespace_selector` admits client pods from other namespaces and
    `source_ranges` admits CIDRs from outside the cluster (see network.py). `create_namespace` False deploys
    into an existing namespace (for users who may not create namespaces).
    """

    topology: Topology
    tokens: ConnectionTokens
    platform: PlatformHooks = field(default_factory=PlatformHooks)
    client_namespace_selector: Mapping[str, str] | None = None
    source_ranges: Sequence[str] = ()
    create_namespace: bool = True
    # Store mode: the store's passwords when the platform made them (Azure, for Key Vault); else made here.
    store_credentials: store.StoreCredentials | None = None


class KubernetesFleet(pulumi.ComponentResource):
    """Namespace, ServiceAccount, headless Service, Secrets, the lease store, NetworkPolicies and one
    CliGroupDeployment per CLI group.

    Pass a Kubernetes provider as `opts=ResourceOptions(provider=...)`: every child inherits it.
    """

    endpoints: FleetEndpoints
    secret_material: secrets.SecretMaterial  # every Secret the pods read: name -> key -> value (Pulumi secrets)

    def __init__(self, name: str, args: KubernetesFleetArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("copilot-fleet:kubernetes:Fleet", name, None, opts)
        topology, hooks = args.topology, args.platform
        meta = FleetMeta(topology.spec)
        spec = topology.spec
        child = child_options(self, opts)

        self.namespace: core.Namespace | None = None
        if args.create_namespace:
            self.namespace = core.Namespace(
                meta.namespace,
                metadata={
                    "name": meta.namespace,
                    # Every pod of the fleet meets the restricted Pod Security Standard: have the API enforce it.
                    "labels": {**meta.labels(), "pod-security.kubernetes.io/enforce": "restricted"},
                },
                opts=child,
            )
            child = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.namespace]))

        in_cluster_redis = (topology.lease_store == "in-cluster" and hooks.external_redis_url is None)
        # Store mode: the admin password and one per store scope, made here unless the platform made them (Azure
        # keeps every credential in Key Vault, so it makes them before the vault).
        self.store_credentials: store.StoreCredentials | None = None
        if topology.store_mode:
            if not in_cluster_redis:
                raise ValueError("store mode on a cluster runs its own Redis: the topology names no in-cluster "
                                 "lease store, or the platform gave an external one")
            self.store_credentials = args.store_credentials or store.generate_credentials(topology, child)
            password: pulumi.Output[str] | None = self.store_credentials.admin_password
        else:
            password = redis_password(f"{REDIS}-password", child) if in_cluster_redis else None
        # The lease store URL: the target's redis_url, and what the janitor takes leases with (a Secret file).
        redis_url: pulumi.Output[str] | None = None
        if password is not None:
            redis_url = in_cluster_url(meta, password)
        elif hooks.external_redis_url is not None and topology.lease_store is not None:
            redis_url = pulumi.Output.secret(hooks.external_redis_url)
        elif topology.lease_store == "external" and spec.redis.url is not None:
            redis_url = pulumi.Output.secret(spec.redis.url.get_secret_value())
        self.secret_material = secrets.secret_material(topology, args.tokens, password, redis_url)
        if self.store_credentials is not None:
            self.secret_material = store.add_store_material(self.secret_material, meta, topology,
                                                            self.store_credentials)
        self.secrets = secrets.create_secrets(meta, self.secret_material, child) if hooks.manage_secrets else {}

        def after_secrets(*names: str) -> pulumi.ResourceOptions:
            # Pods start once the Secrets they read exist (when this fleet manages them): only those, so that
            # a per-user fleet's dependencies grow with the users, not with their square.
            needed = [self.secrets[n] for n in names if n in self.secrets]
            return pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=needed))

        self.service_account = core.ServiceAccount(
            SERVICE_ACCOUNT,
            metadata={**meta.metadata(SERVICE_ACCOUNT, CLI),
                      "annotations": dict(hooks.service_account_annotations) or None},
            automount_service_account_token=False,
            opts=child,
        )
        self.headless_service = core.Service(
            HEADLESS_SERVICE,
            metadata=meta.metadata(HEADLESS_SERVICE, CLI),
            spec={
                "cluster_ip": "None",
                "selector": meta.selector(CLI),
                "ports": [{"name": PORT_NAME, "port": spec.port, "target_port": PORT_NAME, "protocol": "TCP"}],
                "publish_not_ready_addresses": False,
            },
            opts=child,
        )

        clients = network.ClientPeers(
            pod_selector=spec.client_selector,
            namespace_selector=args.client_namespace_selector,
            backend_selector=spec.backend_selector,
            source_ranges=tuple(args.source_ranges),
        )
        self.default_deny = network.default_deny(meta, child)
        if spec.egress.mode == "restricted":
            network.cli_egress(meta, spec.egress, child,
                               [store.cli_store_egress_rule(meta)] if topology.store_mode else ())
            configured = spec.redis.url.get_secret_value() if spec.redis.url is not None else None
            network.janitor_egress(meta, None if redis_url is None else "in-cluster" if in_cluster_redis
                                   else "external", child, network.external_store_ports(configured))

        self.redis: InClusterRedis | None = None
        if password is not None:
            self.redis = InClusterRedis(REDIS, InClusterRedisArgs(
                meta, secrets_checksum=secrets.checksum(self.secret_material, (secrets.REDIS_SECRET,))), password,
                                        opts=after_secrets(secrets.REDIS_SECRET, IMAGE_PULL_SECRET))
            network.redis_ingress(meta, clients, child,
                                  [store.store_ingress_peer(meta)] if topology.store_mode else ())
            if spec.egress.mode == "restricted":
                network.redis_egress(meta, child)
        janitor_lease_store = (secrets.janitor_redis_url_ref()
                               if secrets.JANITOR_CREDENTIALS in self.secret_material else None)

        self.groups = [
            CliGroupDeployment(
                group.name,
                CliGroupArgs(
                    meta=meta, group=group, hooks=hooks, clients=clients,
                    service_type=spec.load_balancer.service_type,
                    session_affinity=spec.load_balancer.session_affinity,
                    source_ranges=tuple(args.source_ranges),
                    janitor_lease_store=janitor_lease_store,
                    secrets_checksum=secrets.checksum(self.secret_material,
                                                      (secrets.FLEET_CREDENTIALS, meta.credentials_secret(group))),
                ),
                opts=pulumi.ResourceOptions.merge(
                    after_secrets(secrets.FLEET_CREDENTIALS, meta.credentials_secret(group),
                                  secrets.JANITOR_CREDENTIALS, IMAGE_PULL_SECRET),
                    # Store mode: a provider exits (and its pod restarts) until the store answers.
                    pulumi.ResourceOptions(depends_on=[self.redis] if topology.store_mode and self.redis else None)),
            )
            for group in topology.groups
        ]
        self.autoscalers = [a for d in self.groups
                            if (a := cli_autoscaler(meta, d.group, pulumi.ResourceOptions.merge(
                                child, pulumi.ResourceOptions(depends_on=[d.stateful_set])))) is not None]

        shared = topology.shared_group
        self.endpoints = FleetEndpoints(
            endpoint=meta.group_service_address(shared) if shared is not None and topology.load_balanced else None,
            replicas=[a for g in topology.groups if g.user is None for a in meta.replica_addresses(g)],
            users={g.user: meta.group_service_address(g) for g in topology.groups if g.user is not None},
            redis_url=redis_url,
            session_state=store.session_state_target(meta, topology) if topology.store_mode else None,
        )
        self.register_outputs({"endpoint": self.endpoints.endpoint, "redis_url": redis_url})
