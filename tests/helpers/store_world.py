"""Store mode in the real-runtime tier: what a stack's world (stackworld.py) needs beyond the volume mode's.

- **The store's Secret values**, composed as the program composes them (components/kubernetes/store.py): each store
  scope gets a generated password; its servers' Secret key `store-redis-url` holds the URL of the scope's ACL user on
  the in-cluster Redis Service, and Secret copilot-redis `store.conf` the ACL users (`store.store_config`, the very
  function the program uses), so that Redis and the providers agree as they would on a cluster.
- **The target** verify and the fleet client get: the world's (the pods' published ports) with the store mode's
  `session_state`: each published address's server id, as its provider registered it (the rendered `--server-id`,
  `$(POD_NAME)` expanded as the kubelet does), and each user's scope.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from copilot_fleet.components.kubernetes import store
from tests.helpers.kubelet import expand
from tests.helpers.stackworld import CLI_COMPONENT, USER_LABEL, PodPlan, StackWorld


@dataclass(frozen=True)
class StoreServer:
    """One CLI pod's provider as rendered: its scope, server id and where its store URL comes from."""

    pod: str
    scope: str
    server_id: str
    url_ref: tuple[str, str]  # (Secret, key) of COPILOT_FLEET_STORE_REDIS_URL


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def store_servers(world: StackWorld) -> list[StoreServer]:
    out = []
    for plan in world.pods(CLI_COMPONENT):
        container = plan.template["spec"]["containers"][0]
        args = list(container["args"])
        refs = [v["valueFrom"]["secretKeyRef"] for v in container["env"] if v["name"] == store.STORE_URL_ENV]
        assert len(refs) == 1, f"{plan.name}: no store URL from a Secret in {container['env']}"
        out.append(StoreServer(plan.name, _arg(args, "--scope"),
                               expand(_arg(args, "--server-id"), {"POD_NAME": plan.name}),
                               (refs[0]["name"], refs[0]["key"])))
    return out


def compose_store_secrets(world: StackWorld) -> dict[str, str]:
    """Give every store scope a password, its servers' Secret its URL and Redis its ACL users; returns the scope
    passwords (what a leaked credential would be, for the tests that try one)."""
    redis = world.in_cluster_redis()
    assert redis is not None, "store mode runs the in-cluster Redis"
    service = world.client_service(redis)
    passwords: dict[str, str] = {}
    for server in store_servers(world):
        password = passwords.setdefault(server.scope, secrets.token_hex(24))
        world.secret_values.composed[server.url_ref] = (
            f"redis://{store.acl_user(server.scope)}:{password}@{service}.{world.namespace}.svc.cluster.local:6379/0")
    (secret_name,) = {v["secret"]["secretName"] for v in redis.template["spec"]["volumes"] if "secret" in v}
    world.secret_values.composed[(secret_name, store.STORE_CONFIG_KEY)] = store.store_config(passwords)
    return passwords


def store_target(world: StackWorld) -> dict[str, Any]:
    """The world's target with the store mode's session_state (server ids by published address, user scopes)."""
    target = world.target()
    addresses = {plan.name: f"127.0.0.1:{_published(world, plan)}" for plan in world.pods(CLI_COMPONENT)}
    servers = store_servers(world)
    state: dict[str, Any] = {"mode": "store", "server_ids": {addresses[s.pod]: s.server_id for s in servers}}
    users = {p.labels[USER_LABEL]: p.name for p in world.pods(CLI_COMPONENT) if USER_LABEL in p.labels}
    if users:
        by_pod = {s.pod: s.scope for s in servers}
        state["user_scopes"] = {user: by_pod[pod] for user, pod in users.items()}
    target["session_state"] = state
    return target


def _published(world: StackWorld, plan: PodPlan) -> int:
    container_port = int(plan.template["spec"]["containers"][0]["ports"][0]["containerPort"])
    return world.node.pods[plan.name].ports[container_port]
