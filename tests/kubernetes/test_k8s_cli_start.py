"""The CLI container's command (copilot_fleet.pod.start): the rendered command parses with the program's own
parser, prunes the per-start logs of earlier starts and becomes the CLI (same PID, same arguments)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from copilot_fleet import cli_logs
from copilot_fleet.components.kubernetes.pod import CLI_BINARY, CLI_PID, LOGS
from copilot_fleet.pod.drain import main as drain_main
from copilot_fleet.pod.health import build_parser as health_parser
from copilot_fleet.pod.start import build_parser


def _cli_container(fleet):
    (sts,) = [o for o in fleet.objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "copilot-cli"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def test_the_cli_starts_through_the_log_pruning_start(make_fleet):
    container = _cli_container(make_fleet("shared-cli"))
    command = container["command"]
    assert command[:3] == ["python3", "-m", "copilot_fleet.pod.start"], command
    args = build_parser().parse_args(command[3:] + container["args"])
    assert args.logs == Path(LOGS) and args.keep == cli_logs.KEEP
    assert args.command[:2] == ["--", CLI_BINARY] and "--headless" in args.command


def test_probes_and_prestop_name_the_cli_by_its_pid(make_fleet):
    """The CLI is the container's PID 1 and non-dumpable: its socket cannot be traced to it by its own user."""
    container = _cli_container(make_fleet("shared-cli", recycle={"maxRssMb": 1536}))
    for probe in ("readinessProbe", "livenessProbe"):
        args = health_parser().parse_args(container[probe]["exec"]["command"][3:])
        assert args.pid == CLI_PID, probe
    hook = container["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert f"--pid {CLI_PID}" in hook and "--port" not in hook, hook


def test_drain_of_a_pid_with_nothing_attached_is_immediate(tmp_path: Path):
    assert drain_main(["--session-state", str(tmp_path), "--pid", str(os.getpid()), "--timeout", "5"]) == 0


def test_start_prunes_earlier_logs_and_becomes_the_command(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(8):  # earlier starts, of processes long gone
        (logs / f"process-{1_700_000_000_000 + i}-{999_999_000 + i}.log").write_text("x")
    (logs / "keep-me.txt").write_text("not a per-start log")
    fake_cli = tmp_path / "copilot"
    fake_cli.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        "print(json.dumps({'pid': os.getpid(), 'argv': sys.argv[1:]}))\n")
    fake_cli.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "copilot_fleet.pod.start", "--logs", str(logs), "--",
                             str(fake_cli), "--headless", "--port", "4321"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    seen = json.loads(out)
    assert seen == {"pid": proc.pid, "argv": ["--headless", "--port", "4321"]}  # exec'd: the same process
    left = sorted(p.name for p in logs.iterdir())
    assert left == ["keep-me.txt", *[f"process-{1_700_000_000_000 + i}-{999_999_000 + i}.log"
                                     for i in range(4, 8)]], left
    assert "removed 4 per-start CLI log(s)" in err


def test_a_log_with_the_pruning_process_pid_is_an_earlier_start(tmp_path: Path):
    """In a container every start of the CLI is PID 1, and the start prunes as PID 1 before it becomes the CLI:
    the logs named with its own PID are earlier processes', not a running CLI's."""
    for i in range(3):
        (tmp_path / f"process-{1_700_000_000_000 + i}-{os.getpid()}.log").write_text("x")
    assert cli_logs.prune(tmp_path, keep=1) == []  # a live process' logs are kept...
    removed = cli_logs.prune(tmp_path, keep=1, starting_pid=os.getpid())  # ...unless it is the one about to start
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == [f"process-1700000000002-{os.getpid()}.log"]


def test_start_says_why_the_cli_cannot_start(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "copilot_fleet.pod.start", "--logs", str(tmp_path), "--",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 127 and "cannot start" in proc.stderr and "missing" in proc.stderr
