"""Draining and recycling the CLI servers of a local fleet.

Drain (`copilot-fleet drain`):
1. HAProxy puts the server in DRAIN (admin socket, `level admin`): no new connection through the endpoint goes
   there; connections it already has keep working.
2. Direct-to-replica clients: the server's address is removed from `target.json` (`copilot-fleet target`), a
   marker `drain/<server>` is written, and the draining mark `copilot-fleet:draining:<address>` is set in the
   fleet's Redis: fleet clients try the server last on every attach, also those holding the old target.
3. It waits until no session attached to the server (an `inuse.<pid>.lock` with the server's PID) has a turn in
   flight, bounded by `--timeout`. A turn is in flight when the session's events.jsonl does not end with
   `assistant.turn_end` (or a session lifecycle event), or was written in the last second (tool rounds).
4. supervisord stops the server (SIGTERM; it stays STOPPED). Sessions still attached but idle are disconnected;
   everything they completed is already in events.jsonl.

Undrain (`copilot-fleet undrain`, also done by `up` for a drained server it starts): start, wait until it
answers, HAProxy READY, the address back in target.json, the draining mark cleared.

Recycle (`copilot-fleet recycle`): a server over `maxRssMb` (VmRSS) or over `maxSessions` (creates + resumes in its
own log since it started) is drained and started again.
"""

from __future__ import annotations

import json
import socket
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from copilot_fleet.client.draining import clear_draining, mark_draining
from copilot_fleet.local import lbstats, probes
from copilot_fleet.local import supervisor as sv
from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths, stack_lock, started_state, write_private
from copilot_fleet.local.plan import HAPROXY_BACKEND, HAPROXY_PROGRAM, Service, load_manifest
from copilot_fleet.pod import procfs
from copilot_fleet.pod.drain import turn_in_flight, wait_idle
from copilot_fleet.pod.wear import measure
from copilot_fleet.sessiondir import attached_dirs

DEFAULT_DRAIN_TIMEOUT = 60.0
_POLL = 0.2


@dataclass
class DrainResult:
    server: str
    pid: int | None
    seconds: float  # from the start of the drain until the server stopped
    wait_seconds: float  # of which waiting for turns to finish
    attached_at_start: int
    busy_at_start: int
    cut_turns: list[str] = field(default_factory=list)  # sessions still in a turn when the timeout ended the wait
    was_running: bool = True

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RecycleCandidate:
    server: str
    pid: int | None
    rss_mib: float | None
    sessions_served: int | None
    reasons: list[str]
    recycled: bool = False
    rss_after_mib: float | None = None
    drain: DrainResult | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# --- the fleet's files ------------------------------------------------------------------------------------------

def _services(paths: StatePaths, stack: str) -> list[Service]:
    try:
        _, services = load_manifest(paths.manifest.read_text())
    except FileNotFoundError:
        raise LocalFleetError(f"fleet {stack} has never been started here; start it with "
                              f"`copilot-fleet up --stack {stack}`") from None
    return services


def cli_service(paths: StatePaths, stack: str, server: str) -> Service:
    clis = [s for s in _services(paths, stack) if s.kind == "cli"]
    for svc in clis:
        if svc.name == server:
            return svc
    raise LocalFleetError(f"fleet {stack} has no CLI server {server!r}; its servers are: "
                          + ", ".join(s.name for s in clis))


def _running_supervisor(paths: StatePaths, stack: str) -> sv.Supervisor:
    record = sv.read_record(paths)
    if record is None or not record.alive():
        raise LocalFleetError(f"fleet {stack} is not running; start it with `copilot-fleet up --stack {stack}`")
    return sv.Supervisor(paths)


def drain_marker(paths: StatePaths, server: str) -> Path:
    return paths.root / "drain" / server


def drained_servers(paths: StatePaths) -> set[str]:
    try:
        return {p.name for p in (paths.root / "drain").iterdir()}
    except OSError:
        return set()


def _rewrite_target(paths: StatePaths, services: list[Service]) -> None:
    """target.json lists the replicas that are not drained (the original order)."""
    try:
        doc = json.loads(paths.target_file.read_text())
    except (OSError, ValueError):
        return  # no target yet: `up` writes it
    drained = drained_servers(paths)
    doc["replicas"] = [s.address for s in services if s.kind == "cli" and s.user is None and s.name not in drained]
    write_private(paths.target_file, json.dumps(doc, indent=2) + "\n")


# --- HAProxy ----------------------------------------------------------------------------------------------------

def haproxy_command(socket_path: Path, command: str, timeout: float = 2.0) -> str:
    """One command on HAProxy's admin socket; its answer (empty when a `set` succeeded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


def set_lb_state(paths: StatePaths, server: str, state: str) -> None:
    """`ready`, `drain` or `maint` for a replica in HAProxy."""
    answer = haproxy_command(paths.haproxy_socket, f"set server {HAPROXY_BACKEND}/{server} state {state}")
    if answer:
        raise LocalFleetError(f"HAProxy refused `set server {HAPROXY_BACKEND}/{server} state {state}`: {answer}")


# --- drain / undrain --------------------------------------------------------------------------------------------

def _say(out: Callable[[str], None] | None, text: str) -> None:
    if out is not None:
        out(text)


def drain(project_dir: Path, stack: str, server: str, *, timeout: float = DEFAULT_DRAIN_TIMEOUT,
          out: Callable[[str], None] | None = None) -> DrainResult:
    paths = started_state(project_dir, stack)  # before the lock: a stack that never ran gets no lock file
    with stack_lock(paths):
        return _drain(paths, stack, server, timeout, out)


def _drain(paths: StatePaths, stack: str, server: str, timeout: float,
           out: Callable[[str], None] | None) -> DrainResult:
    began = time.monotonic()
    svc = cli_service(paths, stack, server)
    services = _services(paths, stack)
    supervisor = _running_supervisor(paths, stack)
    info = supervisor.processes().get(server, {})
    pid = int(info.get("pid") or 0) or None
    balanced = any(s.kind == "haproxy" for s in services)
    write_private(drain_marker(paths, server), f"{time.time():.0f}\n")
    _rewrite_target(paths, services)
    _set_draining_mark(paths, svc, True, out)
    if balanced:
        set_lb_state(paths, server, "drain")
        _say(out, f"  {server}: HAProxy DRAIN (no new connections through the endpoint)")
    if info.get("statename") != "RUNNING" or pid is None:
        _say(out, f"  {server}: not running ({info.get('statename', 'unknown')}); marked drained")
        return DrainResult(server=server, pid=None, seconds=time.monotonic() - began, wait_seconds=0.0,
                           attached_at_start=0, busy_at_start=0, was_running=False)
    if svc.session_state is None:
        # Store mode: nothing of a session is on disk to watch. Stopping sends SIGTERM to the provider, which passes
        # it to the CLI and keeps serving while the CLI finishes its turns (up to its stop grace).
        _say(out, f"  {server}: pid {pid}, sessions in the store; stopping lets the CLI finish its turns")
        wait_began = time.monotonic()
        try:
            supervisor.stop_process(server)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise LocalFleetError(f"supervisord could not stop {server}: {fault.faultString}") from fault
        seconds = time.monotonic() - began
        _say(out, f"  {server}: stopped after {seconds:.1f} s")
        return DrainResult(server=server, pid=pid, seconds=seconds, wait_seconds=time.monotonic() - wait_began,
                           attached_at_start=0, busy_at_start=0)
    state_dir = Path(svc.session_state)
    attached = attached_dirs(state_dir, pid)
    busy_at_start = sum(1 for d in attached if turn_in_flight(d))
    _say(out, f"  {server}: pid {pid}, {len(attached)} session(s) attached, {busy_at_start} in a turn; waiting up "
              f"to {timeout:.0f} s")
    wait_began = time.monotonic()
    cut = wait_idle(state_dir, pid, timeout, poll=_POLL)
    waited = time.monotonic() - wait_began
    if cut:
        _say(out, f"  {server}: timeout: {len(cut)} turn(s) still running are cut off: {', '.join(cut)}")
    try:
        supervisor.stop_process(server)
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" not in fault.faultString:
            raise LocalFleetError(f"supervisord could not stop {server}: {fault.faultString}") from fault
    seconds = time.monotonic() - began
    _say(out, f"  {server}: stopped after {seconds:.1f} s ({waited:.1f} s waiting for turns)")
    return DrainResult(server=server, pid=pid, seconds=seconds, wait_seconds=waited,
                       attached_at_start=len(attached), busy_at_start=busy_at_start, cut_turns=cut)


def undrain(project_dir: Path, stack: str, server: str, *, timeout: float = 60.0,
            out: Callable[[str], None] | None = None) -> float:
    """Start a drained (or stopped) server, wait until it answers, and put it back in rotation. Returns seconds."""
    paths = started_state(project_dir, stack)
    with stack_lock(paths):
        return _undrain(paths, stack, server, timeout, out)


def _undrain(paths: StatePaths, stack: str, server: str, timeout: float,
             out: Callable[[str], None] | None) -> float:
    began = time.monotonic()
    svc = cli_service(paths, stack, server)
    services = _services(paths, stack)
    supervisor = _running_supervisor(paths, stack)
    if supervisor.processes().get(server, {}).get("statename") not in ("RUNNING", "STARTING"):
        try:
            supervisor.start_process(server)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise LocalFleetError(f"supervisord could not start {server}: {fault.faultString}") from fault
    wait_answering(paths, supervisor, svc, began + timeout)
    restore_rotation(paths, services, server)
    if any(s.kind == "haproxy" for s in services):
        _wait_balancer_up(paths, server, began + timeout)
    seconds = time.monotonic() - began
    _say(out, f"  {server}: answering and back in rotation after {seconds:.1f} s")
    return seconds


def wait_answering(paths: StatePaths, supervisor: sv.Supervisor, svc: Service, deadline: float) -> None:
    """Until the server answers and supervisord counts it RUNNING (what `status` calls healthy): a warm CLI answers
    within supervisord's startsecs."""
    token = paths.secret_file(svc.token_secret).read_text().strip() if svc.token_secret else ""
    last = ""
    while time.monotonic() < deadline:
        result = probes.probe_all([svc], {svc.token_secret or "": token}, timeout=1.0)[svc.name]
        state = supervisor.processes().get(svc.name, {}).get("statename")
        if result.ok and state == "RUNNING":
            return
        last = result.detail if not result.ok else f"answers, but supervisord says {state}"
        time.sleep(_POLL)
    raise LocalFleetError(f"{svc.name} did not answer within the timeout ({last}):\n"
                          + sv.tail(Path(svc.log)))


def _wait_balancer_up(paths: StatePaths, server: str, deadline: float) -> None:
    """Until HAProxy's own health check passes again (READY only re-enables checking): before that the endpoint
    sends nothing to the server, and `status` calls the fleet unhealthy."""
    state = ""
    while time.monotonic() < deadline:
        state = lbstats.backend_states(paths.haproxy_socket).get(server, "")
        if state.startswith("UP"):
            return
        time.sleep(_POLL)
    raise LocalFleetError(f"{server} answers, but HAProxy still reports it {state or 'unknown'}; see "
                          f"{paths.display(paths.log_file(HAPROXY_PROGRAM))}")


def restore_rotation(paths: StatePaths, services: list[Service], server: str) -> None:
    """HAProxy READY, the drain marker gone, the address back in target.json."""
    if any(s.kind == "haproxy" for s in services):
        set_lb_state(paths, server, "ready")
    drain_marker(paths, server).unlink(missing_ok=True)
    _rewrite_target(paths, services)
    svc = next((s for s in services if s.name == server), None)
    if svc is not None:
        _set_draining_mark(paths, svc, False, None)


def _target_redis_url(paths: StatePaths) -> str | None:
    try:
        url = json.loads(paths.target_file.read_text()).get("redis_url")
    except (OSError, ValueError):
        return None
    return url if isinstance(url, str) and url else None


def _set_draining_mark(paths: StatePaths, svc: Service, draining: bool, out: Callable[[str], None] | None) -> None:
    """The mark in the lease store that makes fleet clients with an older target try this replica last. A drain
    that cannot set it carries on (HAProxy and the target still take the server out); an undrain that cannot clear
    it fails, or the server would stay last in every route."""
    url = _target_redis_url(paths)
    if url is None or svc.user is not None:
        return  # no lease store (per-user), or a user's own server: no other replica to send anyone to
    if draining:
        try:
            mark_draining(url, svc.address, svc.name)
        except redis.exceptions.RedisError as exc:
            _say(out, f"  {svc.name}: could not mark it in the lease store ({exc}); fleet clients holding an old "
                      "target may still open sessions on it until it stops")
            return
        _say(out, f"  {svc.name}: marked draining in the lease store (fleet clients try it last)")
        return
    try:
        clear_draining(url, svc.address)
    except redis.exceptions.RedisError as exc:
        raise LocalFleetError(f"{svc.name}: could not clear the draining mark of it in the lease store ({exc}); "
                              "fleet clients holding an old target try it last until `copilot-fleet undrain` "
                              "succeeds") from exc


# --- recycle ----------------------------------------------------------------------------------------------------

class FleetBusy(LocalFleetError):
    """Another command holds the fleet (a periodic check skips its turn rather than queue behind it)."""


def _busy() -> None:
    raise FleetBusy("another command is changing the fleet")


def _cli_pid(svc: Service) -> int | None:
    """Store mode: the CLI's own pid, from its provider's ready file (the supervised process is the provider, and
    the memory and sessions that wear a server out are the CLI's); None in volume mode or when it cannot be read."""
    if svc.ready_file is None:
        return None
    try:
        info = json.loads(Path(svc.ready_file).read_text())
        return int(info["cli_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recycle(project_dir: Path, stack: str, *, max_rss_mb: float | None, max_sessions: int | None,
            dry_run: bool = False, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT, start_timeout: float = 60.0,
            out: Callable[[str], None] | None = None, wait_for_lock: bool = True) -> list[RecycleCandidate]:
    """Every CLI server over a bound is drained and started again, one at a time (the others keep serving).
    `wait_for_lock=False`: raise FleetBusy instead of waiting while another command changes the fleet."""
    if max_rss_mb is None and max_sessions is None:
        raise LocalFleetError("no recycle bound: pass --max-rss-mb and/or --max-sessions, or set fleet:recycle "
                              "(maxRssMb, maxSessions) in the stack file")
    paths = started_state(project_dir, stack)
    with stack_lock(paths, on_wait=None if wait_for_lock else _busy):
        services = _services(paths, stack)
        supervisor = _running_supervisor(paths, stack)
        infos = supervisor.processes()
        drained = drained_servers(paths)
        result = []
        for svc in (s for s in services if s.kind == "cli"):
            info = infos.get(svc.name, {})
            pid = int(info.get("pid") or 0) or None
            if pid is None or info.get("statename") != "RUNNING" or svc.name in drained:
                continue  # stopped or drained by an operator: not ours to restart
            wear = measure(_cli_pid(svc) or pid, Path(svc.home or ""))
            result.append(RecycleCandidate(server=svc.name, pid=pid, rss_mib=wear.rss_mib,
                                           sessions_served=wear.sessions_served,
                                           reasons=wear.over(max_rss_mb, max_sessions)))
        for cand in result:
            if not cand.reasons:
                _say(out, f"  {cand.server}: ok (RSS {cand.rss_mib} MiB, {cand.sessions_served} sessions served)")
                continue
            if dry_run:
                _say(out, f"  {cand.server}: would recycle: {'; '.join(cand.reasons)}")
                continue
            _say(out, f"  {cand.server}: recycling: {'; '.join(cand.reasons)}")
            cand.drain = _drain(paths, stack, cand.server, drain_timeout, out)
            _undrain(paths, stack, cand.server, start_timeout, out)
            new = supervisor.processes().get(cand.server, {})
            new_pid = int(new.get("pid") or 0)
            rss = procfs.rss_kib(new_pid) if new_pid else None
            cand.rss_after_mib = round(rss / 1024, 1) if rss is not None else None
            cand.recycled = True
        return result
