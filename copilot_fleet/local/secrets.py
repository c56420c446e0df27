"""Secrets of a local fleet: the ones it generates (0600 files under secrets/) and the ones stack config holds.

Generated secrets are made once and reused by every later `up`, so clients, session ids and Redis data keep
working across `down` and `up`; `down --purge` removes them. None is ever passed on a command line.
"""

from __future__ import annotations

import secrets as _random
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths, write_private
from copilot_fleet.spec import OFFLINE_SECRET

CONNECTION_TOKEN = "connection-token"
REDIS_PASSWORD = "redis-password"
MODEL_API_KEY = "model-api-key"


def user_token_name(user: str) -> str:
    return f"token-{user}"


def store_password_name(scope: str) -> str:
    """Store mode: the password of the scope's Redis ACL user (its servers' providers use it)."""
    return f"store-password-{scope}"


def generate() -> str:
    """256 random bits, URL-safe: no character that needs quoting in a config file or a URL."""
    return _random.token_urlsafe(32)


@dataclass
class FleetSecrets:
    """Secret name (its file name under secrets/) -> value; `new` holds the ones not yet on disk."""

    values: dict[str, str]
    new: set[str] = field(default_factory=set)

    def get(self, name: str) -> str:
        return self.values[name]

    def maybe(self, name: str) -> str | None:
        return self.values.get(name)


def _read_secret(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise LocalFleetError(f"{path} has mode {stat.S_IMODE(mode):04o}; secrets must be readable by their owner "
                              f"only (chmod 600 {path})")
    value = path.read_text().strip()
    if not value:
        raise LocalFleetError(f"{path} is empty; remove it (or run down --purge) to have a new secret generated")
    return value


def load_or_generate(paths: StatePaths, names: list[str]) -> FleetSecrets:
    """Existing secrets from disk, new ones generated in memory (written later by `write_new`, once nothing can
    stop the fleet from starting)."""
    out = FleetSecrets(values={})
    for name in names:
        path = paths.secret_file(name)
        if path.is_file():
            out.values[name] = _read_secret(path)
        else:
            out.values[name] = generate()
            out.new.add(name)
    return out


def load_existing(paths: StatePaths, names: list[str]) -> FleetSecrets:
    """Secrets a running fleet uses; a missing one is a broken state directory."""
    out = FleetSecrets(values={})
    for name in names:
        path = paths.secret_file(name)
        if not path.is_file():
            raise LocalFleetError(f"{paths.display(path)} is missing; stop the fleet with "
                                  f"`copilot-fleet down --stack {paths.stack} --purge` and start it again")
        out.values[name] = _read_secret(path)
    return out


def write_new(paths: StatePaths, fleet_secrets: FleetSecrets) -> None:
    for name in sorted(fleet_secrets.new):
        write_private(paths.secret_file(name), fleet_secrets.values[name] + "\n")
    fleet_secrets.new.clear()


def resolve_stack_secret(project_dir: Path, stack: str, key: str, value: SecretStr) -> str:
    """The plain value of a secret from stack config. Values Pulumi encrypted (`secure: v1:...`) can only be
    decrypted by the Pulumi CLI: ask it (`pulumi config get --path`), or say what to do without it."""
    plain = value.get_secret_value()
    if plain != OFFLINE_SECRET:
        return plain
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise LocalFleetError(
            f"fleet:{key} is encrypted in stacks/Pulumi.{stack}.yaml and only the Pulumi CLI can decrypt it: "
            "install the Pulumi CLI (https://www.pulumi.com/docs/install/), or remove fleet:provider to use the "
            "bundled test model")
    proc = subprocess.run([pulumi, "config", "get", "--path", f"fleet:{key}", "--stack", stack],
                          cwd=project_dir, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise LocalFleetError(f"pulumi config get fleet:{key} failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()
