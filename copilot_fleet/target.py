"""The target: the one JSON shape every platform hands to verification.

Pulumi stacks export it as stack outputs (`pulumi stack output --json --show-secrets`); the local fleet writes it
to a state file. The smoke tests and the fleet client read nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from copilot_fleet.errors import FleetError
from copilot_fleet.isolation import Isolation

# A target lists addresses and tokens: a few kilobytes, a few hundred for thousands of per-user servers. Anything
# larger is not a target, and is refused before it is read.
MAX_TARGET_BYTES = 4 * 1024 * 1024

Platform = Literal["kubernetes", "azure", "local"]


class TargetError(FleetError, ValueError):
    """A target file or document that cannot be used; the message names what is wrong."""


# What stands for a secret in a redacted target (`copilot-fleet target` without --show-secrets, as Pulumi prints it).
REDACTED = "[secret]"


class ProviderTarget(BaseModel):
    """The BYOK model endpoint sessions use; re-supplied on every resume (the CLI does not store it)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["openai", "azure", "anthropic"]
    base_url: str
    api_key: SecretStr | None = None
    wire_api: Literal["completions", "responses"] | None = None

    def to_sdk(self) -> dict[str, str]:
        """The dict the SDK's `provider=` argument takes."""
        out: dict[str, str] = {"type": self.type, "base_url": self.base_url}
        if self.api_key is not None:
            out["api_key"] = self.api_key.get_secret_value()
        if self.wire_api is not None:
            out["wire_api"] = self.wire_api
        return out


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


DEFAULT_STORE_KEY_PREFIX = "copilot-fleet:store:"  # copilot_fleet.sessionstore.keys.DEFAULT_PREFIX
SHARED_STORE_SCOPE = "shared"


class SessionStateTarget(BaseModel):
    """Where the fleet keeps session state, and what a client needs to lease, bind, list and delete in store mode.

    `volume`: session-state/ on the servers' volumes (the CLI lists and deletes). `store`: Redis through each
    server's session filesystem provider; the client binds each session's lease to the server it attaches on, by
    that server's id, and lists and deletes in the store (`redis_url`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["volume", "store"] = "volume"
    key_prefix: str = DEFAULT_STORE_KEY_PREFIX
    # per-user: user id -> the store scope of the user's server; the shared patterns use `shared_scope`.
    user_scopes: dict[str, str] = Field(default_factory=dict)
    shared_scope: str = SHARED_STORE_SCOPE
    # A server's id as its provider registered it, by address as the target lists it; an address not listed is its
    # own id. The load-balanced endpoint has none: a client attaching through it binds `*`.
    server_ids: dict[str, str] = Field(default_factory=dict)

    @field_validator("server_ids")
    @classmethod
    def _addresses(cls, v: dict[str, str]) -> dict[str, str]:
        for address in v:
            _check_address(address)
        return v


class Target(BaseModel):
    """What a deployment hands to verification: the fields and which are secrets are in docs/target.md."""

    model_config = ConfigDict(extra="ignore")

    stack: str
    platform: Platform
    isolation: Isolation
    endpoint: str | None = None
    replicas: list[str] = Field(default_factory=list)
    users: dict[str, str] = Field(default_factory=dict)
    connection_token: SecretStr | None = None
    user_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    redis_url: SecretStr | None = None
    provider: ProviderTarget | None = None
    model: str | None = None
    # Kubernetes and Azure (AKS) targets: where the fleet's pods run, for the host checks through kubectl.
    namespace: str | None = None
    # Old targets have none: volume mode.
    session_state: SessionStateTarget = Field(default_factory=SessionStateTarget)

    @property
    def store_mode(self) -> bool:
        return self.session_state.mode == "store"

    def store_scope(self, user: str | None) -> str:
        """The store scope of the server `user` is routed to: the user's own (per-user) or the shared one."""
        if self.isolation == "per-user":
            if user is None or user not in self.users:
                raise KeyError(f"no server for user {user!r} in this per-user fleet")
            return self.session_state.user_scopes.get(user, user)
        return self.session_state.shared_scope

    def server_id(self, address: str) -> str:
        """The id a client binds a session's lease to when attaching on `address`: `*` for the load-balanced
        endpoint (any replica behind it may claim it), else the replica's registered id (default: its address)."""
        if self.endpoint is not None and address == self.endpoint and address not in self.replicas:
            return "*"
        return self.session_state.server_ids.get(address, address)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_address(cls, v: str | None) -> str | None:
        return None if v is None else _check_address(v)

    @field_validator("replicas")
    @classmethod
    def _replicas_are_addresses(cls, v: list[str]) -> list[str]:
        return [_check_address(a) for a in v]

    @field_validator("users")
    @classmethod
    def _users_are_addresses(cls, v: dict[str, str]) -> dict[str, str]:
        return {user: _check_address(a) for user, a in v.items()}

    def token_for(self, user: str | None = None) -> str | None:
        """The connection token for the fleet, or for one user's server in `per-user`."""
        if user is not None and user in self.user_tokens:
            return self.user_tokens[user].get_secret_value()
        return self.connection_token.get_secret_value() if self.connection_token else None

    def secret_values(self, min_length: int = 8) -> dict[str, str]:
        """Every secret the target carries, by name, for audits that search for them in logs, files and process
        arguments. Values shorter than `min_length` are left out: they would match by chance."""
        values: dict[str, str] = {}
        if self.connection_token is not None:
            values["connection_token"] = self.connection_token.get_secret_value()
        values.update({f"user_tokens.{u}": t.get_secret_value() for u, t in self.user_tokens.items()})
        if self.redis_url is not None and (password := urlsplit(self.redis_url.get_secret_value()).password):
            values["redis password"] = password
        if self.provider is not None and self.provider.api_key is not None:
            values["provider api_key"] = self.provider.api_key.get_secret_value()
        return {k: v for k, v in values.items() if len(v) >= min_length}

    def redacted_json_dict(self) -> dict[str, object]:
        """The target with every secret replaced by `[secret]` (the Redis URL keeps its host, loses its password):
        what `copilot-fleet target` prints unless asked to show secrets, as `pulumi stack output` does."""
        out = self.to_json_dict()
        if "connection_token" in out:
            out["connection_token"] = REDACTED
        if "user_tokens" in out:
            out["user_tokens"] = {user: REDACTED for user in self.user_tokens}
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url.get_secret_value())
            if parts.password is not None:
                host = parts.netloc.rpartition("@")[2]
                out["redis_url"] = parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{host}").geturl()
        provider = out.get("provider")
        if isinstance(provider, dict) and "api_key" in provider:
            provider["api_key"] = REDACTED
        return out

    def to_json_dict(self) -> dict[str, object]:
        """The target with secrets revealed: for the state file and `copilot-fleet target --show-secrets` only."""
        out = self.model_dump(mode="python", exclude_none=True)
        if not self.store_mode:  # volume mode is what a target without the key means: keep old targets' shape
            del out["session_state"]
        for key in ("connection_token", "redis_url"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).get_secret_value()
        out["user_tokens"] = {u: t.get_secret_value() for u, t in self.user_tokens.items()}
        if self.provider is not None:
            out["provider"] = self.provider.to_sdk()
        if not out["user_tokens"]:
            del out["user_tokens"]
        return out


def parse_target(document: str | bytes, source: str = "target") -> Target:
    """Parse a target JSON document; any defect raises TargetError naming the field."""
    text = decode_target(document, source) if isinstance(document, bytes) else document
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TargetError(f"{source}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from exc
    except RecursionError:  # the decoder recurses once per level of nesting
        raise TargetError(f"{source}: not valid JSON for a target (arrays or objects nested too deeply); a target "
                          "is an object of a few levels") from None
    if not isinstance(raw, dict):
        raise TargetError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    # `pulumi stack output --json` wraps nothing, but be tolerant of {"target": {...}} exports.
    if set(raw) == {"target"} and isinstance(raw["target"], dict):
        raw = raw["target"]
    if redacted := _redacted_fields(raw):
        raise TargetError(f"{source}: {', '.join(redacted)} redacted ({REDACTED}), so no server would accept it; "
                          "write the target with `copilot-fleet target --stack NAME --show-secrets > FILE`")
    try:
        return Target.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise TargetError(f"{source}: {problems}") from exc


def _redacted_fields(raw: dict[str, object]) -> list[str]:
    """The secret fields of a target document that hold the redaction mark instead of the secret."""
    found = [key for key in ("connection_token",) if raw.get(key) == REDACTED]
    tokens = raw.get("user_tokens")
    if isinstance(tokens, dict):
        found += [f"user_tokens.{u}" for u, t in tokens.items() if t == REDACTED]
    if isinstance(raw.get("redis_url"), str) and f":{REDACTED}@" in str(raw["redis_url"]):
        found.append("redis_url")
    provider = raw.get("provider")
    if isinstance(provider, dict) and provider.get("api_key") == REDACTED:
        found.append("provider.api_key")
    return found


def decode_target(data: bytes, source: str) -> str:
    """The text of a target document: UTF-8, or a TargetError naming the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(f"{source}: not UTF-8 (byte 0x{data[exc.start]:02x} at position {exc.start}); a target "
                          "is JSON text in UTF-8") from None


def read_target_bytes(stream: BinaryIO, source: str) -> bytes:
    """At most MAX_TARGET_BYTES from an open file: its size is checked before anything is read, and a stream
    that cannot tell its size (a pipe) is read only one byte past the limit."""
    try:
        size = os.fstat(stream.fileno()).st_size
    except (OSError, ValueError):
        size = 0
    if size > MAX_TARGET_BYTES:
        raise TargetError(f"{source}: {size} bytes, larger than the limit of {MAX_TARGET_BYTES} bytes for a target "
                          "file (a target is a few kilobytes)")
    data = stream.read(MAX_TARGET_BYTES + 1)
    if len(data) > MAX_TARGET_BYTES:
        raise TargetError(f"{source}: more than {MAX_TARGET_BYTES} bytes, larger than the limit for a target file "
                          "(a target is a few kilobytes)")
    return data


def load_target(path: str | Path) -> Target:
    """Read and parse a target file; its size is checked before it is read."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = read_target_bytes(f, str(p))
    except OSError as exc:
        raise TargetError(f"cannot read target file {p}: {exc.strerror}") from exc
    return parse_target(data, source=str(p))
