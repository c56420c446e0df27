"""Reading the `fleet` namespace inside a running Pulumi program (real engine or mocks)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from copilot_fleet.spec import NAMESPACE, FleetSpec, RawConfig, load_spec, namespace_values, secret_namespace_keys


def _decode(value: Any) -> Any:
    # The engine passes every value as a string; structured values and numbers arrive as JSON text.
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def raw_config_from_engine() -> RawConfig:
    """Every key of the namespace, so unknown keys can be refused (pulumi.Config only answers named keys).

    The language host passes the stack's config as the PULUMI_CONFIG environment variable
    (`pulumi.runtime.get_config_env`); in-process runs (the SDK's test helpers, the Automation API) fill the SDK's
    config store through `pulumi.runtime.set_all_config`. Listing that store (`pulumi.runtime.config.CONFIG`) is
    the one read that is not a documented function: no public function lists the keys. Secrecy is asked through the
    public `pulumi.runtime.is_config_secret` and `get_config_secret_keys_env`.
    """
    flat: dict[str, Any] = dict(pulumi.runtime.get_config_env())
    flat.update(runtime_config.CONFIG.get())
    secret = set(pulumi.runtime.get_config_secret_keys_env()) | {k for k in flat if pulumi.runtime.is_config_secret(k)}
    return RawConfig(
        values={k: _decode(v) for k, v in namespace_values(flat).items()},
        secret_keys=secret_namespace_keys(secret),
        stack=pulumi.get_stack(),
        other_keys=frozenset(k for k in flat if not k.startswith(f"{NAMESPACE}:")),
        project=pulumi.get_project(),
    )


def load_engine_spec() -> FleetSpec:
    return load_spec(raw_config_from_engine())
