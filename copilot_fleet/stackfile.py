"""Reading stack config straight from `stacks/Pulumi.<env>.yaml`, without the Pulumi engine.

The local fleet and the offline render read stack files this way; `pulumi up` reads the same keys through the
engine (see `pulumi_config.py`). Values that Pulumi encrypted (`secure: v1:...`) cannot be decrypted here: they
count as secrets that are set, and their value is a placeholder that never reaches a real server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from copilot_fleet.errors import FleetError, ProjectNotFound, StackFileError
from copilot_fleet.spec import NAMESPACE, OFFLINE_SECRET, FleetSpec, RawConfig, load_spec, namespace_values
from copilot_fleet.stacknames import InvalidStackName, check_stack_name


class StackNotFound(FleetError, LookupError):
    """No such stack file; the message lists the stacks there are."""


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding Pulumi.yaml."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "Pulumi.yaml").is_file():
            return d
    raise ProjectNotFound(f"no Pulumi.yaml in {here} or any parent: run copilot-fleet from the project directory "
                            "or pass --project-dir")


def stacks_dir(project_dir: Path) -> Path:
    """`stackConfigDir` from Pulumi.yaml (default: the project directory itself)."""
    meta = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    return project_dir / str(meta.get("stackConfigDir", "."))


def list_stacks(project_dir: Path) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in stacks_dir(project_dir).glob("Pulumi.*.yaml"))


def stack_file(project_dir: Path, stack: str) -> Path:
    try:
        check_stack_name(stack)
    except InvalidStackName as exc:
        raise StackNotFound(str(exc)) from None
    path = stacks_dir(project_dir) / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(list_stacks(project_dir)) or "none"
        raise StackNotFound(f"no stack {stack!r}: {path} does not exist (stacks here: {known})")
    return path


def _decode_secure(value: Any) -> tuple[Any, bool]:
    """Replace every `{secure: ...}` leaf with the offline placeholder; report whether any was found."""
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return OFFLINE_SECRET, True
        found = False
        out = {}
        for k, v in value.items():
            out[k], f = _decode_secure(v)
            found |= f
        return out, found
    if isinstance(value, list):
        items = [_decode_secure(v) for v in value]
        return [i for i, _ in items], any(f for _, f in items)
    return value, False


def read_stack_config(project_dir: Path, stack: str) -> tuple[dict[str, Any], set[str]]:
    """All config of a stack file as `ns:key -> native value`, and the keys holding encrypted values."""
    path = stack_file(project_dir, stack)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StackFileError(f"{path}: not valid YAML: {exc}") from exc
    config = doc.get("config") or {}
    if not isinstance(config, Mapping):
        raise StackFileError(f"{path}: 'config' must be a mapping of namespace:key to value")
    values: dict[str, Any] = {}
    secret: set[str] = set()
    for key, raw in config.items():
        values[str(key)], is_secret = _decode_secure(raw)
        if is_secret:
            secret.add(str(key))
    return values, secret


def project_name(project_dir: Path) -> str:
    """`name` from Pulumi.yaml: the namespace `pulumi config set KEY` writes when KEY has none."""
    meta = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    return str(meta.get("name", ""))


def raw_config_from_stack(project_dir: Path, stack: str) -> RawConfig:
    values, secret = read_stack_config(project_dir, stack)
    prefix = f"{NAMESPACE}:"
    return RawConfig(
        values=namespace_values(values),
        secret_keys=frozenset(k[len(prefix):] for k in secret if k.startswith(prefix)),
        stack=stack,
        other_keys=frozenset(k for k in values if not k.startswith(prefix)),
        project=project_name(project_dir),
    )


def load_stack_spec(project_dir: Path, stack: str) -> FleetSpec:
    """Read and validate one stack file: the whole path from YAML to a FleetSpec."""
    return load_spec(raw_config_from_stack(project_dir, stack))


def as_engine_config(values: Mapping[str, Any]) -> dict[str, str]:
    """Config as the Pulumi engine hands it to a program: strings, structured values as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
