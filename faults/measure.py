"""What a fault scenario measured: counts against targets, timings as median and p95, and the checks behind them.

One `ScenarioResult` per scenario. Counters that have a target (lost turns, diverged sessions, ...) are
`Target`s: the scenario meets its targets when every one of them is within bounds and no check failed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values. p95 of 20 values is the 19th smallest."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Target:
    """A counter with a bound: `value` must be at most `max` (for example lost turns: max 0), or at least `min`
    (for example kills done: min 100)."""

    value: int = 0
    max: int | None = None
    min: int | None = None
    meaning: str = ""

    @property
    def met(self) -> bool:
        if self.max is not None and self.value > self.max:
            return False
        return not (self.min is not None and self.value < self.min)

    def bound(self) -> str:
        if self.max is not None and self.min is not None:
            return f"{self.min}..{self.max}"
        if self.max is not None:
            return f"≤ {self.max}" if self.max else "0"
        return f"≥ {self.min}" if self.min is not None else "-"


@dataclass
class Check:
    """One assertion a scenario made, kept for the report and for test failure messages."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str  # a short id: sigkill, writers, ...
    title: str
    runs: int = 0  # how many times the fault was applied (kills, attempts, outages, ...)
    run_unit: str = "runs"
    failures: int = 0  # runs that missed a target or a check
    targets: dict[str, Target] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # figures without a target (informative)
    timings: dict[str, list[float]] = field(default_factory=dict)  # seconds
    timing_meaning: dict[str, str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # what the clients saw: error type -> count
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the scenario could not run here
    elapsed: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    # -- recording ---------------------------------------------------------------------------------------------

    def target(self, key: str, *, max: int | None = None, min: int | None = None, meaning: str = "") -> Target:
        if key not in self.targets:
            self.targets[key] = Target(max=max, min=min, meaning=meaning)
        return self.targets[key]

    def bump(self, key: str, by: int = 1) -> None:
        if key in self.targets:
            self.targets[key].value += by
        else:
            self.counts[key] = self.counts.get(key, 0) + by

    def time(self, key: str, seconds: float, meaning: str = "") -> None:
        self.timings.setdefault(key, []).append(seconds)
        if meaning:
            self.timing_meaning.setdefault(key, meaning)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def error(self, exc: BaseException | str) -> None:
        self.errors[exc if isinstance(exc, str) else type(exc).__name__] += 1

    def finish(self) -> ScenarioResult:
        self.elapsed = time.monotonic() - self._started
        return self

    # -- reading -----------------------------------------------------------------------------------------------

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def missed_targets(self) -> dict[str, Target]:
        return {k: t for k, t in self.targets.items() if not t.met}

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.failed_checks and not self.missed_targets

    def stats(self, key: str) -> tuple[float | None, float | None, int]:
        values = self.timings.get(key, [])
        return median(values), percentile(values, 95), len(values)

    def summary(self) -> str:
        """A few lines for a test failure message or the console."""
        if self.skipped:
            return f"{self.name}: skipped: {self.skipped}"
        head = f"{self.name}: {self.runs} {self.run_unit}, {self.failures} failed, {self.elapsed:.1f} s"
        lines = [head + (" - OK" if self.ok else " - TARGETS MISSED")]
        for key, t in self.targets.items():
            lines.append(f"  {key} = {t.value} (target {t.bound()}){'' if t.met else '  <-- missed'}")
        for key, value in self.counts.items():
            lines.append(f"  {key} = {value}")
        for key in self.timings:
            med, p95, n = self.stats(key)
            lines.append(f"  {key}: median {_s(med)}, p95 {_s(p95)} (n={n})")
        if self.errors:
            lines.append("  errors seen: " + ", ".join(f"{k} x{v}" for k, v in self.errors.most_common()))
        for c in self.failed_checks[:15]:
            lines.append(f"  FAILED {c.what}: {c.detail}")
        if len(self.failed_checks) > 15:
            lines.append(f"  ... and {len(self.failed_checks) - 15} more failed checks")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_started", None)
        out["errors"] = dict(self.errors)
        out["ok"] = self.ok
        out["stats"] = {k: dict(zip(("median", "p95", "n"), self.stats(k), strict=True)) for k in self.timings}
        return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
