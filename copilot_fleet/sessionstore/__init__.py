"""Session state in a store instead of on a shared volume: the CLI's session filesystem, served from Redis.

A provider process (`python -m copilot_fleet.sessionstore`) starts one Copilot CLI server as its child, registers
with it as the session filesystem provider (`sessionFs.setProvider`) and answers every `sessionFs.*` request of
every session on that server from the store. Writes are fenced by the session's lease (fencing.py): a server that
lost its right to a session cannot write to it, whatever it believes.

Modules: paths (the CLI's paths -> one key per session file), store (interface and errors), keys and lua (the Redis
layout and scripts), redis_store (the Redis backend), fencing (binding leases to servers; server registration),
provider (the sessionFs requests), jsonrpc (the connection to the CLI), cli_process and server (the process),
admin (listing, deleting and cleaning up sessions in the store), acl (a Redis ACL user per scope).
docs/session-store.md explains the design and the figures.
"""
