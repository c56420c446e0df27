"""Draining, recycling and monitoring on a real local fleet (2 CLI replicas, HAProxy, Redis, the test model).

One fleet for the module (starting one costs 10-30 s here); the tests run in file order and each leaves both
replicas running and in rotation.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from copilot_fleet.client import rank_replicas
from copilot_fleet.local import lbstats
from copilot_fleet.local.operate import drain, recycle, undrain
from copilot_fleet.pod import procfs
from copilot_fleet.pod.wear import sessions_served
from tests.helpers.local_fleet import (
    PROJECT_CLI,
    Project,
    create_session,
    endpoint,
    resume_session,
    run,
    service,
)

STACK = "ops-drain"
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    if not PROJECT_CLI.exists():
        pytest.skip(f"Copilot CLI binary missing at {PROJECT_CLI}")
    proj = Project.create(tmp_path_factory.mktemp("ops-drain"))
    # A recycler that checks every 10 s against a bound no server reaches: it runs, and never disturbs the tests.
    proj.local_stack(STACK, "shared-cli", replicas=2, recycle={"maxRssMb": 65536, "checkEvery": "10s"})
    try:
        proc = proj.run("up", "--stack", STACK, "--timeout", "120", timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield proj
    finally:
        proj.teardown(STACK)
        if FIGURES:
            print("\nFIGURES " + json.dumps(FIGURES))


def _pid(proj: Project, server: str) -> int:
    return int(service(proj.status(STACK), server)["pid"])


def _created_on(proj: Project, server: str, session_id: str) -> bool:
    home = proj.paths(STACK).server_home(server) / "logs"
    return any(f"Created session: {session_id}".encode() in p.read_bytes() for p in home.glob("process-*.log"))


def _events(proj: Project, session_id: str) -> list[dict[str, Any]]:
    path = proj.paths(STACK).shared_session_state / session_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _turn_on(address: str, token: str | None, target: Any, prompt: str,
                   started: threading.Event) -> tuple[str, str]:
    """Create a session, send one (slow) prompt, signal once it was sent, wait for the reply, disconnect."""
    from copilot.session import PermissionHandler

    from copilot_fleet.nodelay import cli_client

    client = cli_client(address, token)
    await client.start()
    try:
        session = await client.create_session(provider=target.provider.to_sdk(), model=target.model,
                                              on_permission_request=PermissionHandler.approve_all)
        pending = asyncio.ensure_future(session.send_and_wait(prompt, timeout=90))
        await asyncio.sleep(0.3)
        started.set()
        event = await pending
        await session.disconnect()
        return session.session_id, str(getattr(event.data, "content", None) if event else "")
    finally:
        await client.force_stop()


def test_drain_finishes_the_turn_routes_new_sessions_away_and_stops(project: Project) -> None:
    target = project.target(STACK)
    token = target.token_for(None)
    cli0 = project.paths(STACK).server_home("copilot-cli-0")
    assert cli0.exists()
    address0 = service(project.status(STACK), "copilot-cli-0")["address"]

    started = threading.Event()
    turn: dict[str, Any] = {}

    def in_flight() -> None:
        turn["result"] = run(_turn_on(address0, token, target, "sleep: 6\nremember: drained", started))

    worker = threading.Thread(target=in_flight)
    worker.start()
    assert started.wait(60), "the slow turn never started"
    time.sleep(0.5)  # the CLI has the prompt and is waiting on the model
    drained: dict[str, Any] = {}
    drainer = threading.Thread(target=lambda: drained.setdefault(
        "result", drain(project.dir, STACK, "copilot-cli-0", timeout=60)))
    drainer.start()
    time.sleep(1.0)  # HAProxy DRAIN and the draining mark are set within the first second of the drain
    # A fleet client holding the target from before the drain, for a user whose first replica is the drained one,
    # opens its new session on the other replica (the mark in the lease store), while the drained one still runs.
    user = next(u for u in (f"drainee{i}" for i in range(200)) if rank_replicas(u, target.replicas)[0] == address0)
    assert run(_draining_mark(target, address0)) == "copilot-cli-0"
    routed_to = run(_fleet_create_and_delete(target, user))
    assert drainer.is_alive(), "the drain ended before the check: it proves nothing"
    assert routed_to != address0, f"the fleet client opened {user}'s new session on the draining replica"
    # A new session during the drain goes through the endpoint to the other replica.
    new_id, new_reply = run(create_session(endpoint(target), token, target, "echo: during drain"))
    assert "during drain" in new_reply
    assert _created_on(project, "copilot-cli-1", new_id), "the new session was not created on copilot-cli-1"
    drainer.join(120)
    worker.join(120)
    result = drained["result"]
    session_id, reply = turn["result"]

    # The turn in flight completed, and its answer is on disk.
    assert "remembered: drained" in reply
    events = _events(project, session_id)
    answers = [e for e in events if e["type"] == "assistant.message"]
    assert answers and "remembered: drained" in str(answers[-1]["data"]), "the completed turn is not persisted"
    assert result.cut_turns == [] and result.busy_at_start == 1
    assert result.seconds >= 2.0  # it waited for the 6 s turn, not stopped at once
    # Then the server stopped, and is out of every route.
    status = project.status(STACK)
    assert service(status, "copilot-cli-0")["state"] == "STOPPED"
    assert address0 not in json.loads(project.paths(STACK).target_file.read_text())["replicas"]
    FIGURES["drain_seconds"] = round(result.seconds, 2)
    FIGURES["drain_wait_seconds"] = round(result.wait_seconds, 2)

    # undrain: running, answering, in HAProxy's rotation and in the target again.
    FIGURES["undrain_seconds"] = round(undrain(project.dir, STACK, "copilot-cli-0", timeout=90), 2)
    status = project.status(STACK)
    assert service(status, "copilot-cli-0")["state"] == "RUNNING"
    # undrain returns once HAProxy's own check has the server UP again
    assert lbstats.backend_states(project.paths(STACK).haproxy_socket)["copilot-cli-0"].startswith("UP")
    assert address0 in json.loads(project.paths(STACK).target_file.read_text())["replicas"]
    assert run(_draining_mark(target, address0)) is None, "undrain left the draining mark"


async def _draining_mark(target: Any, address: str) -> str | None:
    import redis.asyncio as aioredis

    from copilot_fleet.client.draining import draining_key

    async with aioredis.from_url(target.redis_url.get_secret_value()) as raw:
        value = await raw.get(draining_key(address))
    return value.decode() if isinstance(value, bytes) else value


async def _fleet_create_and_delete(target: Any, user: str) -> str:
    """Where the fleet client opens a new session for `user` (the session is deleted again)."""
    from copilot_fleet.client import FleetClient

    async with FleetClient(target, user=user) as fleet:
        handle = await fleet.create_session("drain-route", available_tools=[])
        address = handle.address
        await handle.close()
        await fleet.delete_session(handle.session_id)
    return address


def test_drain_of_unknown_server_names_the_servers(project: Project) -> None:
    proc = project.run("drain", "--stack", STACK, "--server", "copilot-cli-9")
    assert proc.returncode == 1
    assert "copilot-cli-9" in proc.stderr and "copilot-cli-0, copilot-cli-1" in proc.stderr


async def _fill(address: str, token: str | None, target: Any, count: int) -> list[str]:
    """`count` sessions on one server, one turn each (remember:), 10 at a time over one client."""
    from copilot.session import PermissionHandler

    from copilot_fleet.nodelay import cli_client

    client = cli_client(address, token)
    await client.start()
    sem = asyncio.Semaphore(10)

    async def one(i: int) -> str:
        async with sem:
            session = await client.create_session(provider=target.provider.to_sdk(), model=target.model,
                                                  on_permission_request=PermissionHandler.approve_all)
            event = await session.send_and_wait(f"remember: word{i}", timeout=90)
            assert event is not None and f"word{i}" in str(getattr(event.data, "content", None))
            await session.disconnect()
            return str(session.session_id)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await client.force_stop()


def test_recycle_over_a_bound_restarts_the_server_and_keeps_sessions(project: Project) -> None:
    target = project.target(STACK)
    token = target.token_for(None)
    address0 = service(project.status(STACK), "copilot-cli-0")["address"]
    pid_before = _pid(project, "copilot-cli-0")
    began = time.monotonic()
    ids = run(_fill(address0, token, target, 30))
    FIGURES["fill_30_seconds"] = round(time.monotonic() - began, 1)
    home0 = project.paths(STACK).server_home("copilot-cli-0")
    served = sessions_served(home0, pid_before)
    assert served is not None and served >= 30
    rss_before = procfs.rss_kib(pid_before)
    assert rss_before is not None

    # Dry run: reports, changes nothing.
    dry = recycle(project.dir, STACK, max_rss_mb=None, max_sessions=30, dry_run=True)
    cand = next(c for c in dry if c.server == "copilot-cli-0")
    assert cand.reasons and not cand.recycled and _pid(project, "copilot-cli-0") == pid_before

    proc = project.run("recycle", "--stack", STACK, "--max-rss-mb", "1", "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = {c["server"]: c for c in json.loads(proc.stdout)}
    assert done["copilot-cli-0"]["recycled"] and done["copilot-cli-1"]["recycled"]  # 1 MiB: both are over it
    pid_after = _pid(project, "copilot-cli-0")
    assert pid_after != pid_before and procfs.is_alive(pid_after)
    FIGURES["rss_before_recycle_mib"] = round(rss_before / 1024, 1)
    FIGURES["rss_after_recycle_mib"] = done["copilot-cli-0"]["rss_after_mib"]
    FIGURES["recycle_drain_seconds"] = round(done["copilot-cli-0"]["drain"]["seconds"], 2)
    status = project.status(STACK)
    assert status["healthy"], status

    # History survives: a session from before the recycle resumes (through the endpoint) and recalls its word.
    reply = run(resume_session(endpoint(target), token, target, ids[7], "recall"))
    assert "recalled: word7" in reply
    time.sleep(5)  # the new process settles
    rss_settled = procfs.rss_kib(_pid(project, "copilot-cli-0"))
    FIGURES["rss_after_recycle_settled_mib"] = round((rss_settled or 0) / 1024, 1)


def test_otel_file_exporter_writes_spans_without_prompt_text(project: Project) -> None:
    target = project.target(STACK)
    token = target.token_for(None)
    secret_word = "zebraquokka"
    run(create_session(endpoint(target), token, target, f"remember: {secret_word}"))
    otel = project.paths(STACK).otel_dir
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:  # the exporter flushes on an interval
        text = "".join(p.read_text(errors="replace") for p in otel.glob("*.jsonl"))
        if "chat" in text or "invoke_agent" in text:
            break
        time.sleep(1)
    assert text, f"no OpenTelemetry output in {otel}"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines
    FIGURES["otel_lines"] = len(lines)
    FIGURES["otel_kinds"] = sorted({str(line.get("type") or line.get("kind") or next(iter(line)))
                                    for line in lines})[:10]
    assert secret_word not in text, "the OpenTelemetry file carries prompt text"


def test_status_table_shows_the_columns(project: Project) -> None:
    proc = project.run("status", "--stack", STACK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = proc.stdout.splitlines()[1]
    for column in ("STATE", "PID", "ADDRESS", "LATENCY", "CHK FAIL", "ATTACHED", "ON DISK", "RSS"):
        assert column in header
    doc = json.loads(project.run("status", "--stack", STACK, "--json").stdout)
    cli = service(doc, "copilot-cli-0")
    assert cli["check_failures"] is not None and cli["sessions_on_disk"] >= 30


def _supervised_task_log(project: Project, task: str, needle: str, seconds: float) -> str:
    """The task is RUNNING under supervisord; its log once `needle` is in it (or after `seconds`)."""
    from copilot_fleet.local.supervisor import Supervisor

    infos = Supervisor(project.paths(STACK), timeout=10).processes()
    assert infos[task]["statename"] == "RUNNING"
    log = project.paths(STACK).log_file(task)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and needle not in log.read_text(errors="replace"):
        time.sleep(0.5)
    return log.read_text(errors="replace")


def test_the_janitor_runs_under_supervisord(project: Project) -> None:
    text = _supervised_task_log(project, "janitor", "lease check on", 30)
    assert "lease check on" in text and "STOPPED" not in text, text[-2000:]


def test_the_recycler_runs_under_supervisord(project: Project) -> None:
    text = _supervised_task_log(project, "recycler", "copilot-cli-1: ok (RSS", 40)
    assert "copilot-cli-0: ok (RSS" in text and "copilot-cli-1: ok (RSS" in text, text[-2000:]
    assert "recycling" not in text


def test_recycle_every_checks_repeatedly(project: Project) -> None:
    proc = project.run("recycle", "--stack", STACK, "--max-rss-mb", "64", "--dry-run", "--json",
                       "--every", "0.5", "--max-runs", "2", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]  # JSON Lines, one per check
    assert len(docs) == 2, proc.stdout
    for doc in docs:
        assert {c["server"] for c in doc} == {"copilot-cli-0", "copilot-cli-1"}
        assert all(c["reasons"] and not c["recycled"] for c in doc), doc
