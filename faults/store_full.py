"""The store full: Redis at its `maxmemory` with `maxmemory-policy noeviction` (store mode).

Per round: a session attached on a server takes a completed turn (`remember: <word>`). Then Redis is filled with
ballast keys (outside the store's keys) until it refuses even a 16-byte SET, and `maxmemory` is lowered to 256 KiB
below what it then uses, so that client buffers coming and going cannot let a small write slip through between two
refusals (at the very edge of full, some writes pass and some fail; here every write must fail). While full:
- the session's next turn must fail with an error naming the session and the cause (`maxmemory`);
- a new session must be refused before anything is created: the lease cannot be taken (LeaseUnavailable naming
  the lease store and `maxmemory`).
Then the ballast is deleted and `maxmemory` set back: the time until the session's next turn is answered (on the
same attachment; if that fails, after attaching again) is how long writes take to resume. Finally the session is
attached on another server and `recall` must list every completed word (nothing acknowledged lost); the word of the
turn that failed may be there (the CLI keeps events it could not write and writes them with its next write) or
not. Every history must be one chain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import redis

from copilot_fleet.client.errors import LeaseUnavailable
from copilot_fleet.client.ids import new_session_id
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import recalled_words
from faults.store_app import Attached, StoreApp, TurnFailed
from faults.store_fleet import Server, StoreFleet

Progress = Callable[[str], None]
BALLAST = "faults:ballast:"
MARGIN = 256 * 1024
HEADROOM = 4 * 1024 * 1024  # maxmemory starts this far above what Redis uses; the ballast fills it
MAX_BALLAST_KEYS = 20_000
RESUME_BOUND = 30.0


def fill(admin: redis.Redis, headroom: int = HEADROOM) -> int:
    """Fill Redis to its maxmemory with ballast keys, then leave it a margin below what it uses. Keys written."""
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used + headroom)
    n = 0
    for size in (65536, 4096, 256, 16):  # smaller and smaller, until even the smallest SET is refused
        while n < MAX_BALLAST_KEYS:
            try:
                admin.set(f"{BALLAST}{n}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            n += 1
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - MARGIN)
    return n


def free(admin: redis.Redis, keys: int) -> None:
    for start in range(0, keys, 1000):
        admin.delete(*[f"{BALLAST}{i}" for i in range(start, min(keys, start + 1000))])
    admin.config_set("maxmemory", 0)


async def store_full(fleet: StoreFleet, *, rounds: int, budget: float,
                     progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("store-full", "Store mode: Redis full (maxmemory, noeviction)", run_unit="rounds")
    r.target("turns_ok_while_full", max=0, meaning="turns answered while no write could be stored")
    r.target("unclear_errors", max=0, meaning="refusals that did not name the session (or the lease store) and "
             "maxmemory")
    r.target("attached_while_full", max=0, meaning="new sessions that attached while the store was full")
    r.target("lost_turns", max=0, meaning="completed turns missing after space was freed")
    r.target("not_resumed", max=0, meaning=f"sessions whose writes did not resume within {RESUME_BOUND:.0f} s "
             "of freeing space")
    r.target("incoherent_histories", max=0, meaning="events.jsonl that is not one chain")
    deadline = time.monotonic() + budget
    admin = fleet.admin()
    store = fleet.of("store")
    try:
        async with StoreApp(fleet) as app:
            for k in range(rounds):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {k} rounds: the time budget of {budget:.0f} s ran out")
                    break
                r.runs += 1
                if not await _one_round(fleet, app, admin, store[k % len(store)], store[(k + 1) % len(store)], k,
                                        r):
                    r.failures += 1
                progress(f"store-full: round {k + 1}/{rounds}")
    finally:
        if admin.exists(f"{BALLAST}0"):
            free(admin, MAX_BALLAST_KEYS)
        admin.config_set("maxmemory", 0)
        admin.close()
    return r.finish()


async def _one_round(fleet: StoreFleet, app: StoreApp, admin: redis.Redis, server: Server, other: Server, k: int,
                     r: ScenarioResult) -> bool:
    sid = new_session_id("faults", f"full{k}")
    required: list[str] = []
    ok = True
    a: Attached = await app.attach(sid, server, create=True)
    try:
        await a.turn(f"remember: before{k}")
        required.append(f"before{k}")
        keys = await asyncio.to_thread(fill, admin)
        r.bump("ballast_keys", keys)
        full_at = time.monotonic()
        try:
            await a.turn(f"remember: full{k}")
        except TurnFailed as exc:
            r.time("refusal", time.monotonic() - full_at, "a turn on the full store until it failed")
            r.error(exc)
            text = str(exc)
            if sid in text and "maxmemory" in text:
                r.bump("clear_errors")
                if k == 0:
                    r.notes.append(f"the application saw: {text[:400]}")
            else:
                r.bump("unclear_errors")
                r.check(f"round {k}: the failed turn names the session and maxmemory", False, text[:400])
                ok = False
        else:
            r.bump("turns_ok_while_full")
            required.append(f"full{k}")
            ok = False
        newcomer = new_session_id("faults", f"fullnew{k}")
        try:
            b = await app.attach(newcomer, other, create=True, lease_wait=0)
        except LeaseUnavailable as exc:
            r.error(exc)
            if "maxmemory" in str(exc) and newcomer in str(exc):
                r.bump("clear_errors")
            else:
                r.bump("unclear_errors")
                r.check(f"round {k}: the refused attach names the session and maxmemory", False, str(exc)[:400])
                ok = False
        else:
            r.bump("attached_while_full")
            await b.detach()
            ok = False
        freed_at = time.monotonic()
        await asyncio.to_thread(free, admin, keys)
        resumed = False
        while not resumed and time.monotonic() < freed_at + RESUME_BOUND:
            try:
                await a.turn(f"remember: after{k}")
                resumed = True
            except Exception as exc:  # noqa: BLE001 - the application's policy: attach again and retry
                r.error(f"after: {type(exc).__name__}")
                r.bump("attached_again_to_resume")
                await a.detach()
                a = await app.attach(sid, server, lease_wait=RESUME_BOUND)
        if not resumed:
            r.bump("not_resumed")
            return False
        r.time("writes_resume", time.monotonic() - freed_at, "space freed until the session's next turn was "
               "answered")
        required.append(f"after{k}")
    finally:
        await a.detach()
    c = await app.attach(sid, other)
    try:
        words = recalled_words(await c.turn("recall")) or []
    finally:
        await c.detach()
    missing = [w for w in required if w not in words]
    r.bump("lost_turns", len(missing))
    if f"full{k}" in words and f"full{k}" not in required:
        r.bump("failed_turn_kept")
    events = Path(fleet.root) / f"{sid}.events.jsonl"
    events.write_bytes(await app.events(sid, "store"))
    history = check_history(events, sid)
    if not r.check(f"round {k}: history of {sid} is one chain", history.coherent, history.describe()):
        r.bump("incoherent_histories")
        ok = False
    return r.check(f"round {k}: every completed turn is recalled", not missing, f"missing {missing}") and ok
