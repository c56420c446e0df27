"""`up` and `down` of a local fleet.

`up` checks everything before it starts anything (platform, programs and versions, ports), writes the state
directory, starts supervisord and waits until every service answers a real round trip; if that fails it stops
what it started. On a fleet that already runs it changes nothing, except starting programs that are not running.
`down` stops the fleet by PID and verifies that nothing of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from copilot_fleet import cli_logs, timescale
from copilot_fleet.local import accounts, confine, lbstats, probes, sealed_cli
from copilot_fleet.local import supervisor as sv
from copilot_fleet.local.config_files import haproxy_cfg, redis_conf, supervisord_conf, tasks_conf
from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.operate import drained_servers, haproxy_command, restore_rotation
from copilot_fleet.local.paths import StatePaths, make_private_dir, make_socket_dir, stack_lock, write_private
from copilot_fleet.local.plan import (
    INSPECTOR_GUARD,
    FleetPlan,
    Service,
    StackCredentials,
    build_plan,
    fleet_accounts,
    secret_names,
)
from copilot_fleet.local.secrets import FleetSecrets, load_existing, load_or_generate, resolve_stack_secret, write_new
from copilot_fleet.local.stack import load_local_spec, stack_platform
from copilot_fleet.local.tools import Tools, locate_tools
from copilot_fleet.pod import procfs
from copilot_fleet.pod.inspector_guard import INSPECTOR_PORT
from copilot_fleet.pod.ports import loopback_listener_uids, port_holder, port_is_free
from copilot_fleet.spec import FleetSpec
from copilot_fleet.stackfile import stack_file
from copilot_fleet.topology import Topology, build_topology

DEFAULT_TIMEOUT = 60.0  # on an idle machine; scaled to the machine's load (copilot_fleet/timescale.py)
_PROBE_TIMEOUT = 1.0
_POLL = 0.1


@dataclass
class UpResult:
    plan: FleetPlan
    started: list[str] = field(default_factory=list)  # programs this call started; empty: nothing changed
    ready_seconds: dict[str, float] = field(default_factory=dict)  # program -> seconds from start until ready
    elapsed: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # checks, supervisord, servers: seconds each


@dataclass
class DownResult:
    was_running: bool
    stopped_pids: list[int]
    purged: bool


# --- up ---------------------------------------------------------------------------------------------------------

def up(project_dir: Path, stack: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None,
       out: TextIO | None = None) -> UpResult:
    """Start the stack's fleet, or what of it is not running, and wait until every server answers: within `timeout`
    seconds (default DEFAULT_TIMEOUT times the machine's time scale: CLI servers start slower on a busy machine)."""
    out = out or sys.stdout
    if timeout is None:
        timeout = timescale.scaled(DEFAULT_TIMEOUT, env)
    env = dict(os.environ if env is None else env)
    spec = load_local_spec(project_dir, stack)
    topology = build_topology(spec)
    paths = StatePaths(project_dir, stack)
    began = time.monotonic()

    def waiting() -> None:
        _say(out, f"waiting for another copilot-fleet command on stack {stack} to finish ...")

    with stack_lock(paths, on_wait=waiting):
        record = sv.read_record(paths)
        if record is not None and record.alive():
            result = _ensure_running(project_dir, topology, paths, env, timeout, out)
        else:
            if record is not None:
                _clear_stale(paths, record, out)
            result = _start(project_dir, topology, paths, env, timeout, out)
    result.elapsed = time.monotonic() - began
    _print_endpoints(result, out)
    return result


def _tools_for(project_dir: Path, topology: Topology, env: Mapping[str, str]) -> Tools:
    tools = locate_tools(project_dir, env, redis=topology.lease_store is not None, haproxy=topology.load_balanced)
    if accounts.privileged():  # the servers run as other users: the CLI's execute-only copy and a cache they read
        sealed = sealed_cli.seal(tools.copilot, tools.copilot_version)
        tools = replace(tools, copilot=sealed.copilot, cache_home=sealed.cache_home)
    return tools


def _plan(topology: Topology, paths: StatePaths, tools: Tools, secrets: FleetSecrets,
          creds: StackCredentials) -> FleetPlan:
    """The fleet's plan; started as root, each program gets a Unix user of its own (accounts.py)."""
    users = fleet_accounts(topology, paths) if accounts.privileged() else None
    return build_plan(topology, paths, tools, secrets, creds, users)


def _stack_credentials(project_dir: Path, spec: FleetSpec) -> StackCredentials:
    """Credentials from stack config, decrypted (only needed for a real provider or GitHub tokens)."""
    stack = spec.stack
    api_key = None
    if spec.provider is not None and spec.provider.api_key is not None:
        api_key = resolve_stack_secret(project_dir, stack, "provider.apiKey", spec.provider.api_key)
    github = resolve_stack_secret(project_dir, stack, "githubToken", spec.github_token) if spec.github_token else None
    users = {u.id: resolve_stack_secret(project_dir, stack, f"users[{i}].githubToken", u.github_token)
             for i, u in enumerate(spec.users) if u.github_token is not None}
    return StackCredentials(provider_api_key=api_key, github_token=github, user_github_tokens=users)


def _render(plan: FleetPlan, tools: Tools, secrets: FleetSecrets) -> dict[Path, str]:
    paths = plan.paths
    configs = {paths.supervisord_conf: supervisord_conf(plan, tools)}
    if plan.tasks:
        configs[paths.tasks_conf] = tasks_conf(plan)
    if any(p.service.kind == "redis" for p in plan.programs):
        configs[paths.redis_conf] = redis_conf(plan, secrets)
    if plan.balance is not None:
        configs[paths.haproxy_cfg] = haproxy_cfg(plan, secrets)
    return configs


def _check_ports(plan: FleetPlan) -> None:
    """Every port must be free before anything starts; name the port, the key that sets it and its holder."""
    problems = []
    for svc in plan.services:
        if not port_is_free(svc.port):
            holder = port_holder(svc.port)
            held = f", held by {holder}" if holder else ""
            problems.append(f"port {svc.port} for {svc.name} (set by {svc.port_key}) is already in use{held}")
    if any(task.name == INSPECTOR_GUARD for task in plan.tasks) and loopback_listener_uids(INSPECTOR_PORT) - {0}:
        holder = port_holder(INSPECTOR_PORT)
        problems.append(f"port {INSPECTOR_PORT} on 127.0.0.1 (Node's inspector port, which the fleet's inspector guard "
                        f"must hold) is already in use{f', held by {holder}' if holder else ''} by a user other than "
                        "root: the guard could not hold it, and SIGUSR1 could then open a CLI's debugger")
    if problems:
        raise LocalFleetError(
            f"cannot start stack {plan.stack}; nothing was started:\n" + "\n".join(f"  - {p}" for p in problems)
            + f"\n  stop what holds the port, or choose other ports under fleet:local in "
              f"stacks/Pulumi.{plan.stack}.yaml")


def _write_state(plan: FleetPlan, configs: dict[Path, str], secrets: FleetSecrets) -> None:
    paths = plan.paths
    for d in (paths.root, paths.secrets_dir, paths.config_dir, paths.logs_dir, paths.servers_dir, paths.work_dir,
              paths.otel_dir):
        make_private_dir(d)
    make_socket_dir(paths.run_dir)
    write_new(paths, secrets)
    if plan.target.redis_url is not None:  # for the janitor's --redis-url-file
        write_private(plan.redis_url_file, plan.target.redis_url.get_secret_value() + "\n")
    for path, text in configs.items():
        write_private(path, text)
    for program in plan.programs:
        svc = program.service
        make_private_dir(program.directory)
        if svc.kind == "redis":
            make_private_dir(paths.redis_dir)
        if svc.kind != "cli" or svc.home is None:
            continue
        home = make_private_dir(Path(svc.home))
        if svc.session_state is None:
            continue  # store mode: the provider keeps session-state/ off the server's disk
        if svc.shared_session_state:
            # Only session-state/ is shared; config, logs and the SQLite session store stay per server.
            shared = make_private_dir(Path(svc.session_state))
            link = home / "session-state"
            if not link.is_symlink():
                if link.exists():
                    raise LocalFleetError(f"{link} is a directory, not the link to {shared}; run down --purge")
                link.symlink_to(os.path.relpath(shared, home))
        else:
            make_private_dir(Path(svc.session_state))
    if plan.accounts is not None:
        confine.apply(plan, accounts.ensure(plan.accounts))
    write_private(paths.manifest, json.dumps(plan.manifest(), indent=2) + "\n")
    _prune_cli_logs(plan)


def _prune_cli_logs(plan: FleetPlan) -> None:
    """Each start of a CLI leaves a log in its home; keep the newest few (the janitor does it between `up`s)."""
    for program in plan.cli_programs:
        if program.service.home is not None:
            cli_logs.prune(Path(program.service.home) / "logs")


def _start(project_dir: Path, topology: Topology, paths: StatePaths, env: Mapping[str, str], timeout: float,
           out: TextIO) -> UpResult:
    spec = topology.spec
    t0 = time.monotonic()
    # 1. Check everything; nothing is written or started before these pass.
    tools = _tools_for(project_dir, topology, env)
    creds = _stack_credentials(project_dir, spec)
    secrets = load_or_generate(paths, secret_names(topology))
    plan = _plan(topology, paths, tools, secrets, creds)
    _stop_strays(plan, out)
    _check_ports(plan)
    configs = _render(plan, tools, secrets)
    # 2. State, then supervisord, which starts every program.
    _write_state(plan, configs, secrets)
    _say(out, f"starting stack {spec.stack} ({_shape(plan)}) in {paths.display(paths.root)}")
    t1 = time.monotonic()
    proc = sv.start(paths, tools, env)
    record = sv.read_record(paths)
    try:
        supervisor = sv.Supervisor(paths)
        supervisor.wait_running(proc, timeout=min(timeout, 15.0))
        t2 = time.monotonic()
        ready = _wait_ready(plan, supervisor, secrets.values, t2 + timeout, out, proc)
        _wait_inspector_guarded(plan, t2 + timeout)
    except BaseException as exc:
        survivors = sv.stop(record) if record is not None else []
        paths.supervisor_record.unlink(missing_ok=True)
        _reap(proc)
        if survivors:
            left = ", ".join(procfs.describe(p) for p in survivors)
            raise LocalFleetError(f"{exc}\nstopping the fleet left processes behind: {left}") from exc
        if isinstance(exc, LocalFleetError):
            raise LocalFleetError(f"{exc}\nstopped everything this command started (state kept in "
                                  f"{paths.display(paths.root)}; `copilot-fleet down --stack {spec.stack} --purge` "
                                  "removes it)") from exc
        raise
    write_private(paths.target_file, json.dumps(plan.target.to_json_dict(), indent=2) + "\n")
    shutil.rmtree(paths.root / "drain", ignore_errors=True)  # a fresh HAProxy has every replica in rotation
    _forget_start_checks(plan)
    phases = {"checks": t1 - t0, "supervisord": t2 - t1, "servers": time.monotonic() - t2}
    return UpResult(plan=plan, started=[p.name for p in plan.programs], ready_seconds=ready, phases=phases)


def _wait_inspector_guarded(plan: FleetPlan, deadline: float) -> None:
    """Started as root: the guard must hold Node's inspector port (a root listener on 127.0.0.1:9229) before `up`
    says the fleet is ready; otherwise a tool run could open its server's debugger with SIGUSR1
    (pod/inspector_guard.py). supervisord starts the guard first; no session, so no tool run, exists before `up`
    has seen every server answer."""
    if not any(task.name == INSPECTOR_GUARD for task in plan.tasks):
        return
    while 0 not in loopback_listener_uids(INSPECTOR_PORT):
        if time.monotonic() > deadline:
            holder = port_holder(INSPECTOR_PORT)
            raise LocalFleetError(
                f"the inspector guard does not hold 127.0.0.1:{INSPECTOR_PORT}, the port where a CLI sent SIGUSR1 "
                "opens its debugger (a session's tool run could then read the server's secrets)"
                + (f"; {holder} holds it" if holder else "")
                + f"; see {plan.paths.display(plan.paths.log_file(INSPECTOR_GUARD))}")
        time.sleep(0.05)


def _stop_strays(plan: FleetPlan, out: TextIO) -> None:
    """Before a fresh start, nothing may run as the fleet's users: what does was left by a session's tool run that
    outlived its fleet (a supervisord that was killed, a `down` of an earlier version) and could hold a port the
    new fleet's probes would send a token to."""
    if plan.accounts is None:
        return
    stopped = accounts.stop_processes(sorted(plan.accounts.all()), plan.accounts.fleet_id)
    if stopped:
        _say(out, f"stopped {len(stopped)} process(es) left running as the fleet's users: {', '.join(stopped)}")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)


def _ensure_running(project_dir: Path, topology: Topology, paths: StatePaths, env: Mapping[str, str],
                    timeout: float, out: TextIO) -> UpResult:
    """The fleet's supervisord runs: change nothing if its configuration is current and every program answers;
    start programs that are not running."""
    spec = topology.spec
    tools = _tools_for(project_dir, topology, env)
    secrets = load_existing(paths, secret_names(topology))
    plan = _plan(topology, paths, tools, secrets, _stack_credentials(project_dir, spec))
    changed = [paths.display(path) for path, text in _render(plan, tools, secrets).items()
               if not path.is_file() or path.read_text() != text]
    if changed:
        raise LocalFleetError(f"fleet {spec.stack} is running, but its configuration no longer matches the stack "
                              f"file and the programs found now ({', '.join(changed)} would change); nothing was "
                              f"changed. Apply it with `copilot-fleet down --stack {spec.stack}` then "
                              f"`copilot-fleet up --stack {spec.stack}`")
    _prune_cli_logs(plan)
    supervisor = sv.Supervisor(paths)
    infos = supervisor.processes()
    names = [p.name for p in plan.programs] + [t.name for t in plan.tasks if t.name == INSPECTOR_GUARD]
    to_start = [name for name in names
                if infos.get(name, {}).get("statename") not in ("RUNNING", "STARTING", "BACKOFF")]
    for name in to_start:
        _say(out, f"  start  {name} (was {infos.get(name, {}).get('statename', 'unknown')})")
        try:
            supervisor.start_process(name)
        except xmlrpc.client.Fault as fault:
            raise LocalFleetError(f"supervisord could not start {name}: {fault.faultString}") from fault
    try:
        ready = _wait_ready(plan, supervisor, secrets.values, time.monotonic() + timeout, out, None,
                            announce=bool(to_start))
    except LocalFleetError:
        for name in to_start:  # stop what this call started; leave the rest of the running fleet alone
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                supervisor.stop_process(name)
        raise
    if not paths.target_file.is_file():
        write_private(paths.target_file, json.dumps(plan.target.to_json_dict(), indent=2) + "\n")
    for name in sorted(drained_servers(paths) & set(to_start)):  # a drained server started again: back in rotation
        restore_rotation(paths, plan.services, name)
        _say(out, f"  undrained {name}")
    _wait_inspector_guarded(plan, time.monotonic() + timeout)  # supervisord restarts a guard that died
    if not to_start:
        _say(out, f"fleet {spec.stack} is already running and healthy; nothing changed")
    return UpResult(plan=plan, started=to_start, ready_seconds=ready)


def _wait_ready(plan: FleetPlan, supervisor: sv.Supervisor, secrets: dict[str, str], deadline: float, out: TextIO,
                proc: subprocess.Popen[bytes] | None, announce: bool = True) -> dict[str, float]:
    """Probe every service until it answers and supervisord counts it RUNNING, printing each as it becomes ready.
    A program supervisord gave up on (FATAL), a dead supervisord or the deadline ends the wait with the log tail of
    what is not ready."""
    began = time.monotonic()
    pending: dict[str, Service] = {s.name: s for s in plan.services}
    last: dict[str, str] = {}
    ready: dict[str, float] = {}
    while pending:
        if proc is not None and proc.poll() is not None:
            raise LocalFleetError(f"supervisord exited (status {proc.returncode}) before the fleet was ready:\n"
                                  + sv.tail(plan.paths.logs_dir / "supervisord.log"))
        infos = supervisor.processes()
        for name in pending:
            info = infos.get(name, {})
            if info.get("statename") == "FATAL":
                why = info.get("spawnerr") or f"it kept exiting (last exit status {info.get('exitstatus')})"
                raise _not_ready(plan, [name], {name: f"supervisord gave up on it: {why}"}, infos)
        results = probes.probe_all(list(pending.values()), secrets, timeout=_PROBE_TIMEOUT)
        # HAProxy's view counts only once every CLI answers: until then its last check may predate a restart.
        clis_pending = any(s.kind == "cli" for s in pending.values())
        for name, result in results.items():
            svc = pending[name]
            if result.ok and svc.kind == "haproxy":
                result = (probes.ProbeResult(False, result.latency_ms, "waiting for the CLI servers first")
                          if clis_pending else _all_backends_up(plan, result))
            state = infos.get(name, {}).get("statename")
            if result.ok and state != "RUNNING":
                # A warm CLI answers within supervisord's startsecs; until supervisord counts it RUNNING, `status`
                # calls it unhealthy and a crash would still count against its start retries.
                result = probes.ProbeResult(False, result.latency_ms, f"answers, but supervisord says {state}")
            if result.ok:
                ready[name] = time.monotonic() - began
                del pending[name]
                if announce:
                    _say(out, f"  ready  {name:<24} {svc.address:<16} {ready[name]:5.1f} s  {result.detail}")
            else:
                last[name] = result.detail
        if pending and time.monotonic() >= deadline:
            raise _not_ready(plan, sorted(pending), last, infos,
                             f"did not become ready within {deadline - began:.0f} s (`up --timeout`; by default "
                             f"{DEFAULT_TIMEOUT:g} s times the load average per core)")
        if pending:
            time.sleep(_POLL)
    return ready


def _forget_start_checks(plan: FleetPlan) -> None:
    """Zero HAProxy's counters once every replica is UP: its first checks ran while the CLI servers were still
    starting and were refused, and `status` would show them as failed checks (CHK FAIL) of a healthy fleet forever.
    From here on the count means what an operator reads it as: checks that failed while the fleet was up."""
    if any(p.name == "haproxy" for p in plan.programs):
        with contextlib.suppress(OSError):  # the counters are cosmetic: never fail a started fleet over them
            haproxy_command(plan.paths.haproxy_socket, "clear counters all")


def _all_backends_up(plan: FleetPlan, result: probes.ProbeResult) -> probes.ProbeResult:
    """HAProxy is ready once it routes to every replica, not just to one, and no replica is on its way down: `UP
    1/2` is a failed check HAProxy has counted against a server `up` restarts (it failed while the server was
    stopped), and a second one would take the server out after `up` returned. Plain `UP` comes with the first
    check that passes."""
    states = lbstats.backend_states(plan.paths.haproxy_socket)
    down = [name for name in (p.name for p in plan.cli_programs) if states.get(name, "") != "UP"]
    if down:
        return probes.ProbeResult(False, result.latency_ms, f"HAProxy does not route to {', '.join(down)} yet")
    return probes.ProbeResult(True, result.latency_ms, f"{result.detail}, {len(states)} replicas UP")


def _not_ready(plan: FleetPlan, names: list[str], reasons: dict[str, str], infos: dict[str, dict[str, object]],
               what: str = "did not start") -> LocalFleetError:
    parts = []
    for name in names:
        svc = next(s for s in plan.services if s.name == name)
        state = infos.get(name, {}).get("statename", "unknown")
        parts.append(f"{name} ({svc.address}) {what}: {reasons.get(name, 'no answer yet')} "
                     f"[supervisord: {state}]\n  last lines of {plan.paths.display(Path(svc.log))}:\n"
                     + sv.tail(Path(svc.log)))
    return LocalFleetError("\n".join(parts))


def _clear_stale(paths: StatePaths, record: sv.SupervisorRecord, out: TextIO) -> None:
    """supervisord of an earlier run is gone (killed, machine restarted): stop whatever it left behind, so that
    the fleet starts again under a new supervisord. (A running program cannot be handed to another supervisord.)"""
    members = sv.orphans(record)
    survivors = sv.stop(record)
    if survivors:
        raise LocalFleetError("processes of an earlier run of this fleet could not be stopped: "
                              + ", ".join(procfs.describe(p) for p in survivors))
    if members:
        _say(out, f"restoring supervision: supervisord (pid {record.pid}) had died and left {len(members)} "
                  "process(es) running unsupervised; stopped them, starting the fleet under a new supervisord")
    paths.supervisor_record.unlink(missing_ok=True)


# --- output -----------------------------------------------------------------------------------------------------

def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def _shape(plan: FleetPlan) -> str:
    clis = plan.cli_programs
    if plan.isolation == "per-user":
        return f"per-user, {len(clis)} user server(s)"
    return f"{plan.isolation}, {len(clis)} replica(s)"


def _print_endpoints(result: UpResult, out: TextIO) -> None:
    plan = result.plan
    target = plan.target
    paths = plan.paths
    took = f"{result.elapsed:.1f} s"
    if result.phases:
        took += ": " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.phases.items())
    lines = [f"fleet {plan.stack} is up ({took}):"]
    if target.endpoint:
        how = "sticky by client address" if plan.balance == "source" else "round robin"
        lines.append(f"  endpoint  {target.endpoint}  (HAProxy, {how}, over {len(target.replicas)} replicas)")
    if target.replicas:
        lines.append(f"  replicas  {', '.join(target.replicas)}")
    for user, address in target.users.items():
        lines.append(f"  user      {user:<12} {address}")
    if target.redis_url is not None:
        redis = next(s for s in plan.services if s.kind == "redis")
        lines.append(f"  redis     redis://{redis.address}/0  (password in "
                     f"{paths.display(paths.secret_file('redis-password'))})")
    if target.provider is not None:
        kind = "test model" if plan.uses_test_model else f"{target.provider.type} provider"
        lines.append(f"  model     {target.provider.base_url}  ({kind}, model {target.model})")
    lines.append(f"  target    {paths.display(paths.target_file)}  (copilot-fleet target --stack {plan.stack})")
    lines.append(f"  logs      {paths.display(paths.logs_dir)}/")
    lines.append(isolation_line(plan))
    _say(out, "\n".join(lines))


def isolation_line(plan: FleetPlan) -> str:
    """What keeps the fleet's programs (and every session's tool runs) apart, said plainly (docs/security.md)."""
    if plan.accounts is not None:
        line = (f"  users     each server runs as an unprivileged Unix user of its own "
                f"({', '.join(sorted(plan.accounts.all()))}); secrets and configs are root's")
        cli = plan.cli_programs[0].executable
        if not sealed_cli.is_execute_only(cli):
            line += (f"; but {cli} is a script, not the CLI binary, so it cannot be made execute-only: a session's "
                     "tool run can read its server's connection token from /proc/<pid>/environ")
        return line
    me = pwd.getpwuid(os.geteuid()).pw_name
    return (f"  users     NOT ISOLATED: `up` did not run as root, so every program and every session's tool runs "
            f"run as {me} and can read the fleet's secrets and every session (run `up` as root to give each "
            "server a user of its own; docs/security.md)")


# --- down -------------------------------------------------------------------------------------------------------

def _check_purgeable(paths: StatePaths) -> None:
    """`down --purge` removes one stack's own directory and nothing else: a real directory directly inside
    .fleet/ (a link there was not made by copilot-fleet: refuse rather than guess)."""
    root = paths.root
    if root.is_symlink() or not root.is_dir() or root.resolve().parent != paths.fleet_dir.resolve():
        raise LocalFleetError(f"refusing to purge {root}: it is not a directory of its own inside "
                              f"{paths.fleet_dir} (a link or something else is in its place); nothing was removed")


def _fleet_users(paths: StatePaths) -> tuple[list[str], str | None]:
    """The Unix users a root-run fleet made, as its manifest records them (none for a fleet run without root)."""
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return [], None
    return list(manifest.get("unix_users") or []), manifest.get("fleet_id")


def _leftovers(paths: StatePaths, stack: str, purge: bool, out: TextIO) -> bool:
    """A root-run fleet whose state directory was deleted by hand leaves its Unix users and its data directory
    under /var/lib/copilot-fleet (found again by the fleet id, a hash of the state directory's path): name them,
    and remove them with --purge. True when something was removed."""
    if not accounts.privileged():
        return False
    users = accounts.of_stack(paths.fleet_id, stack)
    data_root = paths.data_root
    data = data_root.is_dir() and not data_root.is_symlink()
    if not users and not data:
        return False
    what = ", ".join(([f"Unix users {', '.join(users)}"] if users else []) + ([str(data_root)] if data else []))
    if not purge:
        _say(out, f"left from an earlier fleet {stack} whose {paths.display(paths.root)} was removed: {what}; "
                  f"`copilot-fleet down --stack {stack} --purge` removes them")
        return False
    accounts.stop_processes(users, paths.fleet_id)  # a tool run's leftovers: userdel refuses a user that runs
    if data:
        shutil.rmtree(data_root)  # fd-based on Linux: a link a server made inside is removed, not followed
    removed = accounts.remove(users, paths.fleet_id)
    _say(out, f"removed what an earlier fleet {stack} left: {what}" + ("" if len(removed) == len(users) else
              f" (users not removed: {', '.join(sorted(set(users) - set(removed)))})"))
    return True


def down(project_dir: Path, stack: str, *, purge: bool = False, out: TextIO | None = None) -> DownResult:
    out = out or sys.stdout
    platform = stack_platform(project_dir, stack)
    if platform is not None and platform != "local":
        raise LocalFleetError(f"stack {stack!r} is a {platform} stack; copilot-fleet down stops platform: local "
                              f"stacks only. Remove its resources with `pulumi destroy --stack {stack}`")
    paths = StatePaths(project_dir, stack)
    if not paths.root.exists():
        stack_file(project_dir, stack)  # `down --stack typo` is an error naming the stacks there are, not a no-op
        _say(out, f"fleet {stack} is not running here (no {paths.display(paths.root)}); nothing to stop")
        return DownResult(was_running=False, stopped_pids=[], purged=_leftovers(paths, stack, purge, out))
    with stack_lock(paths, on_wait=lambda: _say(out, f"waiting for another copilot-fleet command on stack {stack} "
                                                   "to finish ...")):
        record = sv.read_record(paths)
        was_running = record is not None and record.alive()
        stopped: list[int] = []
        orphaned = False
        if record is not None:
            stopped = procfs.session_members(record.pid) if was_running else sv.orphans(record)
            orphaned = not was_running and bool(stopped)
            survivors = sv.stop(record)
            if survivors:
                raise LocalFleetError("could not stop " + ", ".join(procfs.describe(p) for p in survivors))
            paths.supervisor_record.unlink(missing_ok=True)
        unix_users, fleet_id = _fleet_users(paths)
        # What a session's tool run left outside supervisord's session (it can leave it) runs as a fleet user.
        strays = accounts.stop_processes(unix_users, fleet_id) if unix_users and fleet_id else []
        removed_users: list[str] = []
        if purge:
            run_dir = paths.run_dir
            _check_purgeable(paths)
            data_root = paths.data_root
            shutil.rmtree(paths.root)  # links to the data directory go, never what they point to
            if run_dir.exists() and not run_dir.is_relative_to(paths.root):
                shutil.rmtree(run_dir)
            if data_root != paths.root and data_root.is_dir() and not data_root.is_symlink():
                shutil.rmtree(data_root)  # fd-based on Linux: a link a server made inside is removed, not followed
            if unix_users and fleet_id:
                removed_users = accounts.remove(unix_users, fleet_id)
    if was_running:
        _say(out, f"fleet {stack} stopped ({len(stopped)} processes, none left)")
    elif orphaned:
        _say(out, f"fleet {stack}: supervisord had died; stopped {len(stopped)} process(es) it had left running "
                  "unsupervised (none left)")
    else:
        _say(out, f"fleet {stack} was not running")
    if strays:
        _say(out, f"stopped {len(strays)} process(es) a session had left running as the fleet's users outside "
                  f"supervisord: {', '.join(strays)}")
    if purge:
        _say(out, f"removed {paths.display(paths.root)} (sessions, secrets, logs)")
        if removed_users:
            _say(out, f"deleted the fleet's Unix users: {', '.join(removed_users)}")
    else:
        _say(out, f"session data kept in {paths.display(paths.root)} (remove it with --purge)")
    return DownResult(was_running=was_running or orphaned, stopped_pids=stopped, purged=purge)
