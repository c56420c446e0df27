"""docs/reliability.md: the figures of a fault run, one table per scenario, between markers (the text around them
is written by hand and kept). The volume-mode fleet's scenarios and the store-mode ones (`store-*`, their own
processes) have a block each, so a run of either part rewrites only its own figures."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from faults.measure import ScenarioResult

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
STORE_BEGIN, STORE_END = "<!-- store-faults:begin -->", "<!-- store-faults:end -->"
STORE_PREFIX = "store-"


@dataclass
class RunInfo:
    command: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])
    load_after: float | None = None
    elapsed: float = 0.0
    fleet: str = ""  # what the fleet under test was


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _sec(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(r: ScenarioResult) -> str:
    if r.skipped:
        return "skipped"
    return "met" if r.ok else "**missed**: " + ", ".join(
        [f"{k} = {t.value}" for k, t in r.missed_targets.items()] + ([f"{len(r.failed_checks)} failed checks"]
                                                                     if r.failed_checks and not r.missed_targets
                                                                     else []))


def _key_figures(r: ScenarioResult) -> str:
    parts = [f"{k} {t.value}" + (f" (target {t.bound()})" if t.max is None else "") for k, t in r.targets.items()]
    for key in list(r.timings)[:2]:
        med, p95, _ = r.stats(key)
        parts.append(f"{key} {_sec(med)} / p95 {_sec(p95)}")
    return ", ".join(parts)


def render(results: list[ScenarioResult], info: RunInfo, markers: tuple[str, str] = (BEGIN, END)) -> str:
    from copilot_fleet import CLI_VERSION, SDK_VERSION

    load_after = f"{info.load_after:.1f}" if info.load_after is not None else "?"
    lines = [
        markers[0],
        f"Measured by `{info.command}` on {info.started:%Y-%m-%d %H:%M} UTC: {os.cpu_count()} cores "
        f"({_cpu_model()}), load average {info.load_before:.1f} before and {load_after} after (other jobs shared "
        f"the machine: times are upper bounds), Linux {platform.release()}; Copilot CLI {CLI_VERSION}, "
        f"github-copilot-sdk {SDK_VERSION}. Fleet under test: {info.fleet}. "
        f"Whole run: {info.elapsed / 60:.1f} min.",
        "",
        "| scenario | runs | failed runs | figures (target 0 unless noted) | targets |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        runs = "-" if r.skipped else f"{r.runs} {r.run_unit}"
        lines.append(f"| [{r.title}](#{_anchor(r.title)}) | {runs} | {'-' if r.skipped else r.failures} | "
                     f"{_cell(_key_figures(r))} | {_cell(_verdict(r))} |")
    for r in results:
        lines += ["", f"### {r.title}", ""]
        if r.skipped:
            lines += [f"Skipped: {r.skipped}", ""]
            continue
        lines += [f"{r.runs} {r.run_unit}, {r.failures} failed, {r.elapsed:.0f} s.", "",
                  "| figure | value | target | what it counts |", "|---|---|---|---|"]
        for key, t in r.targets.items():
            mark = "" if t.met else " **missed**"
            lines.append(f"| {key} | {t.value} | {t.bound()}{mark} | {_cell(t.meaning)} |")
        for key, value in r.counts.items():
            lines.append(f"| {key} | {value} | | |")
        if r.timings:
            lines += ["", "| time | median | p95 | n | from .. to |", "|---|---|---|---|---|"]
            for key in r.timings:
                med, p95, n = r.stats(key)
                lines.append(f"| {key} | {_sec(med)} | {_sec(p95)} | {n} | {_cell(r.timing_meaning.get(key, ''))} |")
        if r.errors:
            lines += ["", "Errors the clients saw: " + ", ".join(f"`{k}` x{v}" for k, v in r.errors.most_common())
                      + "."]
        failed = r.failed_checks
        if failed:
            lines += ["", f"Failed checks ({len(failed)}{', first 8' if len(failed) > 8 else ''}):"]
            lines += [f"- {_cell(c.what)}: {_cell(c.detail[:240])}" for c in failed[:8]]
        for note in r.notes:
            lines += ["", f"Note: {note}"]
    lines.append(markers[1])
    return "\n".join(lines)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def write(doc: Path, results: list[ScenarioResult], info: RunInfo) -> None:
    """Replace the text between the markers (or append it) in `doc`: the store scenarios' block and the others'
    block, each only when the run has results for it."""
    text = doc.read_text() if doc.exists() else "# Reliability\n\n"
    fleet = [r for r in results if not r.name.startswith(STORE_PREFIX)]
    store = [r for r in results if r.name.startswith(STORE_PREFIX)]
    for part, (begin, end) in ((fleet, (BEGIN, END)), (store, (STORE_BEGIN, STORE_END))):
        if not part:
            continue
        block = render(part, info, (begin, end))
        if begin in text and end in text:
            head, _, rest = text.partition(begin)
            _, _, tail = rest.partition(end)
            text = head + block + tail
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
