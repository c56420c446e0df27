"""The one exception type of the local fleet: a failure the user can act on (the message says how)."""

from __future__ import annotations


class LocalFleetError(RuntimeError):
    """Printed without a traceback by `copilot-fleet` (exit status 1)."""
