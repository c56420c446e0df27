"""The janitor: what it removes, what it keeps and why; never an attached session (lease, or the CLI's in-use lock)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from copilot_fleet.client import ClientPool, FleetClient, LeaseManager, SessionNotFound
from copilot_fleet.pod.janitor import TRASH_DIR, Janitor, Report, last_activity, read_redis_url
from copilot_fleet.pod.ports import free_port
from copilot_fleet.sessiondir import LOCKS_DIR

if TYPE_CHECKING:
    from tests.helpers.ops_fleet import OpsFleet

pytestmark = pytest.mark.anyio

DAY = 86400
WEEK = 7 * DAY


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def age_session(session_dir: Path, seconds: float, *, updated_at: str | None = None) -> None:
    """Make a session look untouched for `seconds`: file times and workspace.yaml's updated_at."""
    then = time.time() - seconds
    workspace = session_dir / "workspace.yaml"
    if workspace.exists():
        lines = [f"updated_at: {updated_at or iso(then)}" if line.startswith("updated_at:") else line
                 for line in workspace.read_text().splitlines()]
        workspace.write_text("\n".join(lines) + "\n")
    for path in [*session_dir.iterdir(), session_dir]:
        os.utime(path, (then, then), follow_symlinks=False)


def fake_session(state: Path, sid: str, age: float, *, updated_at: str | None = None, lock: bool = True) -> Path:
    d = state / sid
    d.mkdir()
    created = time.time() - age
    (d / "workspace.yaml").write_text(f"id: {sid}\ncwd: /tmp\ncreated_at: {iso(created)}\nupdated_at: x\n")
    (d / "events.jsonl").write_text('{"type":"session.start"}\n')
    if lock:
        (state / LOCKS_DIR).mkdir(exist_ok=True)
        (state / LOCKS_DIR / f"{sid}.lock").touch()
        os.utime(state / LOCKS_DIR / f"{sid}.lock", (created, created))
    age_session(d, age, updated_at=updated_at)
    return d


def by_name(report: Report) -> dict[str, tuple[str, str]]:
    return {f"{i.kind}:{i.name}": (i.action, i.reason) for i in report.items}


# -- on a directory (no servers) -------------------------------------------------------------------------------


async def test_removes_idle_sessions_and_their_locks_keeps_the_rest(tmp_path: Path) -> None:
    old = fake_session(tmp_path, "old-1", 8 * DAY)
    young = fake_session(tmp_path, "young-1", 2 * DAY)
    (tmp_path / "not.a.session").mkdir()  # the CLI refuses '.' in ids: not ours to judge
    os.utime(tmp_path / "not.a.session", (0, 0))
    report = await Janitor(tmp_path, WEEK).run()
    assert report.ok and not report.leased
    items = by_name(report)
    assert items["session:old-1"][0] == "removed"
    assert items["lock:old-1"] == ("removed", "its session was removed")
    assert items["session:young-1"][0] == "kept"
    assert "session:not.a.session" not in items
    assert not old.exists() and young.exists() and (tmp_path / "not.a.session").exists()
    assert not (tmp_path / LOCKS_DIR / "old-1.lock").exists()
    assert (tmp_path / LOCKS_DIR / "young-1.lock").exists()
    assert list((tmp_path / TRASH_DIR).iterdir()) == []
    assert "removed 1 session(s) and 1 lock file(s)" in report.summary()


async def test_age_is_the_newest_sign_of_life(tmp_path: Path) -> None:
    recent_update = fake_session(tmp_path, "s-recent-update", 30 * DAY, updated_at=iso(time.time() - 3600))
    fake_session(tmp_path, "s-garbage", 30 * DAY, updated_at="not a date")
    fresh_events = fake_session(tmp_path, "s-fresh-events", 30 * DAY)
    (fresh_events / "events.jsonl").write_text('{"type":"user.message"}\n')  # a turn just landed
    assert last_activity(recent_update) == pytest.approx(time.time() - 3600, abs=5)
    report = await Janitor(tmp_path, WEEK).run()
    items = by_name(report)
    assert items["session:s-recent-update"][0] == "kept"
    assert items["session:s-garbage"][0] == "removed", "an unparseable updated_at falls back to file times"
    assert items["session:s-fresh-events"][0] == "kept"


async def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    old = fake_session(tmp_path, "old-2", 8 * DAY)
    report = await Janitor(tmp_path, WEEK, dry_run=True).run()
    assert by_name(report)["session:old-2"][0] == "would-remove"
    assert old.exists() and (tmp_path / LOCKS_DIR / "old-2.lock").exists()
    assert "would remove 1 session(s)" in report.summary()


async def test_orphan_locks_go_after_a_grace_period(tmp_path: Path) -> None:
    locks = tmp_path / LOCKS_DIR
    locks.mkdir()
    for name, age in (("gone-old", 3600), ("gone-new", 10)):
        (locks / f"{name}.lock").touch()
        os.utime(locks / f"{name}.lock", (time.time() - age, time.time() - age))
    fake_session(tmp_path, "alive", 60, lock=True)
    os.utime(locks / "alive.lock", (0, 0))  # old, but its session exists: not an orphan
    report = await Janitor(tmp_path, WEEK, lock_grace_seconds=600).run()
    items = by_name(report)
    assert items["lock:gone-old"][0] == "removed"
    assert items["lock:gone-new"][0] == "kept"
    assert "lock:alive" not in items
    assert sorted(p.name for p in locks.iterdir()) == ["alive.lock", "gone-new.lock"]


async def test_a_held_in_use_lock_means_attached(tmp_path: Path) -> None:
    d = fake_session(tmp_path, "held", 8 * DAY)
    hold = d / "inuse.4242.hold"
    hold.touch()
    age_session(d, 8 * DAY)
    fd = os.open(hold, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a CLI does while the session is attached
        report = await Janitor(tmp_path, WEEK).run()
        action, reason = by_name(report)["session:held"]
        assert action == "skipped" and "in-use lock" in reason and d.exists()
    finally:
        os.close(fd)  # the CLI exits (or crashes): its lock goes with it
    report = await Janitor(tmp_path, WEEK).run()
    assert by_name(report)["session:held"][0] == "removed" and not d.exists()


async def test_leftovers_of_an_interrupted_run_are_emptied(tmp_path: Path) -> None:
    leftover = tmp_path / TRASH_DIR / "half-deleted.1234abcd"
    (leftover / "files").mkdir(parents=True)
    report = await Janitor(tmp_path, WEEK).run()
    assert report.ok and not leftover.exists()


async def test_refuses_a_short_ttl_and_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 60"):
        Janitor(tmp_path, 10)
    report = await Janitor(tmp_path / "nope", WEEK).run()
    assert not report.ok and "not a directory" in (report.fatal or "")


def test_redis_url_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "url"
    f.write_text("redis://:pw@127.0.0.1:6390/0\n")
    assert read_redis_url(str(f), {}) == "redis://:pw@127.0.0.1:6390/0"
    assert read_redis_url(None, {"COPILOT_FLEET_REDIS_URL": "rediss://h:1/0"}) == "rediss://h:1/0"
    assert read_redis_url(None, {}) is None
    f.write_text("http://nope")
    with pytest.raises(ValueError, match="redis://"):
        read_redis_url(str(f), {})


# -- with real CLIs and the lease store ------------------------------------------------------------------------


@pytest.mark.fleet
async def test_attached_sessions_survive_and_detached_ones_go(ops_fleet: OpsFleet) -> None:
    state = ops_fleet.shared_state
    target = ops_fleet.target()
    async with ClientPool() as pool, FleetClient(target, user="jan", pool=pool) as fleet, \
            LeaseManager.from_url(ops_fleet.redis.url) as leases:
        session = await fleet.create_session("janitor", **ops_fleet.small)
        assert "remembered" in (await session.reply("remember: jan") or "")
        sid = session.session_id
        age_session(state / sid, 30 * DAY)

        # Attached: the CLI holds its in-use lock (and the client its lease).
        unleased = await Janitor(state, WEEK).run()
        action, reason = by_name(unleased)[f"session:{sid}"]
        assert action == "skipped" and "in-use lock" in reason
        leased = await Janitor(state, WEEK, leases=leases).run()
        action, reason = by_name(leased)[f"session:{sid}"]
        assert action == "skipped" and "lease" in reason
        assert "remembered" in (await session.reply("remember: still-here") or ""), "the session was not disturbed"
        await session.close()

        # Resumed but no turn yet: the CLI has written nothing, so only the lease shows it is attached.
        again = await fleet.resume_session(sid, **ops_fleet.small)
        age_session(state / sid, 30 * DAY)
        blind = await Janitor(state, WEEK, dry_run=True).run()
        assert by_name(blind)[f"session:{sid}"][0] == "would-remove", "why shared fleets need the lease store"
        guarded = await Janitor(state, WEEK, leases=leases).run()
        assert by_name(guarded)[f"session:{sid}"][0] == "skipped"
        await again.close()

        # Detached and idle beyond the TTL: removed with its lock file; the fleet no longer has it.
        age_session(state / sid, 30 * DAY)
        report = await Janitor(state, WEEK, leases=leases).run()
        assert by_name(report)[f"session:{sid}"][0] == "removed", report.lines(verbose=True)
        assert not (state / sid).exists() and not (state / LOCKS_DIR / f"{sid}.lock").exists()
        assert sid not in {m.session_id for m in await fleet.list_sessions()}
        with pytest.raises(SessionNotFound):
            await fleet.resume_session(sid, **ops_fleet.small)


@pytest.mark.fleet
async def test_lease_store_down_deletes_nothing(ops_fleet: OpsFleet, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    old = fake_session(tmp_path, "old-3", 8 * DAY)
    async with LeaseManager.from_url(f"redis://:x@127.0.0.1:{port}/0", timeout=0.5) as dead:
        report = await Janitor(tmp_path, WEEK, leases=dead).run()
    assert not report.ok and "lease store" in (report.fatal or "")
    assert old.exists()


def _janitor(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COPILOT_FLEET_REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "copilot_fleet.pod.janitor", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.fleet
def test_command_line(ops_fleet: OpsFleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    fake_session(state, "cli-old", 8 * DAY)
    fake_session(state, "cli-young", DAY)
    url_file = tmp_path / "redis-url"
    url_file.write_text(ops_fleet.redis.url)

    dry = _janitor("--session-state", str(state), "--ttl", "7d", "--redis-url-file", str(url_file), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would-remove session cli-old" in dry.stdout and (state / "cli-old").exists()
    assert "lease check on" in dry.stdout

    real = _janitor("--session-state", str(state), "--ttl", "7d", "--redis-url-file", str(url_file), "--json")
    assert real.returncode == 0, real.stdout + real.stderr
    doc = json.loads(real.stdout)
    assert doc["ok"] and {i["name"] for i in doc["items"] if i["action"] == "removed"} == {"cli-old"}
    assert not (state / "cli-old").exists() and (state / "cli-young").exists()

    bad_ttl = _janitor("--session-state", str(state), "--ttl", "10s")
    assert bad_ttl.returncode == 2 and "at least 60 seconds" in bad_ttl.stderr
    need = _janitor("--session-state", str(state), "--ttl", "7d", "--require-leases")
    assert need.returncode == 2 and "no lease store" in need.stderr
    dead_url = tmp_path / "dead"
    dead_url.write_text("redis://:x@127.0.0.1:1/0")
    down = _janitor("--session-state", str(state), "--ttl", "1d", "--redis-url-file", str(dead_url))
    assert down.returncode == 1 and "STOPPED" in down.stdout and (state / "cli-young").exists()


# -- links planted by a tool run: nothing outside the directory is ever touched ---------------------------------


def canary(tmp_path: Path) -> Path:
    """A directory outside the session volume that a planted link points at."""
    outside = tmp_path / "outside"
    (outside / "nested").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me")
    (outside / "nested" / "deep.txt").write_text("keep me too")
    (outside / "x.lock").write_text("")  # looks like a lock file the janitor would remove
    os.utime(outside / "x.lock", (0, 0))
    return outside


def untouched(outside: Path) -> bool:
    return ((outside / "precious.txt").read_text() == "keep me"
            and (outside / "nested" / "deep.txt").read_text() == "keep me too"
            and (outside / "x.lock").exists())


@pytest.mark.parametrize("lease_store", [False, True], ids=["no-leases", "leases"])
async def test_a_trash_link_to_outside_is_refused_and_nothing_outside_is_deleted(
        tmp_path: Path, lease_store: bool, request: pytest.FixtureRequest) -> None:
    outside = canary(tmp_path)
    state = tmp_path / "session-state"
    state.mkdir()
    old = fake_session(state, "old-1", 8 * DAY)
    (state / TRASH_DIR).symlink_to(outside)  # what `ln -s <anywhere> .copilot-fleet-janitor` in a tool run does
    if lease_store:
        fleet: OpsFleet = request.getfixturevalue("ops_fleet")
        async with LeaseManager.from_url(fleet.redis.url) as leases:
            report = await Janitor(state, WEEK, leases=leases).run()
    else:
        report = await Janitor(state, WEEK).run()
    assert untouched(outside)
    assert not report.ok  # an operator must hear of a planted link
    errors = [i for i in report.items if i.action == "error"]
    assert errors and all(TRASH_DIR in i.reason and "symbolic link" in i.reason for i in errors)
    assert str(outside) in errors[0].reason
    # The link itself is gone and the old session still went, through a real trash directory of the janitor's.
    assert not (state / TRASH_DIR).is_symlink() and (state / TRASH_DIR).is_dir()
    assert not old.exists()
    assert by_name(report)["session:old-1"][0] == "removed"


async def test_a_trash_link_to_the_state_dir_deletes_no_session(tmp_path: Path) -> None:
    state = tmp_path / "session-state"
    state.mkdir()
    young = fake_session(state, "young-1", 1 * DAY)
    also_young = fake_session(state, "young-2", 2 * DAY)
    (state / TRASH_DIR).symlink_to(".")
    report = await Janitor(state, WEEK).run()
    assert young.is_dir() and also_young.is_dir()
    assert (young / "events.jsonl").exists() and (state / LOCKS_DIR / "young-1.lock").exists()
    assert by_name(report)["session:young-1"][0] == "kept"
    assert report.count("removed") == 0 and not report.ok


async def test_a_locks_dir_link_is_not_followed(tmp_path: Path) -> None:
    outside = canary(tmp_path)
    state = tmp_path / "session-state"
    state.mkdir()
    (state / LOCKS_DIR).symlink_to(outside)
    report = await Janitor(state, WEEK, lock_grace_seconds=60).run()
    assert untouched(outside)
    assert not report.ok and any(LOCKS_DIR in i.reason for i in report.items if i.action == "error")


async def test_links_inside_trash_and_sessions_are_removed_as_links(tmp_path: Path) -> None:
    outside = canary(tmp_path)
    state = tmp_path / "session-state"
    state.mkdir()
    (state / TRASH_DIR).mkdir()
    (state / TRASH_DIR / "leftover").symlink_to(outside)  # as if an earlier run had been interrupted
    old = fake_session(state, "old-1", 8 * DAY)
    (old / "escape").symlink_to(outside)
    (old / "files").mkdir()
    (old / "files" / "deeper").symlink_to(outside / "nested")
    age_session(old, 8 * DAY)
    report = await Janitor(state, WEEK).run()
    assert report.ok, report.lines()
    assert untouched(outside) and not old.exists()
    assert list((state / TRASH_DIR).iterdir()) == []


async def test_a_session_swapped_for_a_link_while_it_is_removed_is_removed_as_a_link(tmp_path: Path) -> None:
    """The race: between the janitor's checks and its rename, a tool run replaces an old session directory with a
    link to elsewhere. The rename moves the link, the removal unlinks it; nothing it points to is touched."""
    outside = canary(tmp_path)
    state = tmp_path / "session-state"
    state.mkdir()
    fake_session(state, "old-1", 8 * DAY)

    class SwappingJanitor(Janitor):
        def _delete_dir(self, sid: str, trash_fd: int) -> None:
            import shutil
            shutil.rmtree(state / sid)
            (state / sid).symlink_to(outside)
            super()._delete_dir(sid, trash_fd)

    report = await SwappingJanitor(state, WEEK).run()
    assert untouched(outside)
    assert not (state / "old-1").exists() and not (state / "old-1").is_symlink()
    assert by_name(report)["session:old-1"][0] == "removed"


async def test_a_planted_fifo_in_a_session_does_not_hang_the_janitor(tmp_path: Path) -> None:
    state = tmp_path / "session-state"
    state.mkdir()
    old = fake_session(state, "old-1", 8 * DAY)
    (old / "workspace.yaml").unlink()
    os.mkfifo(old / "workspace.yaml")  # reading it would block until a writer opens it: never
    then = time.time() - 8 * DAY
    for path in [*old.iterdir(), old]:
        os.utime(path, (then, then))
    report = await Janitor(state, WEEK).run()
    assert by_name(report)["session:old-1"][0] == "removed" and not old.exists()
