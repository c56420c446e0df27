"""How much longer a bounded wait may take on a busy machine: one factor for every bound whose time is the machine's.

A bound such as "a CLI server answers a turn within 30 s" or "the fleet is ready within 60 s" is sized for a machine
with a core to spare. When more processes want to run than there are cores, each gets a share of a core and
everything a wait waits for (a CLI server's turn, a Python process importing the SDK, a supervisor starting a
program) takes proportionally longer, although nothing is wrong. A bound that ignores this turns a busy machine into
a failed check. So every such default bound is multiplied by one factor:

- `COPILOT_FLEET_TIME_SCALE`, when set: a number from 1 to 50 (set it on a machine whose slowness the load average
  does not show, such as a CPU-throttled container);
- else the 1-minute load average per usable core, never below 1 and at most `MAX_AUTO_SCALE`: on 2 cores a load
  average of 8 means each runnable process gets about a quarter of a core, so bounds are 4 times as long.

Only bounds on waiting for the machine are scaled; a wait ends as soon as what it waits for happens, so a larger
bound costs nothing when things go right. Bounds that are behaviour (a lease's ttl, a timeout a user passed on the
command line) are not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from copilot_fleet.errors import FleetError

ENV_VAR = "COPILOT_FLEET_TIME_SCALE"
MAX_SCALE = 50.0
MAX_AUTO_SCALE = 20.0  # a bound still ends a hung wait, if late: 30 s never becomes more than 10 minutes by itself


class TimeScaleError(FleetError, ValueError):
    """COPILOT_FLEET_TIME_SCALE is set to something that is not a factor from 1 to 50."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def load_per_core() -> float:
    """The 1-minute load average per usable core (0 where the platform has no load average)."""
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return one_minute / usable_cores()


def measure(environ: Mapping[str, str] | None = None) -> tuple[float, str]:
    """The factor for bounds on the machine's time (see the module's docstring), at least 1, and where it comes
    from, for messages: `(4.1, "load average 8.2 on 2 cores")`."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 1.0 <= value <= MAX_SCALE:  # NaN fails both comparisons
            raise TimeScaleError(f"{ENV_VAR}={raw!r}: expected a number from 1 to {MAX_SCALE:g} (how many times "
                                 "longer than on an idle machine a wait may take), or unset it to follow the load "
                                 "average")
        return value, ENV_VAR
    per_core, cores = load_per_core(), usable_cores()
    return round(min(MAX_AUTO_SCALE, max(1.0, per_core)), 1), f"load average {per_core * cores:.1f} on {cores} cores"


def time_scale(environ: Mapping[str, str] | None = None) -> float:
    """The factor alone (see `measure`)."""
    return measure(environ)[0]


def scaled(seconds: float, environ: Mapping[str, str] | None = None) -> float:
    """`seconds`, a bound sized for an idle machine, for this machine now."""
    return seconds * time_scale(environ)
