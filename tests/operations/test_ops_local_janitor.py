"""The local fleet runs the Kubernetes CronJob's janitor under supervisord (`--every`), and its CLI servers write
OpenTelemetry to a file: checked on the plan and rendered config (fast), and the loop mode on a real process."""

from __future__ import annotations

import configparser
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from copilot_fleet.local.config_files import supervisord_conf, tasks_conf
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.plan import build_plan, secret_names
from copilot_fleet.local.secrets import FleetSecrets, generate
from copilot_fleet.local.tools import Tools
from copilot_fleet.spec import RawConfig, load_spec
from copilot_fleet.topology import build_topology

ROOT = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path, **values: Any) -> tuple[Any, FleetSecrets, Tools]:
    spec = load_spec(RawConfig(values={"platform": "local", **values}, secret_keys=frozenset(), stack="t"))
    topology = build_topology(spec)
    secrets = FleetSecrets(values={n: generate() for n in secret_names(topology)})
    tools = Tools(copilot=Path("/opt/copilot"), copilot_version="x", cache_home=Path("/cache"),
                  redis_server=Path("/usr/bin/redis-server"), haproxy=Path("/usr/sbin/haproxy"),
                  python=Path("/venv/bin/python"))
    return build_plan(topology, StatePaths(tmp_path, "t"), tools, secrets), secrets, tools


def _programs(conf: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    parser.read_string(conf)
    return {s.removeprefix("program:"): dict(parser[s]) for s in parser.sections() if s.startswith("program:")}


def test_shared_fleet_runs_the_janitor_with_required_leases(tmp_path: Path) -> None:
    plan, secrets, tools = _plan(tmp_path, isolation="shared-cli", replicas=2, sessionTtl="2d")
    programs = _programs(tasks_conf(plan))
    assert f"files={plan.paths.tasks_conf}" in supervisord_conf(plan, tools)
    janitor = shlex.split(programs["janitor"]["command"])
    assert janitor[:3] == ["/venv/bin/python", "-m", "copilot_fleet.pod.janitor"]
    assert janitor[janitor.index("--session-state") + 1] == str(plan.paths.shared_session_state)
    assert janitor[janitor.index("--ttl") + 1] == "172800s"
    assert janitor[janitor.index("--every") + 1] == "900"
    assert "--require-leases" in janitor
    assert janitor[janitor.index("--redis-url-file") + 1] == str(plan.redis_url_file)
    # The password is in the 0600 file, never on a command line.
    assert secrets.get("redis-password") not in programs["janitor"]["command"]


def test_per_user_fleet_runs_one_janitor_per_server_without_leases(tmp_path: Path) -> None:
    plan, _, tools = _plan(tmp_path, isolation="per-user", users=[{"id": "alice"}, {"id": "bob"}])
    programs = _programs(tasks_conf(plan))
    assert f"files={plan.paths.tasks_conf}" in supervisord_conf(plan, tools)
    janitors = {n: shlex.split(p["command"]) for n, p in programs.items() if n.startswith("janitor")}
    assert len(janitors) == 2
    for cmd in janitors.values():
        assert "--require-leases" not in cmd and "--redis-url-file" not in cmd
    dirs = {cmd[cmd.index("--session-state") + 1] for cmd in janitors.values()}
    assert dirs == {str(p.service.session_state) for p in plan.cli_programs}


def test_cli_servers_export_opentelemetry_to_a_file_without_content(tmp_path: Path) -> None:
    plan, _, _ = _plan(tmp_path, isolation="shared-cli", replicas=2)
    for program in plan.cli_programs:
        env = program.env
        assert env["COPILOT_OTEL_EXPORTER_TYPE"] == "file"
        assert env["COPILOT_OTEL_FILE_EXPORTER_PATH"] == str(plan.paths.otel_dir / f"{program.name}.jsonl")
        assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] == "false"
        assert f"copilot_fleet.server={program.name}" in env["OTEL_RESOURCE_ATTRIBUTES"]


def test_janitor_every_runs_repeatedly_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "session-state"
    state.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "copilot_fleet.pod.janitor", "--session-state", str(state),
                             "--ttl", "1h", "--every", "10", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first JSON report starts with "{"
        assert first.startswith("{"), first
        time.sleep(0.5)
        assert proc.poll() is None, "the loop ended after one run"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 5, "SIGTERM did not cut the wait short"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_janitor_every_is_bounded(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "copilot_fleet.pod.janitor", "--session-state", str(tmp_path),
                           "--ttl", "1h", "--every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "10 to 86400" in proc.stderr
