"""Ask a session's CLI server whether it can still write that session's state.

CLI 1.0.102 answers nothing when a turn's events cannot be persisted (session-state/ read-only, or full to the last
page): it logs the write error and the turn never ends (docs/reliability.md, finding 5). After such a silence the
handle asks the server to write one small file in the session's workspace (`session.workspaces.createFile`, under
`session-state/<id>/files/`, the same file system as `events.jsonl`). A read-only or full file system fails that
write at once with the cause ("EROFS: Read-only file system (os error 30)"); any other answer means the silence
had another cause.

The file has a fixed name and is overwritten by every check, so a session keeps at most one. It is not removed:
the pinned CLI refuses `session.workspaces.removePath` unless its session memory v2 setting is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from copilot.generated.rpc import WorkspacesCreateFileRequest

from .errors import is_storage_error

logger = logging.getLogger(__name__)

CHECK_FILE = ".copilot-fleet-write-check"
# At least one byte: an empty file needs no data block, so it would still fit on a file system with none left.
CHECK_CONTENT = "copilot-fleet: a turn got no answer; this file checked that session-state can be written\n"
CHECK_TIMEOUT = 3.0  # seconds; a server that cannot answer this either gives no diagnosis


async def storage_write_error(sdk: Any, timeout: float | None = None) -> str | None:
    """The server's storage error for a write into this session's state, or None when the write worked or failed
    for another reason (including no answer within `timeout`, default CHECK_TIMEOUT)."""
    timeout = CHECK_TIMEOUT if timeout is None else timeout
    request = WorkspacesCreateFileRequest(content=CHECK_CONTENT, path=CHECK_FILE)
    try:
        await asyncio.wait_for(sdk.rpc.workspaces.create_file(request, timeout=timeout), timeout)
    except Exception as exc:  # noqa: BLE001 - any failure is an answer; only storage errors are a diagnosis
        if is_storage_error(exc):
            return str(exc)
        logger.debug("write check on session %s failed without a storage error", sdk.session_id, exc_info=True)
    return None
