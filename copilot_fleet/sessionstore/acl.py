"""A Redis ACL user per store scope, so one user's server can reach only that user's session state.

In `per-user` fleets every user's CLI server runs with its own Redis user, allowed:
- read and write on `<prefix><user>:*` (its sessions, their bindings, its server registration) and nothing else;
- read only on the leases of that user's sessions (`copilot-fleet:lease:u-<len>-<user>-*`, the fleet id format makes
  the owner exact), which the fencing check reads;
- exactly the commands the store's scripts and the redis client need. Not KEYS or SCAN (they list every key name,
  whatever the key patterns), not CONFIG, FLUSH*, DEBUG, MONITOR, ACL, MODULE, nor any pub/sub channel.

So a tool run inside alice's CLI that gets hold of alice's provider credentials still cannot read bob's history,
list anybody's keys or change the server. Keeping the credentials themselves away from the tools is the process'
job (cli_process: the CLI's environment never has them; `--cli-user` runs the CLI as another OS user, which then
cannot read the provider's files or /proc entries); docs/session-store.md says where each credential lives.

`ACL SETUSER` changes only the running server: `acl_file_line` renders the same rules for an `aclfile`, with the
password as its SHA-256 (`#...`), so the file never holds it in clear.
"""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from .keys import SHARED_SCOPE, StoreKeys

USER_PREFIX = "copilot-store-"

# What a provider sends: the store's scripts (EVALSHA, and SCRIPT LOAD / EVAL when Redis lost its script cache),
# the registration's SET, PING. Commands inside scripts are checked too. Not CLIENT: redis-py's CLIENT SETINFO on
# connecting is allowed to fail (Redis 7.0 does not know it), and CLIENT LIST/KILL would reach other users.
PROVIDER_COMMANDS = (
    "ping", "auth", "hello", "evalsha", "eval", "script|load",
    "get", "set", "del", "unlink", "append", "strlen", "rename", "time",
    "hget", "hset", "hsetnx", "hincrby", "hlen", "hkeys", "hgetall", "hdel", "zadd",
)


def acl_user_name(scope: str) -> str:
    return USER_PREFIX + scope


def lease_read_pattern(keys: StoreKeys) -> str:
    """The leases a scope's servers may read: one user's sessions, or every session for the shared scope."""
    if keys.scope == SHARED_SCOPE:
        return f"%R~{keys.lease_prefix}*"
    return f"%R~{keys.lease_prefix}u-{len(keys.scope)}-{keys.scope}-*"


def acl_rules(keys: StoreKeys) -> list[str]:
    """The ACL rules (without the password) for the servers of one scope."""
    return [
        "reset", "on", "resetchannels", f"~{keys.base}*", lease_read_pattern(keys), "-@all",
        *(f"+{command}" for command in PROVIDER_COMMANDS),
    ]


async def ensure_scope_user(admin: aioredis.Redis, keys: StoreKeys, password: str) -> str:
    """Create or reset the scope's ACL user on a running Redis (with an admin connection); returns its name."""
    if len(password) < 16:
        raise ValueError("the store password of a scope must be at least 16 characters")
    name = acl_user_name(keys.scope)
    # The rules as the aclfile line writes them; redis-py's execute_command has no annotations.
    await admin.execute_command("ACL", "SETUSER", name, *acl_rules(keys), f">{password}")  # type: ignore[no-untyped-call]
    return name


def acl_file_line(keys: StoreKeys, password: str) -> str:
    """One `aclfile` line for the scope's user (the password stored as its SHA-256)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", acl_user_name(keys.scope), *acl_rules(keys)[1:], f"#{digest}"])
