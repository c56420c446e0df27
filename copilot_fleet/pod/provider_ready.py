"""Store mode: whether a CLI server's session store provider has registered, from the provider's ready file.

The provider (`python -m copilot_fleet.sessionstore`) writes its ready file only once it registered as the CLI's
session filesystem provider, names its own pid, the CLI's pid and the CLI's port in it, and removes it when it
stops. A server whose CLI answers but whose provider has not registered must take no session (the CLI would keep
it nowhere), so the health probe (Kubernetes readiness and liveness) and the local fleet's probe both require it.
A file left by a provider that was killed names a pid that is gone; a file of another server names another port.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read(path: Path) -> dict[str, Any]:
    """The ready file's content; OSError if it cannot be read, ValueError if it is not the provider's."""
    info = json.loads(path.read_text())
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    return info


def _alive(pid: object) -> str | None:
    """None if `pid` names a live process, else why not."""
    try:
        number = int(str(pid))
        if number <= 0:
            raise ValueError(pid)
        os.kill(number, 0)
    except ProcessLookupError:
        return f"the provider that registered (pid {pid}) is gone"
    except PermissionError:
        return None  # alive, run by another user (a root-run local fleet's provider)
    except (OverflowError, ValueError):
        return "the provider's ready file names no pid"
    return None


def not_ready(path: Path, port: int) -> str | None:
    """Why the provider of the server on `port` does not count as registered (None: it does)."""
    try:
        info = read(path)
    except FileNotFoundError:
        return "the session store provider has not registered yet"
    except (OSError, ValueError) as exc:
        return f"the provider's ready file {path} cannot be read: {exc}"
    if info.get("port") != port:
        return f"the provider's ready file names port {info.get('port')}, not {port}"
    return _alive(info.get("pid"))


def cli_pid(path: Path) -> int | None:
    """The CLI's pid as its provider started it (the CLI is the provider's child, not the port's visible holder)."""
    try:
        pid = read(path).get("cli_pid")
    except (OSError, ValueError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None
