"""Post-deploy verification: run `smoke_tests/` against a target and report each check.

Two halves, one per process:
- the runner (`run_smoke_tests`) starts `python -m pytest smoke_tests --target FILE` as a child process with this
  module loaded as a pytest plugin (`-p copilot_fleet.verify --verify-results FILE`), bounds it with a deadline,
  reads the results the child writes as each check finishes, and returns a `VerifyReport`;
- the plugin (the `pytest_*` hooks at the bottom) runs inside that child and writes one JSON line per check.

Why a child process: the smoke tests open SDK clients, event loops and Redis connections and may start their own
subprocesses; a child can be killed as a whole when the deadline passes, and `verify` can run many times in one
process (the project's tests do) without pytest's module caches leaking between runs. A report file is written as
checks finish, so a run that is cut off still reports what it got through.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from copilot_fleet import timescale
from copilot_fleet.errors import FleetError

Outcome = Literal["passed", "failed", "skipped"]

RESULTS_OPTION = "--verify-results"
# Bounds on an idle machine; the defaults are scaled to the machine's load when a run starts (timescale.py).
DEFAULT_TIMEOUT_SECONDS = 120.0  # the whole run
DEFAULT_SMOKE_TIMEOUT_SECONDS = 30.0  # any single wait of a check (--smoke-timeout): a turn, a connect, a lease
_MESSAGE_LIMIT = 400

_SYMBOL: dict[str, str] = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


class VerifyError(FleetError, RuntimeError):
    """Verification could not run at all (no smoke_tests/ folder, pytest would not start); nothing was checked."""


@dataclass(frozen=True)
class CheckResult:
    """One check of the smoke suite: a test (one parameter set of it), with its outcome."""

    nodeid: str
    label: str
    outcome: Outcome
    seconds: float
    message: str = ""  # the skip reason, or the first line(s) of the failure
    detail: str = ""  # the whole failure text (pytest's report), for --json and for debugging

    def line(self, width: int = 72) -> str:
        """`  PASS  label ......  1.2 s` with the reason or failure under it."""
        text = f"  {_SYMBOL[self.outcome]}  {self.label}"
        if self.outcome != "skipped":
            text = f"{text.ljust(width)} {self.seconds:5.1f} s"
        if self.message:
            prefix = "skipped: " if self.outcome == "skipped" else ""
            text += "\n" + "\n".join(f"        {prefix if i == 0 else ''}{part}"
                                     for i, part in enumerate(self.message.splitlines()))
        return text


@dataclass
class VerifyReport:
    """What a verification run found. `ok` is the exit decision: nothing failed and the run completed."""

    target: str
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    pytest_exit: int | None = None
    problem: str | None = None  # why the run itself went wrong (timeout, pytest usage error), if it did
    timed_out: bool = False
    output: str = ""  # pytest's own output (tracebacks), kept for failures

    def count(self, outcome: Outcome) -> int:
        return sum(1 for c in self.checks if c.outcome == outcome)

    def by_outcome(self, outcome: Outcome) -> list[CheckResult]:
        return [c for c in self.checks if c.outcome == outcome]

    def find(self, nodeid_part: str) -> list[CheckResult]:
        """The checks whose node id contains `nodeid_part` (e.g. a test function's name)."""
        return [c for c in self.checks if nodeid_part in c.nodeid]

    @property
    def ok(self) -> bool:
        return self.problem is None and self.pytest_exit == 0 and self.count("failed") == 0 and bool(self.checks)

    def header(self) -> str:
        return f"copilot-fleet verify: {self.target}"

    def footer(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o}" for o in ("passed", "failed", "skipped"))
        lines = []
        if self.problem:
            lines.append(f"  problem: {self.problem}")
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {counts} in {self.seconds:.1f} s")
        return "\n".join(lines)

    def render(self) -> str:
        return "\n".join([self.header(), *(c.line() for c in self.checks), self.footer()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "pytest_exit": self.pytest_exit,
            "problem": self.problem,
            "timed_out": self.timed_out,
            "counts": {o: self.count(o) for o in ("passed", "failed", "skipped")},
            "checks": [asdict(c) for c in self.checks],
        }


def find_smoke_tests(project_dir: Path | None) -> Path:
    """The suite: the project's own `smoke_tests/` if it has one, else the one installed with this package
    (copilot_fleet/smoke_tests), so that a stack project elsewhere, or no project at all, still gets the suite that
    matches this code."""
    packaged = Path(__file__).resolve().parent / "smoke_tests"
    candidates = [project_dir / "smoke_tests", packaged] if project_dir is not None else [packaged]
    for path in candidates:
        if (path / "conftest.py").is_file():
            return path.resolve()
    raise VerifyError("no smoke test suite found (looked for smoke_tests/conftest.py in "
                      + " and ".join(str(c.parent) for c in candidates) + ")")


def run_smoke_tests(
    target_file: Path,
    *,
    project_dir: Path | None,
    target_label: str,
    fleet_state: Path | None = None,
    timeout: float | None = None,
    smoke_timeout: float | None = None,
    select: str | None = None,
    stream_output: bool = False,
    extra_args: Sequence[str] = (),
    on_result: Callable[[CheckResult], None] | None = None,
    pass_fds: Sequence[int] = (),
) -> VerifyReport:
    """Run the smoke suite against `target_file` in a child pytest; return the report when it ends.

    `timeout` bounds the whole run: the child (and anything it started in its process group) is killed then, and
    the report says so. `smoke_timeout` bounds each single wait of a check. Either defaults to its DEFAULT_ value
    scaled to the machine's load (`copilot_fleet.timescale`). `on_result` is called as each check finishes (for
    live progress). `stream_output` passes pytest's own output through instead of keeping it for the report.
    `pass_fds`: descriptors the child inherits (a `target_file` of the form /dev/fd/N).
    """
    timeout = timescale.scaled(DEFAULT_TIMEOUT_SECONDS) if timeout is None else timeout
    smoke_timeout = timescale.scaled(DEFAULT_SMOKE_TIMEOUT_SECONDS) if smoke_timeout is None else smoke_timeout
    if not timeout > 0 or not smoke_timeout > 0:
        raise ValueError(f"timeouts must be > 0 seconds, got {timeout} (run) and {smoke_timeout} (single wait)")
    suite = find_smoke_tests(project_dir)
    report = VerifyReport(target=target_label)
    with tempfile.TemporaryDirectory(prefix="copilot-fleet-verify-") as tmp:
        results_path = Path(tmp) / "results.jsonl"
        results_path.touch(mode=0o600)
        log_path = Path(tmp) / "pytest.log"
        argv = [
            sys.executable, "-m", "pytest", str(suite),
            "--target", str(target_file),
            "-p", "copilot_fleet.verify", RESULTS_OPTION, str(results_path),
            "-p", "no:cacheprovider", "--color=no", "--no-header",
            "-q" if stream_output else "-qq", "--tb=short", "-rN",
            f"--smoke-timeout={smoke_timeout:g}",
        ]
        if fleet_state is not None:
            argv += ["--fleet-state", str(fleet_state)]
        if select:
            argv += ["-k", select]
        argv += list(extra_args)
        started = time.monotonic()
        with open(log_path, "w") as log:
            out: IO[str] | None = None if stream_output else log
            try:
                # A new session (process group) so that a timeout can stop the child and what it started.
                child = subprocess.Popen(argv, cwd=suite.parent, stdout=out, stderr=subprocess.STDOUT if out else None,
                                         stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=tuple(pass_fds))
            except OSError as exc:
                raise VerifyError(f"cannot start pytest ({argv[0]} -m pytest): {exc.strerror}") from exc
            reader = _ResultReader(results_path)
            deadline = started + timeout
            try:
                while True:
                    try:
                        report.pytest_exit = child.wait(timeout=0.2)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    finally:
                        for result in reader.read_new():
                            report.checks.append(result)
                            if on_result is not None:
                                on_result(result)
                    if time.monotonic() > deadline:
                        report.timed_out = True
                        _stop_group(child)
                        report.problem = (f"the run was stopped after {timeout:g} s (checks still running are "
                                          "not reported); look for a hung server, or raise --timeout on a busy "
                                          f"machine (or {timescale.ENV_VAR}, which scales every default bound)")
                        break
                for result in reader.read_new():  # anything written between the last poll and the exit
                    report.checks.append(result)
                    if on_result is not None:
                        on_result(result)
            except BaseException:
                # Ctrl-C here, or a progress line that could not be written (`verify | head`): the child is in a
                # session of its own, so nothing else stops it. SIGINT first: its checks delete their sessions.
                _stop_group(child)
                raise
        report.seconds = time.monotonic() - started
        report.output = "" if stream_output else log_path.read_text(errors="replace")
    if report.problem is None and report.pytest_exit not in (0, 1):
        report.problem = _pytest_exit_problem(report.pytest_exit, report.output)
    return report


def _pytest_exit_problem(code: int | None, output: str) -> str:
    meaning = {2: "the run was interrupted", 3: "pytest hit an internal error", 4: "pytest refused its arguments",
               5: "no checks were collected"}.get(code or -1, f"pytest exited with status {code}")
    last = [line for line in output.strip().splitlines() if line.strip()][-3:]
    return meaning + (": " + " | ".join(last) if last else "")


def _stop_group(child: subprocess.Popen[Any]) -> None:
    """Stop the child's process group: SIGINT first (pytest then runs the checks' cleanup: sessions are deleted),
    then SIGTERM, then SIGKILL, each after a grace period."""
    for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


class _ResultReader:
    """Reads the JSON lines the child appends; a line counts only once it is complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[CheckResult]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for raw in chunk[:end].splitlines():
            record = json.loads(raw)
            if record.get("event") == "result":
                out.append(CheckResult(**{k: record[k] for k in CheckResult.__dataclass_fields__}))
        return out


# --- the pytest plugin: runs inside the child ---------------------------------------------------------------------

def pytest_addoption(parser: Any) -> None:
    parser.addoption(RESULTS_OPTION, default=None, metavar="FILE",
                     help="copilot-fleet verify: append one JSON line per finished check to FILE")


def pytest_configure(config: Any) -> None:
    path = config.getoption(RESULTS_OPTION)
    if path:
        config.pluginmanager.register(ResultWriter(Path(path)), "copilot-fleet-verify-results")


def check_label(item: Any) -> str:
    """The first line of the test's docstring (what it proves), plus the parameter id if any."""
    doc = (getattr(item, "obj", None).__doc__ or "").strip() if getattr(item, "obj", None) else ""
    label = doc.splitlines()[0].rstrip(".") if doc else item.name
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.id:
        label = f"{label} [{callspec.id}]"
    return label


class ResultWriter:
    """Collects each test's setup/call/teardown reports into one CheckResult, written when the test ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: dict[str, str] = {}
        self.partial: dict[str, dict[str, Any]] = {}

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        self.labels = {item.nodeid: check_label(item) for item in items}

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            text = str(report.longrepr)
            self._write({"event": "result", "nodeid": report.nodeid or "(collection)",
                         "label": f"collect {report.nodeid or 'smoke_tests'}", "outcome": "failed",
                         "seconds": 0.0, "message": _short(text), "detail": text})

    def pytest_runtest_logreport(self, report: Any) -> None:
        state = self.partial.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0, "message": "",
                                                         "detail": ""})
        state["seconds"] += report.duration
        if report.skipped and state["outcome"] == "passed":
            state["outcome"] = "skipped"
            state["message"] = _skip_reason(report.longrepr)
        elif report.failed:
            text = report.longreprtext
            where = {"setup": "error in setup: ", "teardown": "error in cleanup: "}.get(report.when, "")
            if state["outcome"] != "failed":  # the first failure explains best; later ones go to detail
                state["message"] = where + _crash_message(report)
            state["outcome"] = "failed"
            state["detail"] = (state["detail"] + "\n" + text).strip()
        if report.when == "teardown":
            self._write({"event": "result", "nodeid": report.nodeid,
                         "label": self.labels.get(report.nodeid, report.nodeid), **self.partial.pop(report.nodeid)})


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _crash_message(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    lines = text.strip().splitlines()
    # `AssertionError: <our message>` says it all; pytest's `assert ...` explanation below it goes to detail.
    if lines:
        lines[0] = re.sub(r"^(?:[a-z_]\w*\.)+(\w+: )", r"\1", lines[0])  # copilot_fleet.client.errors.X: -> X:
    if lines and not re.match(r"^(AssertionError: )?assert\b", lines[0]) and len(lines[0]) > 20:
        return _short(lines[0])
    return _short("\n".join(lines))


def _short(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()][:4]
    short = "\n".join(lines)
    return short if len(short) <= _MESSAGE_LIMIT else short[: _MESSAGE_LIMIT - 3] + "..."
