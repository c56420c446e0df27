"""The Redis key layout of the session store, in one place (the store, its admin functions and the ACLs use it).

Everything of one scope lives under `<prefix><scope>:` (default prefix `copilot-fleet:store:`). The scope is the
user in `per-user` fleets and `shared` in pooled ones, so one Redis ACL pattern (`~<prefix><scope>:*`) gives a
server exactly its own users' data and nothing else.

    <prefix><scope>:s:<sid>:tree         hash: relative path -> "f:<birth ms>:<mtime ms>" | "d:<birth ms>:<mtime ms>"
    <prefix><scope>:s:<sid>:f:<path>     string: a file's content (appends are APPEND)
    <prefix><scope>:s:<sid>:meta         hash: created, modified (ms), bytes (sum of file sizes), writer
    <prefix><scope>:s:<sid>:bind         string: "<lease token> <server id>" or "<lease token> *": which server the
                                         holder of the session's lease attached it on (written by the client)
    <prefix><scope>:index                sorted set: session id -> last modified (ms), for listing and cleanup
    <prefix><scope>:server:<server id>   string: the running instance of that server (a random nonce, with a TTL)

The session's lease is the fleet client's: `copilot-fleet:lease:<sid>` (copilot_fleet.client.lease).

Not for Redis Cluster: a write checks the lease key and the session's keys in one script, and a recursive remove or
rename computes its keys inside the script; both need every key in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from copilot_fleet.client.ids import validate_id_part
from copilot_fleet.client.lease import LEASE_KEY_PREFIX

DEFAULT_PREFIX = "copilot-fleet:store:"
SHARED_SCOPE = "shared"


@dataclass(frozen=True)
class StoreKeys:
    scope: str
    prefix: str = DEFAULT_PREFIX
    lease_prefix: str = LEASE_KEY_PREFIX

    def __post_init__(self) -> None:
        validate_id_part(self.scope, "store scope")
        if not self.prefix or any(c in self.prefix for c in "*?[]\\"):
            raise ValueError(f"store key prefix {self.prefix!r} must be non-empty and free of glob characters")

    @property
    def base(self) -> str:
        return f"{self.prefix}{self.scope}:"

    def session(self, session_id: str) -> str:
        return f"{self.base}s:{session_id}:"

    def tree(self, session_id: str) -> str:
        return self.session(session_id) + "tree"

    def meta(self, session_id: str) -> str:
        return self.session(session_id) + "meta"

    def bind(self, session_id: str) -> str:
        return self.session(session_id) + "bind"

    def content_prefix(self, session_id: str) -> str:
        return self.session(session_id) + "f:"

    def content(self, session_id: str, relative: str) -> str:
        return self.content_prefix(session_id) + relative

    @property
    def index(self) -> str:
        return self.base + "index"

    def server(self, server_id: str) -> str:
        return f"{self.base}server:{server_id}"

    def lease(self, session_id: str) -> str:
        return self.lease_prefix + session_id
