"""Bounds on a busy machine: the time scale (copilot_fleet/timescale.py), how verify applies it, and the shared-session
check's wait for its lease holder process, step by step. No fleet needed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet import timescale
from copilot_fleet.cli import main
from copilot_fleet.pod.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def _on_machine(monkeypatch: pytest.MonkeyPatch, load: float, cores: int) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))


@pytest.mark.parametrize(("load", "cores", "factor"), [(0.3, 2, 1.0), (2.0, 2, 1.0), (8.2, 2, 4.1), (24.0, 2, 12.0),
                                                       (24.0, 8, 3.0), (900.0, 2, timescale.MAX_AUTO_SCALE)])
def test_the_factor_follows_the_load_average_per_core(monkeypatch, load: float, cores: int, factor: float) -> None:
    _on_machine(monkeypatch, load, cores)
    assert timescale.measure({}) == (factor, f"load average {load:.1f} on {cores} cores")
    assert timescale.scaled(30, {}) == pytest.approx(30 * factor)


def test_the_variable_overrides_the_load_average(monkeypatch) -> None:
    _on_machine(monkeypatch, 24.0, 2)
    assert timescale.measure({timescale.ENV_VAR: "2.5"}) == (2.5, timescale.ENV_VAR)
    assert timescale.measure({timescale.ENV_VAR: " "}) == (12.0, "load average 24.0 on 2 cores")  # blank: unset


@pytest.mark.parametrize("raw", ["0.5", "0", "-3", "51", "fast", "nan", "inf", "1e400"])
def test_a_bad_variable_says_what_is_allowed(raw: str) -> None:
    with pytest.raises(timescale.TimeScaleError, match=r"from 1 to 50 .*or unset it") as caught:
        timescale.time_scale({timescale.ENV_VAR: raw})
    assert f"{timescale.ENV_VAR}={raw!r}" in str(caught.value)


def _target(tmp_path: Path) -> Path:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the selected check fails at once
    target = tmp_path / "t.json"
    target.write_text(json.dumps({"stack": "x", "platform": "local", "isolation": "shared-cli", "endpoint": None,
                                  "replicas": [dead], "connection_token": "t" * 20}))
    return target


def test_verify_says_when_and_why_its_bounds_are_longer(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(timescale.ENV_VAR, "3")
    report = tmp_path / "r.json"
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(_target(tmp_path)), "-k",
                 "connection_token_required", "--json", str(report)])
    out, _ = capsys.readouterr()
    assert code == 1 and json.loads(report.read_text())["counts"]["failed"] == 1  # it ran
    assert "  bounds   360 s for the run, 90 s for any single wait: x3 for a busy machine (COPILOT_FLEET_TIME_SCALE)" \
        in out.splitlines(), out


def test_verify_with_a_bad_factor_runs_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(timescale.ENV_VAR, "fast")
    report = tmp_path / "r.json"
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(_target(tmp_path)), "--json", str(report)])
    out, err = capsys.readouterr()
    assert code == 1 and "COPILOT_FLEET_TIME_SCALE='fast': expected a number from 1 to 50" in err
    assert out == "" and not report.exists()


# --- the lease holder process, waited for one step at a time ------------------------------------------------------

def _await_holder() -> Callable[[subprocess.Popen[str], float], str]:
    spec = importlib.util.spec_from_file_location("smoke_shared_session", ROOT / "smoke_tests/test_shared_session.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wait: Callable[[subprocess.Popen[str], float], str] = module._await_holder
    return wait


def _holder(script: str) -> subprocess.Popen[str]:
    """A stand-in lease holder: a Python snippet printing the steps the real one prints."""
    return subprocess.Popen([sys.executable, "-c", "import sys, time\n" + script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def _finish(proc: subprocess.Popen[Any]) -> None:
    proc.kill()
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def test_each_step_gets_the_whole_bound() -> None:
    """Three steps that together take longer than one bound, each well within it: a slow start is not a failure."""
    proc = _holder("for line in ('READY', 'JOINED a:1', 'HOLDING a:1 ok'):\n"
                   "    time.sleep(1.0); print(line, flush=True)\n"
                   "time.sleep(60)")
    try:
        began = time.monotonic()
        assert _await_holder()(proc, 2.5) == "HOLDING a:1 ok"
        assert time.monotonic() - began > 2.5  # longer than one bound in all
    finally:
        _finish(proc)


def test_a_step_that_does_not_come_is_named_with_what_was_printed() -> None:
    proc = _holder("print('READY', flush=True); print('some warning', flush=True); time.sleep(60)")
    try:
        with pytest.raises(AssertionError) as caught:
            _await_holder()(proc, 1.0)
        message = str(caught.value)
        assert "did not join the shared session" in message and "within 1 s" in message
        assert "['READY', 'some warning']" in message and "COPILOT_FLEET_TIME_SCALE" in message
    finally:
        _finish(proc)


@pytest.mark.parametrize(("script", "says"), [
    ("print('READY', flush=True); print('FAILED SessionInUse: held by bob', flush=True)",
     "could not join the shared session (connect to a CLI server, take the session's lease, create or resume it): "
     "FAILED SessionInUse: held by bob"),
    ("print('READY', flush=True); print('JOINED a:1', flush=True); sys.exit(3)",
     "exited (status 3) before it could get its turn answered"),
])
def test_a_failed_or_dead_holder_ends_the_wait_at_once(script: str, says: str) -> None:
    proc = _holder(script)
    try:
        began = time.monotonic()
        with pytest.raises(AssertionError, match=r"lease holder process") as caught:
            _await_holder()(proc, 600.0)
        assert says in str(caught.value)
        assert time.monotonic() - began < 300, "the wait ran to its bound instead of ending with the process"
    finally:
        _finish(proc)


# --- the burner that proves it (scripts/cpu-burner.sh) ----------------------------------------------------------

BURNER = ROOT / "scripts/cpu-burner.sh"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def test_the_burner_starts_bounded_busy_processes_and_stops_them_by_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "burn.pids"
    started = subprocess.run(["bash", str(BURNER), "start", "--procs", "2", "--seconds", "120", "--pidfile",
                              str(pidfile)], capture_output=True, text=True, timeout=60, check=False)
    pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
    try:
        assert started.returncode == 0 and "2 busy processes" in started.stderr, started.stderr
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        # Each is bounded on its own: `timeout --signal=KILL 120` holds even if nobody runs `stop`.
        assert all(Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[:3] == [b"timeout", b"--signal=KILL", b"120"]
                   for p in pids)
        again = subprocess.run(["bash", str(BURNER), "start", "--pidfile", str(pidfile)], capture_output=True,
                               text=True, timeout=60, check=False)
        assert again.returncode == 1 and "a burn is running" in again.stderr
    finally:
        stopped = subprocess.run(["bash", str(BURNER), "stop", "--pidfile", str(pidfile)], capture_output=True,
                                 text=True, timeout=60, check=False)
    assert stopped.returncode == 0 and "stopped 2 processes" in stopped.stderr, stopped.stderr
    deadline = time.monotonic() + timescale.scaled(30)
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a busy process outlived stop"
    assert not pidfile.exists()


def test_the_burner_runs_a_command_and_passes_its_status_on() -> None:
    proc = subprocess.run(["bash", str(BURNER), "run", "--procs", "1", "--seconds", "60", "--", "sh", "-c",
                           "exit 3"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "the command ended with status 3" in proc.stderr and "stopped 2 processes" in proc.stderr  # + the sampler


@pytest.mark.parametrize(("args", "says"), [(["start", "--procs", "0"], "--procs must be 1 to 9999"),
                                            (["start", "--seconds", "soon"], "--seconds must be 1 to 999999"),
                                            (["run", "--procs", "1"], "run needs a command after --"),
                                            (["burn"], "Usage")])
def test_the_burner_refuses_bad_arguments(args: list[str], says: str) -> None:
    proc = subprocess.run(["bash", str(BURNER), *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and says.lower() in proc.stderr.lower(), proc.stderr
