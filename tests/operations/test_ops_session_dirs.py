"""What counts as a session in a `session-state/` directory: one answer (copilot_fleet.sessiondir) for the janitor,
`copilot-fleet status`, the drain and the preStop hook. `status` used to count every directory not starting with
`.`, links to directories included, while the janitor counted only real directories named by a session id."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from copilot_fleet import sessiondir
from copilot_fleet.local import status
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.plan import Service
from copilot_fleet.pod import drain
from copilot_fleet.pod.janitor import Janitor

REAL = ["u-5-alice-code-1706932800-3f9a0c1e", "s-team", "a" * sessiondir.MAX_SESSION_ID_LENGTH]


def planted(tmp_path: Path) -> Path:
    """A session-state/ with real sessions and everything else a CLI or a tool run may leave there."""
    state = tmp_path / "session-state"
    state.mkdir()
    for sid in REAL:
        (state / sid).mkdir()
        (state / sid / sessiondir.EVENTS).write_text('{"type":"session.start"}\n')
    (state / sessiondir.LOCKS_DIR).mkdir()
    (state / sessiondir.LOCKS_DIR / sessiondir.operation_lock(REAL[0])).touch()
    (state / ".copilot-fleet-janitor").mkdir()
    (state / "not a session").mkdir()  # a space: no CLI id
    (state / "dotted.name").mkdir()
    (state / ("b" * (sessiondir.MAX_SESSION_ID_LENGTH + 1))).mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state / "linked-session").symlink_to(elsewhere, target_is_directory=True)
    (state / "plain-file").write_text("not a directory")
    return state


def age_everything(state: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in [*state.rglob("*"), state]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_a_session_is_a_real_directory_named_by_a_session_id(tmp_path: Path) -> None:
    state = planted(tmp_path)
    assert [d.name for d in sessiondir.session_dirs(state)] == sorted(REAL)
    assert sessiondir.session_dirs(tmp_path / "missing") == []


def status_of_a_stopped_fleet(project: Path, state: Path) -> status.FleetStatus:
    """`copilot-fleet status` of a (stopped) local fleet whose one CLI server keeps its sessions in `state`."""
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: t\n")
    service = Service(name="copilot-cli-0", kind="cli", port=4401, port_key="fleet:local.replicaBasePort",
                      probe="jsonrpc", log=str(project / "cli.log"), session_state=str(state),
                      shared_session_state=True)
    manifest = StatePaths(project, "t").manifest
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"stack": "t", "isolation": "shared-cli", "balance": None,
                                    "uses_test_model": False, "services": [asdict(service)]}))
    return status.collect(project, "t")


def test_the_janitor_and_status_agree_on_what_a_session_is(tmp_path: Path) -> None:
    state = planted(tmp_path)
    age_everything(state, 3 * 86400)
    report = asyncio.run(Janitor(state, 86400, dry_run=True).run())
    judged = sorted(i.name for i in report.items if i.kind == "session" and i.action != "error")
    assert judged == sorted(REAL)
    assert (tmp_path / "elsewhere").is_dir()  # a dry run touches nothing, the link's target least of all
    fleet = status_of_a_stopped_fleet(tmp_path / "project", state)
    assert fleet.shared_sessions_on_disk == len(REAL)
    assert [s.sessions_on_disk for s in fleet.services] == [len(REAL)]


def test_attached_sessions_are_read_from_real_session_directories_only(tmp_path: Path) -> None:
    state = planted(tmp_path)
    pid = 4242
    (state / REAL[0] / sessiondir.inuse_lock(pid)).touch()
    (tmp_path / "elsewhere" / sessiondir.inuse_lock(pid)).touch()  # through the link: not a session
    assert [d.name for d in sessiondir.attached_dirs(state, pid)] == [REAL[0]]
    assert sessiondir.attached_dirs(state, pid + 1) == []
    # The preStop hook and `copilot-fleet drain` wait on the same sessions: busy while the last event is not an
    # idle one, or while the history was written in the last second.
    events = state / REAL[0] / sessiondir.EVENTS
    age_everything(state, 60)
    assert drain.busy_sessions(state, pid) == []
    events.write_text('{"type":"session.start"}\n{"type":"user.message"}\n')
    age_everything(state, 60)
    assert drain.busy_sessions(state, pid) == [REAL[0]]
    events.write_text('{"type":"session.start"}\n{"type":"user.message"}\n{"type":"assistant.turn_end"}\n')
    assert drain.busy_sessions(state, pid) == [REAL[0]]  # just written
    age_everything(state, 60)
    assert drain.busy_sessions(state, pid) == []


def test_the_last_event_is_read_from_the_tail_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    events = tmp_path / sessiondir.EVENTS
    events.write_text('{"type":"user.message"}\n' + "x" * 70000 + '\n{"type":"assistant.turn_end"}\n{"type":"ass')
    assert sessiondir.last_event_type(events) == "assistant.turn_end"
    assert sessiondir.last_event_type(tmp_path / "missing.jsonl") is None
