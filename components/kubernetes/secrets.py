"""The fleet's Kubernetes Secrets: which exist, under which names and keys, and what goes in them.

Pods only ever read credentials through `secretKeyRef` to the names and keys below (the janitor through a secret
volume: its lease store URL is a file, see janitor.py). The fleet creates the Secrets itself unless
`PlatformHooks.manage_secrets` is False; then another system (Key Vault sync) must create exactly the Secrets of
`secret_material(...)`.

| Secret | keys | when |
|---|---|---|
| `copilot-fleet-credentials` | `github-token`, `provider-api-key` | a fleet GitHub token / a BYOK provider is set |
| `<group>-credentials` | `connection-token`, and `github-token` for a per-user user with their own token | always |
| `copilot-redis` | `password`, `auth.conf` (`requirepass <password>`) | in-cluster Redis |
| `copilot-janitor-credentials` | `redis-url` | a lease store (shared patterns): the janitor mounts it as a file |
| `copilot-image-pull` | `.dockerconfigjson` (type `kubernetes.io/dockerconfigjson`) | `fleet:imagePullCredentials` |
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.core.v1 as core

from copilot_fleet.components.common import ConnectionTokens
from copilot_fleet.components.kubernetes.meta import JANITOR, LEASE_STORE, REDIS, FleetMeta
from copilot_fleet.spec import IMAGE_PULL_SECRET, FleetSpec
from copilot_fleet.spec_kubernetes import ImagePullCredentials, config_key_for
from copilot_fleet.topology import CliGroup, Topology

FLEET_CREDENTIALS = "copilot-fleet-credentials"
GITHUB_TOKEN_KEY = "github-token"
PROVIDER_API_KEY_KEY = "provider-api-key"
CONNECTION_TOKEN_KEY = "connection-token"
REDIS_SECRET = REDIS
REDIS_PASSWORD_KEY = "password"
# The same password as a Redis config file (`requirepass ...`): Redis reads it from a mounted file, so the password
# is in neither its command line nor its environment.
REDIS_AUTH_CONFIG_KEY = "auth.conf"
# The lease store URL for the session janitor, in a Secret of its own: the CLI pods never see it.
JANITOR_CREDENTIALS = "copilot-janitor-credentials"
REDIS_URL_KEY = "redis-url"
# A registry login the kubelet pulls images with (fleet:imagePullCredentials).
DOCKER_CONFIG_KEY = ".dockerconfigjson"
DOCKER_CONFIG_TYPE = "kubernetes.io/dockerconfigjson"
# Secrets whose type is not Opaque (the kubelet reads an image pull Secret only with its type).
SECRET_TYPES = {IMAGE_PULL_SECRET: DOCKER_CONFIG_TYPE}

SecretMaterial = dict[str, dict[str, pulumi.Output[str]]]


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str

    def env(self, variable: str) -> dict[str, object]:
        """An env var read from this Secret key (never a literal value)."""
        return {"name": variable, "value_from": {"secret_key_ref": {"name": self.name, "key": self.key}}}


def connection_token_ref(meta: FleetMeta, group: CliGroup) -> SecretKeyRef:
    return SecretKeyRef(meta.credentials_secret(group), CONNECTION_TOKEN_KEY)


def github_token_ref(meta: FleetMeta, group: CliGroup) -> SecretKeyRef | None:
    """The GitHub token a group's server uses: the user's own (per-user), else the fleet's, else none (BYOK)."""
    spec = meta.spec
    if group.user is not None and group.user in meta.users_with_token:
        return SecretKeyRef(meta.credentials_secret(group), GITHUB_TOKEN_KEY)
    if spec.github_token is not None:
        return SecretKeyRef(FLEET_CREDENTIALS, GITHUB_TOKEN_KEY)
    return None


def provider_api_key_ref(meta: FleetMeta) -> SecretKeyRef | None:
    provider = meta.spec.provider
    if provider is None or provider.api_key is None:
        return None
    return SecretKeyRef(FLEET_CREDENTIALS, PROVIDER_API_KEY_KEY)


def redis_password_ref() -> SecretKeyRef:
    return SecretKeyRef(REDIS_SECRET, REDIS_PASSWORD_KEY)


def redis_auth_config_ref() -> SecretKeyRef:
    return SecretKeyRef(REDIS_SECRET, REDIS_AUTH_CONFIG_KEY)


def janitor_redis_url_ref() -> SecretKeyRef:
    return SecretKeyRef(JANITOR_CREDENTIALS, REDIS_URL_KEY)


def docker_config_json(server: str, username: str, password: str) -> str:
    """A `.dockerconfigjson` document with one registry login, as `kubectl create secret docker-registry` writes
    it (`auth` is base64 of `username:password`)."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {config_key_for(server): {"username": username, "password": password,
                                                          "auth": auth}}})


def image_pull_config(credentials: ImagePullCredentials) -> pulumi.Output[str]:
    return pulumi.Output.secret(docker_config_json(credentials.server, credentials.username,
                                                   credentials.password.get_secret_value()))


def image_pull_secret_names(spec: FleetSpec) -> list[str]:
    """The Secrets every fleet pod names in imagePullSecrets: the user's own, and the one made from
    fleet:imagePullCredentials."""
    made = [IMAGE_PULL_SECRET] if spec.image_pull_credentials is not None else []
    return [*spec.image_pull_secrets, *made]


def secret_material(topology: Topology, tokens: ConnectionTokens,
                    redis_password: pulumi.Output[str] | None,
                    lease_store_url: pulumi.Input[str] | None = None) -> SecretMaterial:
    """Every Secret the fleet's pods read: name -> key -> value (each value a Pulumi secret).

    `lease_store_url` is the Redis URL the janitor takes leases with; it is used only when the topology has a lease
    store (per-user fleets have none, and their janitors run without leases)."""
    spec = topology.spec
    out: SecretMaterial = {}
    fleet: dict[str, pulumi.Output[str]] = {}
    if spec.github_token is not None:
        fleet[GITHUB_TOKEN_KEY] = pulumi.Output.secret(spec.github_token.get_secret_value())
    if spec.provider is not None and spec.provider.api_key is not None:
        fleet[PROVIDER_API_KEY_KEY] = pulumi.Output.secret(spec.provider.api_key.get_secret_value())
    if fleet:
        out[FLEET_CREDENTIALS] = fleet
    user_tokens = {u.id: u.github_token for u in spec.users if u.github_token is not None}
    for group in topology.groups:
        data = {CONNECTION_TOKEN_KEY: tokens.for_group(group)}
        if group.user is not None and group.user in user_tokens:
            data[GITHUB_TOKEN_KEY] = pulumi.Output.secret(user_tokens[group.user].get_secret_value())
        out[FleetMeta.credentials_secret(group)] = data
    if redis_password is not None:
        out[REDIS_SECRET] = {
            REDIS_PASSWORD_KEY: redis_password,
            REDIS_AUTH_CONFIG_KEY: pulumi.Output.secret(pulumi.Output.concat("requirepass ", redis_password, "\n")),
        }
    if topology.lease_store is not None:
        if lease_store_url is None:
            # Fail here rather than deploy a janitor that deletes on a shared volume without leases.
            raise ValueError("the topology has a lease store but no lease store URL was given for the janitor")
        out[JANITOR_CREDENTIALS] = {REDIS_URL_KEY: pulumi.Output.secret(lease_store_url)}
    if spec.image_pull_credentials is not None:
        out[IMAGE_PULL_SECRET] = {DOCKER_CONFIG_KEY: image_pull_config(spec.image_pull_credentials)}
    return out


CHECKSUM_ANNOTATION = "copilot-fleet/secrets-checksum"


def checksum(material: Mapping[str, Mapping[str, pulumi.Input[str]]], names: Iterable[str]) -> pulumi.Output[str]:
    """A digest of the values of the named Secrets, for a pod template annotation: environment variables from a
    Secret are read once, at container start, so a rotated value reaches running pods only if the template changes
    (which rolls the pods). Secrets the fleet does not hold (none by that name) are left out.

    The digest is not a secret (a secret anywhere in a pod template makes Pulumi hide the whole spec): every set of
    names it is given includes a generated value (a group's connection token, the Redis password: 48 and 40 random
    characters) hashed with the rest, so the digest cannot be used to guess a weaker value such as a provider key."""
    parts: list[pulumi.Input[str]] = []
    for name in sorted(set(names)):
        for key, value in sorted((material.get(name) or {}).items()):
            parts += [f"{name}/{key}=", value, "\n"]
    digest = pulumi.Output.all(*parts).apply(lambda values: hashlib.sha256("".join(values).encode()).hexdigest())
    return pulumi.Output.unsecret(digest)


def create_secrets(meta: FleetMeta, material: Mapping[str, Mapping[str, pulumi.Output[str]]],
                   opts: pulumi.ResourceOptions) -> dict[str, core.Secret]:
    """One Opaque Secret per entry; `stringData` is a Pulumi secret, so the engine stores it encrypted."""
    created = {}
    for name, data in sorted(material.items()):
        component = {REDIS_SECRET: LEASE_STORE, JANITOR_CREDENTIALS: JANITOR}.get(name, "cli")
        created[name] = core.Secret(
            name,
            metadata=meta.metadata(name, component),
            type=SECRET_TYPES.get(name, "Opaque"),
            string_data=pulumi.Output.secret(dict(data)),
            opts=opts,
        )
    return created
