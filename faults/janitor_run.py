"""The janitor against a live fleet: it removes only sessions past their TTL and their leftover lock files, never
an attached one.

Per round, one user's sessions in every state the janitor must tell apart, all made through the fleet client:
attached with a turn, resumed without a turn yet (only the lease shows it is in use), detached and idle past the
TTL, detached and recent; plus an orphan lock file past the grace period and a recent one. Ages are made by
setting file times and `updated_at` back 30 days. Then one janitor pass with the lease store, as the CronJob runs
it, and the outcome per session is checked against what the fleet can still do with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from copilot_fleet.client import ClientPool, FleetClient, LeaseManager, SessionNotFound
from copilot_fleet.pod.janitor import DEFAULT_LOCK_GRACE, Janitor, last_activity
from copilot_fleet.sessiondir import LOCKS_DIR, WORKSPACE, is_session_id
from faults.fleet_under_test import FleetUnderTest
from faults.measure import ScenarioResult
from faults.sessions import SMALL, call_timeout, close_quietly, recalled_words, reply_watching

Progress = Callable[[str], None]
DAY = 86400
TTL = 7 * DAY


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def make_old(session_dir: Path, seconds: float) -> None:
    """Make a session look untouched for `seconds`: file times and workspace.yaml's `updated_at`."""
    then = time.time() - seconds
    workspace = session_dir / WORKSPACE
    if workspace.exists():
        lines = [f"updated_at: {_iso(then)}" if line.startswith("updated_at:") else line
                 for line in workspace.read_text().splitlines()]
        workspace.write_text("\n".join(lines) + "\n")
    for path in [*session_dir.iterdir(), session_dir]:
        os.utime(path, (then, then), follow_symlinks=False)


def _eligible(state: Path) -> set[tuple[str, str]]:
    """What a pass may remove, judged before it runs: sessions idle past the TTL (attached ones are excluded by the
    checks above), lock files past the grace period whose session is gone or itself due."""
    now = time.time()
    due: set[tuple[str, str]] = set()
    for entry in state.iterdir():
        if entry.is_dir() and is_session_id(entry.name):
            newest = last_activity(entry)
            if newest is not None and now - newest >= TTL:
                due.add(("session", entry.name))
    locks = state / LOCKS_DIR
    for lock in locks.glob("*.lock") if locks.is_dir() else []:
        sid = lock.name[: -len(".lock")]
        if ("session", sid) in due or not (state / sid).exists() and now - lock.stat().st_mtime >= DEFAULT_LOCK_GRACE:
            due.add(("lock", sid))
    return due


async def janitor_live(fleet: FleetUnderTest, *, rounds: int, budget: float,
                       progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("janitor", "The janitor on a live fleet", run_unit="janitor passes")
    r.target("removed_wrongly", max=0, meaning="attached or recent sessions (or live locks) the janitor removed")
    r.target("kept_wrongly", max=0, meaning="expired, detached sessions or orphan locks the janitor left")
    r.target("attached_disturbed", max=0, meaning="attached sessions that failed their next turn after the pass")
    state = fleet.session_state
    assert fleet.target.redis_url is not None
    deadline = time.monotonic() + budget
    async with ClientPool() as pool, LeaseManager.from_url(fleet.target.redis_url.get_secret_value()) as leases:
        for k in range(rounds):
            if time.monotonic() > deadline:
                r.notes.append(f"stopped after {k} rounds: the time budget ran out")
                break
            fc = FleetClient(fleet.target, user=f"jan{k}", pool=pool, call_timeout=call_timeout())
            open_handles = []
            failed_before = len(r.failed_checks)
            try:
                async def made(purpose: str, fc: FleetClient = fc, k: int = k) -> str:
                    s = await fc.create_session(purpose, **SMALL)
                    await reply_watching(s, f"remember: {purpose}{k}")
                    await s.close()
                    return s.session_id

                attached = await fc.create_session("attached", **SMALL)
                open_handles.append(attached)
                await reply_watching(attached, f"remember: attached{k}")
                resumed_sid = await made("resumed")
                resumed = await fc.resume_session(resumed_sid, **SMALL)  # attached, no turn yet
                open_handles.append(resumed)
                expired = await made("expired")
                recent = await made("recent")
                for sid in (attached.session_id, resumed_sid, expired):
                    make_old(state / sid, 30 * DAY)
                locks = state / LOCKS_DIR
                locks.mkdir(exist_ok=True)
                orphan, fresh = locks / f"orphan-{k}.lock", locks / f"fresh-{k}.lock"
                orphan.touch()
                fresh.touch()
                old = time.time() - DAY
                os.utime(orphan, (old, old))

                eligible = _eligible(state)
                started = time.monotonic()
                report = await Janitor(state, TTL, leases=leases).run()
                r.time("pass", time.monotonic() - started, "one janitor pass over the shared session-state")
                r.runs += 1
                actions: dict[tuple[str, str], str] = {(i.kind, i.name): i.action for i in report.items}
                r.check(f"round {k}: the pass finished", report.fatal is None, str(report.fatal))

                def expect(kind: str, name: str, wanted: str, gone: bool, *, k: int = k, locks: Path = locks,
                           actions: dict[tuple[str, str], str] = actions) -> None:
                    got = actions.get((kind, name), "not seen")
                    path = (state / name) if kind == "session" else (locks / f"{name}.lock")
                    exists = path.exists()
                    ok = got == wanted and exists != gone
                    if not ok:
                        r.bump("removed_wrongly" if not exists and not gone else "kept_wrongly")
                    r.check(f"round {k}: {kind} {name} {wanted}", ok, f"action {got}, exists {exists}")

                expect("session", attached.session_id, "skipped", gone=False)
                expect("session", resumed_sid, "skipped", gone=False)
                expect("session", expired, "removed", gone=True)
                expect("session", recent, "kept", gone=False)
                expect("lock", f"orphan-{k}", "removed", gone=True)
                expect("lock", f"fresh-{k}", "kept", gone=False)
                r.check(f"round {k}: the expired session's lock file went with it",
                        not (locks / f"{expired}.lock").exists())
                r.bump("removed", report.count("removed"))
                for item in report.items:  # anything else it removed (earlier runs' leftovers) must have been due
                    if item.action == "removed" and (item.kind, item.name) not in eligible:
                        r.bump("removed_wrongly")
                        r.check(f"round {k}: {item.kind} {item.name} was due for removal", False, item.reason)
                r.bump("skipped_attached", report.count("skipped"))

                # What the fleet can still do with each.
                for handle, word in ((attached, f"attached{k}"), (resumed, f"resumed{k}")):
                    try:
                        words = recalled_words(await reply_watching(handle, "recall")) or []
                        if word not in words:
                            raise AssertionError(f"recalled {words}")
                    except Exception as exc:  # noqa: BLE001
                        r.bump("attached_disturbed")
                        r.check(f"round {k}: {handle.session_id} works after the pass", False, repr(exc))
                try:
                    await fc.resume_session(expired, **SMALL)
                    r.check(f"round {k}: the removed session is gone for the fleet", False, "it resumed")
                except SessionNotFound:
                    pass
                listed = {m.session_id for m in await fc.list_sessions()}
                r.check(f"round {k}: the removed session is not listed", expired not in listed)
                s = await fc.resume_session(recent, **SMALL)
                words = recalled_words(await reply_watching(s, "recall")) or []
                await s.close()
                r.check(f"round {k}: the recent session keeps its history", f"recent{k}" in words, str(words))
                fresh.unlink(missing_ok=True)
                for sid in (attached.session_id, resumed_sid, recent):
                    for h in open_handles:
                        if h.session_id == sid:
                            await close_quietly(h)
                    await fc.delete_session(sid, wait=5)
                progress(f"janitor: round {k + 1}/{rounds}")
            except Exception as exc:  # noqa: BLE001
                r.error(exc)
                r.check(f"round {k} ran", False, repr(exc))
            finally:
                for h in open_handles:
                    await close_quietly(h)
                await fc.aclose()
            if len(r.failed_checks) > failed_before:
                r.failures += 1
    return r.finish()
