"""`copilot-fleet status`: each process of a local fleet with its supervisord state, health and sessions.

Health is the same round trip as readiness (probes.py), timed. Sessions are counted from disk, where the CLI
keeps them (copilot_fleet.sessiondir): `session-state/<id>/` is one session, and the CLI marks a session a process
has attached (open) with `session-state/<id>/inuse.<pid>.lock`, removed when the client disconnects. So "attached"
per server is the number of sessions holding a lock with that server's current PID, which works for a
session-state/ shared by several replicas too (a stale lock left by a killed server carries a PID that is no
longer the server's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from copilot_fleet.errors import FleetError
from copilot_fleet.local import lbstats, probes
from copilot_fleet.local import supervisor as sv
from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths, started_state
from copilot_fleet.local.plan import Service, load_manifest
from copilot_fleet.local.stack import not_local_message, stack_platform
from copilot_fleet.pod import procfs
from copilot_fleet.pod.inspector_guard import INSPECTOR_PORT
from copilot_fleet.pod.ports import loopback_listener_uids, port_holder_pid
from copilot_fleet.sessiondir import attached_dirs, session_dirs

# running: supervisord runs and restarts what exits; lost: supervisord is gone but processes it started still run,
# and nothing restarts them; stopped: nothing of the fleet runs.
Supervision = Literal["running", "lost", "stopped"]
UNSUPERVISED = "UNSUPERVISED"


@dataclass
class ServiceStatus:
    name: str
    kind: str
    address: str
    state: str  # supervisord's state name, or "not running"
    pid: int | None = None
    uptime_seconds: float | None = None
    healthy: bool = False
    health: str = ""  # what the probe saw
    latency_ms: float | None = None
    balancer: str | None = None  # HAProxy's view of a replica (UP, DOWN, DRAIN, MAINT, ...)
    check_failures: int | None = None  # HAProxy's failed health checks of the replica since the fleet was up
    drained: bool = False  # taken out of rotation by `copilot-fleet drain`
    sessions_on_disk: int | None = None
    sessions_shared: bool = False
    sessions_in_store: int | None = None  # store mode: sessions of this server's store scope
    attached: int | None = None
    rss_mib: float | None = None
    user: str | None = None
    run_as: str | None = None  # the Unix user the process runs as

@dataclass
class FleetStatus:
    stack: str
    isolation: str
    running: bool
    supervisord_pid: int | None
    services: list[ServiceStatus] = field(default_factory=list)
    shared_sessions_on_disk: int | None = None
    session_state: str = "volume"
    sessions_in_store: int | None = None  # store mode: every session of the fleet in the store
    leased_in_store: int | None = None  # of those, the ones a client holds the lease of (attached or attaching)
    store_error: str | None = None  # store mode: why the store could not be listed
    supervision: Supervision = "stopped"
    isolated: bool = False  # started as root: each server runs as an unprivileged user of its own
    dead_supervisord_pid: int | None = None  # supervision lost: the supervisord that died
    unsupervised_pids: list[int] = field(default_factory=list)  # supervision lost: every process still running
    # Started as root: whether root holds 127.0.0.1:9229, so SIGUSR1 cannot open a CLI's debugger (None: not root)
    inspector_guarded: bool | None = None

    @property
    def healthy(self) -> bool:
        return (self.running and bool(self.services) and all(s.healthy for s in self.services)
                and self.inspector_guarded is not False)

    def to_json(self) -> dict[str, object]:
        return {"stack": self.stack, "isolation": self.isolation, "running": self.running,
                "healthy": self.healthy, "supervisord_pid": self.supervisord_pid,
                "supervision": self.supervision, "dead_supervisord_pid": self.dead_supervisord_pid,
                "isolated": self.isolated, "inspector_guarded": self.inspector_guarded,
                "unsupervised_pids": self.unsupervised_pids,
                "shared_sessions_on_disk": self.shared_sessions_on_disk,
                "session_state": self.session_state, "sessions_in_store": self.sessions_in_store,
                "leased_in_store": self.leased_in_store, "store_error": self.store_error,
                "services": [asdict(s) for s in self.services]}


def _store_sessions(paths: StatePaths, scopes: list[str]) -> list[Any] | str:
    """Store mode: every session of the fleet's store scopes (sessionstore.admin.list_sessions, with the fleet's
    admin credential from its target), or why they could not be listed."""
    from copilot_fleet.sessionstore import admin
    from copilot_fleet.sessionstore.keys import StoreKeys
    from copilot_fleet.target import TargetError, load_target

    try:
        target = load_target(paths.target_file)
    except TargetError as exc:
        return str(exc)
    if target.redis_url is None:
        return "the target names no store"

    async def listing() -> list[Any]:
        import redis.asyncio as aioredis

        assert target.redis_url is not None
        client = aioredis.from_url(target.redis_url.get_secret_value(), socket_timeout=probes.DEFAULT_TIMEOUT,
                                   socket_connect_timeout=probes.DEFAULT_TIMEOUT)
        try:
            return [row for scope in scopes for row in await admin.list_sessions(client, StoreKeys(scope))]
        finally:
            await client.aclose()

    try:
        return asyncio.run(listing())
    except FleetError as exc:
        return str(exc)


def _secret_values(paths: StatePaths, services: list[Service]) -> dict[str, str]:
    names = {n for s in services for n in (s.token_secret, s.password_secret) if n}
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = paths.secret_file(name).read_text().strip()
    return values


def collect(project_dir: Path, stack: str) -> FleetStatus:
    platform = stack_platform(project_dir, stack)
    if platform is not None and platform != "local":
        raise LocalFleetError(not_local_message(stack, platform))
    paths = started_state(project_dir, stack)
    try:
        manifest, services = load_manifest(paths.manifest.read_text())
    except FileNotFoundError:
        raise LocalFleetError(f"fleet {stack} has never been started here (no {paths.display(paths.manifest)}); "
                              f"start it with `copilot-fleet up --stack {stack}`") from None
    record = sv.read_record(paths)
    running = record is not None and record.alive()
    left = sv.orphans(record) if record is not None and not running else []
    status = FleetStatus(stack=stack, isolation=str(manifest["isolation"]), running=running,
                         supervisord_pid=record.pid if running and record else None,
                         supervision="running" if running else "lost" if left else "stopped",
                         dead_supervisord_pid=record.pid if left and record else None, unsupervised_pids=left,
                         isolated=bool(manifest.get("isolated")))
    status.session_state = str(manifest.get("session_state") or "volume")
    stored: list[Any] = []
    if status.session_state == "store" and running:
        scopes = manifest.get("store_scopes")
        listed = _store_sessions(paths, [str(scope) for scope in scopes] if isinstance(scopes, list) else [])
        if isinstance(listed, str):
            status.store_error = listed
        else:
            stored = listed
            status.sessions_in_store = len(stored)
            status.leased_in_store = sum(1 for row in stored if row.leased)
    shared_dirs = {s.session_state for s in services if s.shared_session_state and s.session_state}
    if shared_dirs:
        status.shared_sessions_on_disk = sum(len(session_dirs(Path(d))) for d in shared_dirs)

    infos: dict[str, dict[str, object]] = {}
    unknown_state = "not running"
    if running:
        try:
            infos = sv.Supervisor(paths, timeout=5.0).processes()
        except (OSError, xmlrpc.client.Error) as exc:
            unknown_state = f"unknown (supervisord does not answer: {exc})"
    serving = running or bool(left)
    if status.isolated and serving:
        status.inspector_guarded = 0 in loopback_listener_uids(INSPECTOR_PORT)
    results = probes.probe_all(services, _secret_values(paths, services)) if serving else {}
    lb = lbstats.backend_rows(paths.haproxy_socket) if serving and manifest.get("balance") else {}
    drained = _drained(paths)

    for svc in services:
        info = infos.get(svc.name, {})
        row = ServiceStatus(name=svc.name, kind=svc.kind, address=svc.address, user=svc.user,
                            state=str(info.get("statename", unknown_state)), run_as=svc.run_as)
        pid = int(info.get("pid") or 0)  # type: ignore[call-overload]
        if left:  # no supervisord to ask: the fleet's process that holds the service's port
            holder = port_holder_pid(svc.port)
            pid = holder if holder in left else 0
            row.state = UNSUPERVISED if pid else "not running"
        if pid and procfs.is_alive(pid):
            row.pid = pid
            row.run_as = procfs.user_name(pid) or row.run_as  # what the kernel says, not what was planned
            now, start = info.get("now"), info.get("start")
            row.uptime_seconds = float(now) - float(start) if now and start else procfs.age_seconds(pid)  # type: ignore[arg-type]
            rss = procfs.rss_kib(pid)
            row.rss_mib = round(rss / 1024, 1) if rss is not None else None
        result = results.get(svc.name)
        if result is not None:
            row.health = result.detail
            row.latency_ms = round(result.latency_ms, 1)
            row.healthy = result.ok and row.state == "RUNNING"  # never while unsupervised
        else:
            row.health = "not running"
        if svc.kind == "cli" and svc.store_scope is not None and status.sessions_in_store is not None:
            # Attached here: leased by a client that bound the lease to this server.
            row.sessions_in_store = sum(1 for r in stored if r.scope == svc.store_scope)
            row.attached = sum(1 for r in stored if r.scope == svc.store_scope and r.bound_server == svc.address)
        if svc.kind == "cli" and svc.session_state:
            state_dir = Path(svc.session_state)
            row.sessions_shared = svc.shared_session_state
            row.sessions_on_disk = len(session_dirs(state_dir))
            row.attached = len(attached_dirs(state_dir, row.pid)) if row.pid else 0
        if svc.kind == "cli" and svc.ready_file is not None and row.pid:
            # Store mode: the supervised process is the provider; the CLI, its child, runs as the server's user.
            row.run_as = f"{row.run_as} (CLI: {svc.run_as or row.run_as})"
        if svc.kind == "cli":
            row.drained = svc.name in drained
            if lb:
                lb_row = lb.get(svc.name, {})
                row.balancer = lb_row.get("status", "unknown")
                chkfail = lb_row.get("chkfail", "")
                row.check_failures = int(chkfail) if chkfail.isdigit() else None
                if not row.balancer.startswith("UP"):
                    row.healthy = False
        status.services.append(row)
    return status


def _drained(paths: StatePaths) -> set[str]:
    try:
        return {p.name for p in (paths.root / "drain").iterdir()}
    except OSError:
        return set()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_table(status: FleetStatus) -> str:
    header = ["NAME", "KIND", "STATE", "PID", "ADDRESS", "HEALTH", "LATENCY", "UPTIME", "RSS", "LB", "CHK FAIL",
              "ON DISK", "ATTACHED", "RUNS AS"]
    rows = [header]
    for s in status.services:
        health = "ok" if s.healthy else f"FAIL: {s.health}"
        on_disk = "-" if s.sessions_on_disk is None else (
            f"{s.sessions_on_disk} shared" if s.sessions_shared else str(s.sessions_on_disk))
        if s.sessions_in_store is not None:
            on_disk = f"{s.sessions_in_store} in store"
        rows.append([
            s.name + (f" ({s.user})" if s.user else ""), s.kind, s.state + (" (drained)" if s.drained else ""),
            str(s.pid or "-"), s.address, health,
            "-" if s.latency_ms is None else f"{s.latency_ms:.0f} ms", _duration(s.uptime_seconds),
            "-" if s.rss_mib is None else f"{s.rss_mib:.0f} MiB", s.balancer or "-",
            "-" if s.check_failures is None else str(s.check_failures), on_disk,
            "-" if s.attached is None else str(s.attached), s.run_as or "-",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if status.supervision == "lost":
        summary = (f"fleet {status.stack} ({status.isolation}): UNSUPERVISED: supervisord is gone (pid "
                   f"{status.dead_supervisord_pid}) and {len(status.unsupervised_pids)} of its processes run on with "
                   f"nothing to restart them; `copilot-fleet up --stack {status.stack}` restarts them under "
                   f"supervision, `copilot-fleet down --stack {status.stack}` stops them")
    elif not status.running:
        summary = f"fleet {status.stack}: not running (start it with `copilot-fleet up --stack {status.stack}`)"
    elif status.healthy:
        summary = f"fleet {status.stack} ({status.isolation}): healthy, supervisord pid {status.supervisord_pid}"
    else:
        bad = [s.name for s in status.services if not s.healthy]
        if status.inspector_guarded is False:
            bad.append(f"inspector-guard (127.0.0.1:{INSPECTOR_PORT} is not held by root: SIGUSR1 could open a "
                       "CLI's debugger)")
        summary = f"fleet {status.stack} ({status.isolation}): UNHEALTHY: {', '.join(bad)}"
    if status.shared_sessions_on_disk is not None:
        summary += f"; {status.shared_sessions_on_disk} session(s) in the shared session-state/"
    if status.sessions_in_store is not None:
        summary += (f"; {status.sessions_in_store} session(s) in the session store, {status.leased_in_store} leased "
                    "(attached or attaching)")
    elif status.store_error is not None:
        summary += f"; the session store could not be listed: {status.store_error}"
    if (status.running or status.supervision == "lost") and not status.isolated:
        summary += ("; NOT ISOLATED: started without root, every process and every session's tool runs run as one "
                    "user, who can read the fleet's secrets")
    return summary + "\n" + "\n".join(lines)


def to_json_text(status: FleetStatus) -> str:
    return json.dumps(status.to_json(), indent=2)
