"""The one exception type of the local fleet: a failure the user can act on (the message says how)."""

from __future__ import annotations

from copilot_fleet.errors import CommandError


class LocalFleetError(CommandError):
    """Printed without a traceback by `copilot-fleet` (exit status 1), like every CommandError."""
