"""Store mode on a cluster (fleet:sessionState.mode store): session state in the in-cluster Redis, served to each CLI
by its session filesystem provider (copilot_fleet/sessionstore, docs/session-store.md). No session volume.

What changes against the volume mode, and where it is decided:

- **The CLI container runs the provider**, which starts the CLI as its child (they live and die together: the CLI's
  registration of a provider is sticky): `tini -- python-sealed -m copilot_fleet.sessionstore ... -- <CLI args>`.
  tini is PID 1 and reaps what the CLI's tool runs leave behind (they are re-parented to PID 1) and passes SIGTERM
  on to the provider, which passes it to the CLI and keeps serving its writes while the CLI finishes its turns.
- **The store credential** (the scope's Redis URL, with the password of the scope's own ACL user) reaches the
  provider as an environment variable from the group's Secret (`secretKeyRef`), and nothing else in the container:
  a session's tool run runs as the same uid, so every process that has the variable in its environment must be
  non-dumpable (its /proc/<pid>/environ and memory then belong to root, and no capability is left to read them).
  The image installs tini and a copy of the Python interpreter execute-only (0711, root-owned): the kernel makes a
  process non-dumpable when it executes a file its user cannot read, from its first instruction, so PID 1, the
  provider, and every probe and hook the kubelet execs (they get the container's whole environment) run that way.
  The provider gives the CLI an environment without the variable. Processes exec'd into the container by hand
  (`kubectl exec`) get the variable too: do not run anything there that a tool run could read.
- **Readiness only after registration**: the health probe also requires the provider's ready file
  (copilot_fleet.pod.provider_ready), so no client creates a session on a CLI that has no provider yet.
- **Redis** (components/kubernetes/redis.py) runs with appendonly and the stack's appendfsync, `maxmemory` at half
  its memory with `maxmemory-policy noeviction`, and one ACL user per store scope (`store.conf`, included from its
  Secret): each user's server (per-user) reaches only its user's keys; the shared replicas the `shared` scope.
- **Server ids**: each provider registers the address the target lists its server under (a replica's pod DNS name
  through the headless Service, a user's Service address), so the fleet client binds a session's lease to the id of
  the server it attaches on; through the load-balanced Service it binds `*`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random

from copilot_fleet.components.kubernetes import pod, secrets
from copilot_fleet.components.kubernetes.meta import REDIS, REDIS_PORT, FleetMeta
from copilot_fleet.topology import CliGroup, Topology

# Keys of the group's Secret (`<group>-credentials`) and of Secret copilot-redis.
STORE_URL_KEY = "store-redis-url"
STORE_CONFIG_KEY = "store.conf"
# copilot_fleet.sessionstore.__main__.REDIS_URL_ENV: the provider reads it and removes it from the CLI's environment.
STORE_URL_ENV = "COPILOT_FLEET_STORE_REDIS_URL"
# copilot_fleet.sessionstore.acl.USER_PREFIX (not imported: the components do not need redis-py).
ACL_USER_PREFIX = "copilot-store-"

# In the CLI image (images/cli/Dockerfile): both execute-only, so the processes they run are non-dumpable.
INIT = "/usr/bin/tini"
SEALED_PYTHON = "/opt/copilot-fleet/bin/python-sealed"
CLI_BINARY = "/usr/local/bin/copilot"
# On the pod's /tmp emptyDir; the provider removes a stale one when it starts (a container restart keeps /tmp).
READY_FILE = "/tmp/copilot-fleet-provider.ready"
# Left to the CLI after the preStop pause and before the kubelet's SIGKILL, of the termination grace period.
STOP_MARGIN_SECONDS = 3

# The CLI flags the provider sets itself (ProviderConfig.cli_argv), with how many values follow each.
_PROVIDER_SETS = {"--headless": 0, "--no-auto-update": 0, "--no-auto-login": 0, "--host": 1, "--port": 1}


@dataclass(frozen=True)
class StoreCredentials:
    """The generated passwords of a store-mode fleet's Redis: the admin's (Redis' default user: the fleet client's
    leases and listings, the janitor) and one per store scope (that scope's ACL user: its servers' providers)."""

    admin_password: pulumi.Output[str]
    scope_passwords: dict[str, pulumi.Output[str]]


def store_scopes(topology: Topology) -> list[str]:
    return [g.store_scope for g in topology.groups if g.store_scope is not None]


def _password(name: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    # As redis.redis_password (which imports this module): 40 letters and digits, a secret.
    return pulumi.Output.secret(random.RandomPassword(name, length=40, special=False, opts=opts).result)


def generate_credentials(topology: Topology, opts: pulumi.ResourceOptions) -> StoreCredentials:
    """The admin password keeps the volume mode's resource name (`copilot-redis-password`)."""
    return StoreCredentials(
        admin_password=_password(f"{REDIS}-password", opts),
        scope_passwords={scope: _password(f"{ACL_USER_PREFIX}{scope}-password", opts)
                         for scope in store_scopes(topology)},
    )


def acl_user(scope: str) -> str:
    return ACL_USER_PREFIX + scope


def store_url(meta: FleetMeta, scope: str, password: pulumi.Input[str]) -> pulumi.Output[str]:
    """The URL a scope's providers reach the store with: its own ACL user, the in-cluster Redis Service."""
    host = f"{REDIS}.{meta.namespace}.svc.cluster.local:{REDIS_PORT}"
    return pulumi.Output.secret(pulumi.Output.concat("redis://", acl_user(scope), ":", password, "@", host, "/0"))


def store_config(scope_passwords: Mapping[str, str]) -> str:
    """Redis config lines for the store's ACL users (copilot_fleet.sessionstore.acl, the same rules as the local
    fleet's aclfile): each password as its SHA-256, so the file never holds one in clear."""
    from copilot_fleet.sessionstore.acl import acl_file_line
    from copilot_fleet.sessionstore.keys import StoreKeys

    lines = ["# Session store (fleet:sessionState.mode store): one ACL user per store scope (docs/session-store.md)"]
    lines += [acl_file_line(StoreKeys(scope), password) for scope, password in sorted(scope_passwords.items())]
    return "\n".join(lines) + "\n"


def add_store_material(material: secrets.SecretMaterial, meta: FleetMeta, topology: Topology,
                       credentials: StoreCredentials) -> secrets.SecretMaterial:
    """The Secrets of the volume mode plus the store's: each group's store URL (beside its connection token) and
    the ACL users' config in Secret copilot-redis."""
    out = {name: dict(data) for name, data in material.items()}
    for group in topology.groups:
        assert group.store_scope is not None
        out.setdefault(meta.credentials_secret(group), {})[STORE_URL_KEY] = store_url(
            meta, group.store_scope, credentials.scope_passwords[group.store_scope])
    scopes = sorted(credentials.scope_passwords)
    config = pulumi.Output.all(*(credentials.scope_passwords[s] for s in scopes)).apply(
        lambda passwords: store_config(dict(zip(scopes, passwords, strict=True))))
    out.setdefault(secrets.REDIS_SECRET, {})[STORE_CONFIG_KEY] = pulumi.Output.secret(config)
    return out


def server_id(meta: FleetMeta, group: CliGroup, pod_name: str = "$(POD_NAME)") -> str:
    """The id a server's provider registers: the address the target lists the server under."""
    if group.user is not None:
        return meta.group_service_address(group)
    return meta.pod_address(pod_name, meta.spec.port)


def session_state_target(meta: FleetMeta, topology: Topology) -> dict[str, Any]:
    """The target's `session_state` (docs/target.md): scopes, and each listed address's server id."""
    ids: dict[str, str] = {}
    user_scopes: dict[str, str] = {}
    for group in topology.groups:
        assert group.store_scope is not None
        if group.user is not None:
            ids[meta.group_service_address(group)] = server_id(meta, group)
            user_scopes[group.user] = group.store_scope
        else:
            for name, address in zip(group.replica_names(), meta.replica_addresses(group), strict=True):
                ids[address] = server_id(meta, group, name)
    out: dict[str, Any] = {"mode": "store", "server_ids": ids}
    if user_scopes:
        out["user_scopes"] = user_scopes
    return out


def _provider_cli_args(meta: FleetMeta) -> list[str]:
    """The CLI's own arguments without those the provider sets (it starts the CLI with them)."""
    out: list[str] = []
    args = pod.cli_args(meta)
    skip = 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in _PROVIDER_SETS:
            skip = _PROVIDER_SETS[arg]
        else:
            out.append(arg)
    return out


def _sealed_probe(probe: Mapping[str, Any]) -> dict[str, Any]:
    """A health probe run by the execute-only interpreter, which also requires the provider's ready file. The
    provider's ready file names the CLI's pid, which the recycle bounds measure (not PID 1, which is tini)."""
    command = list(probe["exec"]["command"])
    if command[0] != "python3":
        raise ValueError(f"the CLI's health probe runs {command[0]}, not python3: cannot seal it")
    if "--pid" in command:
        at = command.index("--pid")
        del command[at:at + 2]
    return {**probe, "exec": {"command": [SEALED_PYTHON, *command[1:], "--ready-file", READY_FILE]}}


def provider_stop_grace(grace_seconds: int) -> int:
    """How long the provider lets the CLI finish its turns after SIGTERM: what is left of the termination grace
    period after the preStop pause, less a margin so that the provider, not the kubelet's SIGKILL, ends the CLI."""
    return max(1, grace_seconds - pod.ENDPOINT_REMOVAL_SECONDS - STOP_MARGIN_SECONDS)


def provider_container(meta: FleetMeta, group: CliGroup, cli: Mapping[str, Any]) -> dict[str, Any]:
    """The store-mode CLI container, from the volume mode's (`pod.cli_container`): the same image, user, limits,
    ports, credentials and scratch volumes; no session volume; the provider as the command."""
    assert group.store_scope is not None
    spec = meta.spec
    env = [dict(e) for e in cli["env"]]
    names = {e["name"] for e in env}
    if "POD_NAME" not in names:
        env.append({"name": "POD_NAME", "value_from": {"field_ref": {"field_path": "metadata.name"}}})
    secret_names = pod.secret_env_names(env)  # the CLI's: the store URL never reaches it
    env.append(secrets.SecretKeyRef(meta.credentials_secret(group), STORE_URL_KEY).env(STORE_URL_ENV))
    mounts = [m for m in cli["volume_mounts"]
              if (m["mount_path"] if isinstance(m, Mapping) else m.mount_path) != pod.SESSION_STATE]
    args = [
        "--cli", CLI_BINARY, "--home", pod.COPILOT_HOME, "--workdir", pod.WORKSPACE,
        "--server-id", server_id(meta, group), "--scope", group.store_scope,
        "--host", "0.0.0.0", "--port", str(spec.port), "--ready-file", READY_FILE,
        "--stop-grace", str(provider_stop_grace(spec.termination_grace_seconds)), "--hold-inspector-port",
        "--", *_provider_cli_args(meta), f"--secret-env-vars={','.join(secret_names)}",
    ]
    return {
        **cli,
        "command": [INIT, "--", SEALED_PYTHON, "-m", "copilot_fleet.sessionstore"],
        "args": args,
        "env": env,
        "readiness_probe": _sealed_probe(cli["readiness_probe"]),
        "liveness_probe": _sealed_probe(cli["liveness_probe"]),
        # Only the pause that lets the endpoints drop the pod (the volume mode's drain reads session-state/, which
        # is not here): SIGTERM then reaches the provider, which lets the CLI finish its turns (--stop-grace).
        "lifecycle": {"pre_stop": {"exec": {"command": [
            SEALED_PYTHON, "-c", f"import time; time.sleep({pod.ENDPOINT_REMOVAL_SECONDS})"]}}},
        "volume_mounts": mounts,
    }


def store_ingress_peer(meta: FleetMeta) -> dict[str, Any]:
    """The CLI pods as a peer of Redis' ingress policy: their providers read and write the store."""
    from copilot_fleet.components.kubernetes.meta import CLI

    return {"pod_selector": {"match_labels": meta.selector(CLI)}}


def cli_store_egress_rule(meta: FleetMeta) -> dict[str, Any]:
    """The CLI pods' egress to the store (their tool runs reach it too, and meet a password they cannot read)."""
    from copilot_fleet.components.kubernetes.meta import LEASE_STORE

    return {"to": [{"pod_selector": {"match_labels": meta.selector(LEASE_STORE)}}],
            "ports": [{"port": REDIS_PORT, "protocol": "TCP"}]}


def redis_store_args(memory_limit_bytes: float, store_config_file: str) -> list[str]:
    """redis-server options of the store beside appendonly and the stack's appendfsync: the ACL users' file, and
    writes refused (not keys evicted: an evicted key is a silently truncated session) at half the container's
    memory."""
    return ["--include", store_config_file, "--maxmemory", str(int(memory_limit_bytes // 2)),
            "--maxmemory-policy", "noeviction"]
