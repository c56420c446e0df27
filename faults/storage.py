"""The shared `session-state/` read-only or full: a clear error, and no partial session left behind.

How the fault is made: as root, permission bits do not stop writes, so `chmod 0500` proves nothing. The fleet runs
in a private mount namespace (see fleet.py); inside it, `session-state/` is covered by a read-only bind mount of
itself, or by a 1 MiB tmpfs that is then filled with a file until only N pages (4 KiB) are free. No other process
on the machine sees either mount, and both go away with the fleet.

What counts (checked after every fault, once the space is back or the mount is gone):
- a **ghost**: a session id the fleet offers (`FleetClient.list_sessions` shows it) that it cannot open
  (`resume_session` fails with SessionNotFound). Target 0: this is the "partial session the fleet would list as if
  valid".
- a **lost turn**: a turn the client saw complete whose `remember:` word the session no longer recalls. Target 0.
- **debris**: a directory a refused create left behind that the fleet neither lists nor resumes; harmless, counted,
  removed by `delete_session` (verified here) or by the janitor after the TTL.
- an **unclear error**: an operation that failed without naming the cause (read-only file system / no space left),
  or that never failed and never answered (a timeout). Target 0.
- **changed on disk** (read-only case): any difference in the tree between before and after. Target 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from copilot_fleet.client import ClientPool, FleetClient, FleetSession, SessionNotFound, is_storage_error
from copilot_fleet.sessiondir import EVENTS
from faults.fleet_under_test import FleetUnderTest
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import (
    SMALL,
    call_timeout,
    close_quietly,
    recalled_words,
    reply_watching,
    snapshot_tree,
    tree_changes,
)

Progress = Callable[[str], None]
PAGE = 4096


def fill(directory: Path, free_pages: int) -> int:
    """Write `.filler` into `directory` until only `free_pages` pages are free; returns the pages left free."""
    st = os.statvfs(directory)
    want = max(0, st.f_bavail - free_pages) * st.f_frsize
    chunk = b"\0" * (256 * 1024)
    with open(directory / ".filler", "wb") as f:
        written = 0
        while written < want:
            try:
                written += f.write(chunk[: min(len(chunk), want - written)])
                f.flush()
            except OSError:
                break
    return os.statvfs(directory).f_bavail


def user_dirs(state: Path, user: str) -> list[str]:
    prefix = f"u-{len(user)}-{user}-"
    try:
        return sorted(p.name for p in state.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


async def storage_faults(fleet: FleetUnderTest, *, free_pages: tuple[int, ...] = (0, 1, 2, 3, 4, 6),
                         reply_timeout: float = 10.0, progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("storage", "session-state read-only or full", run_unit="faults")
    r.target("ghosts", max=0, meaning="ids the fleet lists but cannot resume (a partial session)")
    r.target("lost_turns", max=0, meaning="turns the client saw complete that the session no longer recalls")
    r.target("unclear_errors", max=0, meaning="failures that do not name the storage problem, or no answer at all")
    r.target("changed_on_disk", max=0, meaning="paths that changed under the read-only mount")
    r.target("incoherent_histories", max=0, meaning="pre-existing sessions whose events.jsonl is not one chain")
    if not fleet.private_mounts:
        r.skipped = f"no private mount namespace for the fleet: {fleet.private_mounts_reason}"
        return r.finish()
    state = fleet.session_state
    async with ClientPool() as pool:
        fc = FleetClient(fleet.target, user="storage", pool=pool, call_timeout=call_timeout())
        try:
            await _read_only(fleet, fc, state, reply_timeout, r)
            progress("storage: read-only done")
            await _full(fleet, fc, state, free_pages, reply_timeout, r, progress)
        finally:
            await fc.aclose()
            for _ in range(3):  # whatever is still mounted over session-state comes off
                if fleet.in_namespace("umount", "-l", str(state), check=False).returncode != 0:
                    break
    return r.finish()


async def _outcome(r: ScenarioResult, what: str, call: Callable[[], Awaitable[object]], timeout: float) -> object:
    """Run one operation under the fault; classify its failure as clear or not. Returns the result or the error."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(call(), timeout)
    except Exception as exc:  # noqa: BLE001
        r.error(exc)
        r.time("error", time.monotonic() - started, "until an operation under the fault failed")
        if not is_storage_error(exc):  # a bare timeout names nothing; SessionStateUnwritable names the cause
            r.bump("unclear_errors")
            r.check(f"{what} fails naming the storage problem", False, f"{type(exc).__name__}: {str(exc)[:200]}")
        else:
            r.bump("clear_errors")
        return exc
    return result


async def _read_only(fleet: FleetUnderTest, fc: FleetClient, state: Path, reply_timeout: float,
                     r: ScenarioResult) -> None:
    s = await fc.create_session("before-ro", **SMALL)
    sid = s.session_id
    await reply_watching(s, "remember: beforero")
    await s.close()
    before = snapshot_tree(state)
    fleet.in_namespace("mount", "--bind", str(state), str(state))
    fleet.in_namespace("mount", "-o", "remount,bind,ro", str(state))
    r.runs += 1
    handle: FleetSession | None = None
    try:
        created = await _outcome(r, "create with read-only session-state",
                                 lambda: fc.create_session("during-ro", **SMALL), reply_timeout)
        if isinstance(created, FleetSession):
            r.bump("created_while_read_only")
            await close_quietly(created)
        resumed = await _outcome(r, "resume with read-only session-state",
                                 lambda: fc.resume_session(sid, **SMALL), reply_timeout)
        if isinstance(resumed, FleetSession):
            handle = resumed
            r.bump("resumed_while_read_only")
            await _outcome(r, "a turn with read-only session-state",
                           lambda: handle.reply("remember: duringro", timeout=reply_timeout), reply_timeout + 5)
        listed = await _outcome(r, "list with read-only session-state", fc.list_sessions, reply_timeout)
        r.check("listing still works while read-only", isinstance(listed, list), repr(listed)[:200])
    finally:
        await close_quietly(handle)
        fleet.in_namespace("umount", "-l", str(state))
    changes = tree_changes(before, snapshot_tree(state))
    r.bump("changed_on_disk", len(changes))
    r.check("nothing changed on disk under the read-only mount", not changes, "; ".join(changes[:10]))
    await _no_ghosts(fc, r, "read-only")
    again = await fc.resume_session(sid, wait=5, **SMALL)
    words = recalled_words(await reply_watching(again, "recall")) or []
    await again.close()
    if "beforero" not in words:
        r.bump("lost_turns")
    history = check_history(state / sid / EVENTS, sid)
    if not r.check(f"{sid} is one history after the read-only episode", history.coherent, history.describe()):
        r.bump("incoherent_histories")
    await fc.delete_session(sid)


async def _full(fleet: FleetUnderTest, fc: FleetClient, state: Path, free_pages: tuple[int, ...],
                reply_timeout: float, r: ScenarioResult, progress: Progress) -> None:
    owner = state.stat()  # the replicas' own user when the fleet was started as root
    fleet.in_namespace("mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={owner.st_uid},gid={owner.st_gid}",
                       "copilot-fleet-faults", str(state))
    view = fleet.view(state)
    old = await fc.create_session("before-full", **SMALL)
    old_sid = old.session_id
    old_words = ["beforefull"]
    await reply_watching(old, "remember: beforefull")
    await old.close()
    try:
        for n, pages in enumerate(free_pages):
            r.runs += 1
            left = await asyncio.to_thread(fill, view, pages)
            r.bump(f"run_{n}_free_pages", left)
            known_before = set(user_dirs(view, fc.user))
            # a new session and its first turn
            created = await _outcome(r, f"create with {left} free page(s)",
                                     functools.partial(fc.create_session, f"full{n}", **SMALL), reply_timeout)
            new_words: dict[str, str] = {}
            if isinstance(created, FleetSession):
                word = f"new{n}"
                answer = await _outcome(r, f"first turn with {left} free page(s)",
                                        functools.partial(reply_watching, created, f"remember: {word}",
                                                          timeout=reply_timeout),
                                        reply_timeout + 5)
                if isinstance(answer, str):
                    new_words[created.session_id] = word
                    r.bump("turns_completed_while_full")
                await close_quietly(created)
            # a turn on a session that was there before the disk filled up
            resumed = await _outcome(r, f"resume with {left} free page(s)",
                                     lambda: fc.resume_session(old_sid, wait=5, **SMALL), reply_timeout)
            if isinstance(resumed, FleetSession):
                word = f"old{n}"
                answer = await _outcome(r, f"turn of an existing session with {left} free page(s)",
                                        functools.partial(reply_watching, resumed, f"remember: {word}",
                                                          timeout=reply_timeout),
                                        reply_timeout + 5)
                if isinstance(answer, str):
                    old_words.append(word)
                await close_quietly(resumed)
            (view / ".filler").unlink(missing_ok=True)
            await asyncio.sleep(0.5)  # let the CLI finish whatever it was flushing
            # the space is back: what does the fleet offer now?
            ghosts = await _no_ghosts(fc, r, f"{left} free page(s)", expect=new_words)
            new_ids = [d for d in user_dirs(view, fc.user) if d not in known_before and d != old_sid]
            listed = {m.session_id for m in await fc.list_sessions()}
            debris = [d for d in new_ids if d not in listed and d not in ghosts]
            r.bump("debris_dirs", len(debris))
            for d in new_ids:
                with contextlib.suppress(SessionNotFound):
                    await fc.delete_session(d, wait=5)
            leftover = [d for d in new_ids if (view / d).exists()]
            r.check(f"delete_session removes what run {n} left behind", not leftover, str(leftover))
            again = await fc.resume_session(old_sid, wait=5, **SMALL)
            words = recalled_words(await reply_watching(again, "recall")) or []
            await again.close()
            missing = [w for w in old_words if w not in words]
            r.bump("lost_turns", len(missing))
            r.check(f"run {n}: the older session recalls all its completed turns", not missing, f"missing {missing}")
            history = check_history(view / old_sid / EVENTS, old_sid)
            if not r.check(f"run {n}: {old_sid} is one history", history.coherent, history.describe()):
                r.bump("incoherent_histories")
            progress(f"storage: full with {left} free page(s) done")
    finally:
        (view / ".filler").unlink(missing_ok=True)
        fleet.in_namespace("umount", "-l", str(state), check=False)


async def _no_ghosts(fc: FleetClient, r: ScenarioResult, when: str, expect: dict[str, str] | None = None) -> set[str]:
    """Every listed session must resume; sessions that completed a turn must recall it. Returns the ghosts."""
    ghosts: set[str] = set()
    for meta in await fc.list_sessions():
        sid = meta.session_id
        try:
            s = await fc.resume_session(sid, wait=5, **SMALL)
        except SessionNotFound:
            ghosts.add(sid)
            r.bump("ghosts")
            r.check(f"{when}: listed session {sid} can be resumed", False, "SessionNotFound")
            continue
        try:
            if expect and sid in expect:
                words = recalled_words(await reply_watching(s, "recall")) or []
                if expect[sid] not in words:
                    r.bump("lost_turns")
                    r.check(f"{when}: {sid} recalls its completed turn", False, str(words))
        finally:
            await close_quietly(s)
    return ghosts
