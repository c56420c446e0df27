"""Azure resource names: the rules each kind imposes, in one place (no Pulumi here).

Storage accounts and Key Vaults are named in global DNS (`<name>.file.core.windows.net`, `<name>.vault.azure.net`),
so their names carry a random suffix generated once per stack (pulumi-random); everything else lives inside the
stack's resource group and takes readable names.
"""

from __future__ import annotations

import hashlib
import re

from copilot_fleet.errors import FleetError

# pulumi-random RandomString settings for the per-stack suffix: lowercase letters and digits fit every rule below.
SUFFIX_LENGTH = 8

_STORAGE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_VAULT = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")
_KV_SECRET = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_SHARE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


class AzureNameError(FleetError, ValueError):
    """A generated name that Azure would refuse; names the rule broken."""


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def storage_account_name(volume: str, suffix: str) -> str:
    """`cf` + 8 hex of the session volume + the stack suffix: 3-24 lowercase letters and digits, globally unique."""
    name = f"cf{_short_hash(volume, 8)}{suffix}"
    if not _STORAGE_ACCOUNT.fullmatch(name):
        raise AzureNameError(f"storage account name {name!r}: 3-24 lowercase letters and digits")
    return name


def vault_name(stack: str, suffix: str) -> str:
    """`kv-<stack, trimmed>-<suffix>`: 3-24 letters, digits and '-', starting with a letter."""
    stem = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[: 24 - len("kv--") - len(suffix)].strip("-")
    name = f"kv-{stem}-{suffix}" if stem else f"kv-{suffix}"
    if not _VAULT.fullmatch(name) or "--" in name:
        raise AzureNameError(f"key vault name {name!r}: 3-24 letters, digits and single '-', starting with a letter")
    return name


def redis_name(stack: str, suffix: str) -> str:
    """`redis-<stack>-<suffix>`: 1-63 letters, digits and single '-' (a global DNS name too)."""
    stem = re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")[: 63 - len("redis--") - len(suffix)].strip("-")
    name = f"redis-{stem}-{suffix}" if stem else f"redis-{suffix}"
    if not re.match(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,62}$", name):
        raise AzureNameError(f"redis cache name {name!r}: 1-63 lowercase letters, digits and single '-'")
    return name


def share_name(volume: str) -> str:
    """The SMB share of a session volume (topology volume names are already DNS labels)."""
    if not _SHARE.match(volume):
        raise AzureNameError(f"file share name {volume!r}: 3-63 lowercase letters, digits and single '-'")
    return volume


def kv_secret_name(*parts: str) -> str:
    """Key Vault secret names allow letters, digits and '-' only (no '_' or '.')."""
    name = "-".join(re.sub(r"[^0-9a-zA-Z-]+", "-", p) for p in parts)
    if not _KV_SECRET.match(name):
        raise AzureNameError(f"key vault secret name {name!r}: 1-127 letters, digits and '-'")
    return name


def identity_name(name: str, stack: str) -> str:
    """`id-<name>-<stack>`: user-assigned identities are named within a resource group, which several stacks may
    share (fleet:azure.resourceGroupName): the stack keeps their names apart. 3-128 letters, digits, '-' and '_'."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", f"id-{name}-{stack}")[:128].rstrip("-_")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$", stem):
        raise AzureNameError(f"managed identity name {stem!r}: 3-128 letters, digits, '-' and '_'")
    return stem


def dns_prefix(stack: str) -> str:
    """The AKS DNS prefix: 1-54 letters, digits and '-', starting and ending alphanumeric."""
    stem = re.sub(r"[^a-z0-9]+", "-", f"copilot-{stack.lower()}").strip("-")[:54].strip("-")
    return stem
