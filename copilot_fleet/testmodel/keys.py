"""Where the test model's API key comes from: a 0600 file, or the TESTMODEL_API_KEY environment variable."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from copilot_fleet.errors import FleetError

ENV_VAR = "TESTMODEL_API_KEY"


class ApiKeyError(FleetError, ValueError):
    """The configured key cannot be used; the message says which source and why."""


def load_api_key(path: str | Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The key from `path` if given, else from $TESTMODEL_API_KEY, else None (no authentication).

    The file must be readable by its owner only (mode 0600 or 0400): a key others can read is not a secret.
    """
    if path is not None:
        p = Path(path)
        try:
            mode = p.stat().st_mode
            text = p.read_text()
        except OSError as exc:
            raise ApiKeyError(f"cannot read API key file {p}: {exc.strerror}") from exc
        if not stat.S_ISREG(mode):
            raise ApiKeyError(f"API key file {p} is not a regular file")
        if mode & 0o077:
            raise ApiKeyError(
                f"API key file {p} has mode {stat.S_IMODE(mode):04o}; it must be readable by its owner only "
                f"(chmod 600 {p})"
            )
        key = text.strip()
        if not key or any(c.isspace() for c in key):
            raise ApiKeyError(f"API key file {p} must hold one key: non-empty, no whitespace inside")
        return key
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    return value or None
