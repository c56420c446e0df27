"""Session options the fleet client validates before the CLI sees them.

Infinite sessions (`infiniteSessions: {enabled, backgroundCompactionThreshold, ...}` in camelCase): the CLI compacts a
session's history in the background once context use crosses `background_compaction_threshold`, and blocks the
next turn until compaction finishes once it crosses `buffer_exhaustion_threshold`. Both are fractions of the
model's prompt budget. The CLI (1.0.102) accepts anything here without complaint - a threshold of 1.5 or
`enabled: "yes"` is taken silently and the session simply never compacts as intended - so the client checks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from copilot import InfiniteSessionConfig

from .errors import FleetClientError

_FIELDS = ("enabled", "background_compaction_threshold", "buffer_exhaustion_threshold")
_CAMEL = {"backgroundCompactionThreshold": "background_compaction_threshold",
          "bufferExhaustionThreshold": "buffer_exhaustion_threshold"}


class InvalidSessionOption(FleetClientError, ValueError):
    """A session option the CLI would accept but misapply; nothing was sent."""


@dataclass(frozen=True)
class InfiniteSessions:
    """Validated infinite-session settings; defaults are the CLI's own (enabled, 0.80, 0.95)."""

    enabled: bool = True
    background_compaction_threshold: float = 0.80
    buffer_exhaustion_threshold: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise InvalidSessionOption(f"infinite_sessions.enabled must be true or false, got {self.enabled!r}")
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidSessionOption(f"infinite_sessions.{name} must be a fraction between 0 and 1, "
                                           f"got {value!r}")
        bg, full = self.background_compaction_threshold, self.buffer_exhaustion_threshold
        if not 0 < bg < 1:
            raise InvalidSessionOption(f"infinite_sessions.background_compaction_threshold must be above 0 and "
                                       f"below 1 (a fraction of the context), got {bg}")
        if not 0 < full <= 1:
            raise InvalidSessionOption(f"infinite_sessions.buffer_exhaustion_threshold must be above 0 and at most "
                                       f"1, got {full}")
        if bg >= full:
            raise InvalidSessionOption(f"infinite_sessions.background_compaction_threshold ({bg}) must be below "
                                       f"buffer_exhaustion_threshold ({full}): compaction has to start before the "
                                       "session blocks on it")

    @classmethod
    def coerce(cls, value: object) -> InfiniteSessions:
        """From an InfiniteSessions, the stack's InfiniteSessionsSpec (same field names), or a dict in the SDK's
        snake_case or in camelCase."""
        if isinstance(value, InfiniteSessions):
            return value
        if isinstance(value, Mapping):
            raw = {_CAMEL.get(str(k), str(k)): v for k, v in value.items()}
            unknown = sorted(set(raw) - set(_FIELDS))
            if unknown:
                raise InvalidSessionOption(f"infinite_sessions: unknown key(s) {unknown}; allowed: {list(_FIELDS)}")
            return cls(**raw)
        if all(hasattr(value, name) for name in _FIELDS):  # copilot_fleet.spec.InfiniteSessionsSpec
            return cls(**{name: getattr(value, name) for name in _FIELDS})
        raise InvalidSessionOption(
            f"infinite_sessions must be InfiniteSessions, a dict or the stack's infiniteSessions, got "
            f"{type(value).__name__}"
        )

    def to_sdk(self) -> InfiniteSessionConfig:
        """The dict `CopilotClient.create_session(infinite_sessions=...)` takes (the SDK maps it to camelCase)."""
        return InfiniteSessionConfig(
            enabled=self.enabled,
            background_compaction_threshold=float(self.background_compaction_threshold),
            buffer_exhaustion_threshold=float(self.buffer_exhaustion_threshold),
        )


def infinite_sessions_option(value: Any) -> InfiniteSessionConfig | None:
    """Validate an `infinite_sessions=` value for the SDK; None stays None (the CLI's defaults apply)."""
    return None if value is None else InfiniteSessions.coerce(value).to_sdk()
