"""Redis restarted under active sessions (AOF, `appendfsync everysec`), store mode beside volume mode: what a
session loses, what the application sees, and how long until turns work again.

In store mode Redis holds every session's files; in volume mode only the leases. Rounds alternate a crash
(SIGKILL) and a clean restart (SIGTERM: Redis writes and syncs its AOF before it exits). Per round, one session per
mode, each attached on its own server, takes a completed turn (`remember: <word>`) and starts a long one
(`sleep: 1 remember: <word>`); the moment both CLIs started them Redis is killed, and it stays down until both
turns have ended one way or the other (so their last writes meet the outage), then starts again from its AOF on
the same port. What each application saw is counted (the reply, or an error: it is clear when it names the session
and the store). Recovery: from Redis answering again until the session's next turn is answered (the application
sends it on the same attachment; if that fails it detaches, attaches again and retries, bounded). Then `recall`:
a completed word missing is a lost turn; the interrupted turn's word may be there or not. At the end every
history must be one chain.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

from copilot_fleet.client.ids import new_session_id
from faults.history import check_history
from faults.measure import ScenarioResult
from faults.sessions import recalled_words
from faults.store_app import Attached, StoreApp, TurnFailed
from faults.store_fleet import Mode, StoreFleet

Progress = Callable[[str], None]
MODES: tuple[Mode, ...] = ("store", "volume")
STEP_BOUND = 60.0  # how long a broken step may take to fail; each step returns on its event
RECOVERY_BOUND = 30.0


async def redis_restart(fleet: StoreFleet, *, rounds: int, budget: float,
                        progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("store-redis", "Store and volume mode: Redis restarted under active sessions",
                       run_unit="restarts")
    for mode in MODES:
        r.target(f"lost_turns ({mode})", max=0, meaning="completed turns missing after Redis came back")
        r.target(f"unclear_errors ({mode})", max=0,
                 meaning="turns that failed without naming the session and the store (or did not end at all)")
        r.target(f"not_recovered ({mode})", max=0,
                 meaning=f"sessions that took no turn within {RECOVERY_BOUND:.0f} s of Redis answering again")
        r.target(f"incoherent_histories ({mode})", max=0, meaning="events.jsonl that is not one chain at the end")
    deadline = time.monotonic() + budget
    async with StoreApp(fleet) as app:
        sids = {m: new_session_id("faults", f"redis-{m}") for m in MODES}
        required: dict[Mode, list[str]] = {m: [] for m in MODES}
        attached: dict[Mode, Attached] = {}
        try:
            for m in MODES:
                attached[m] = await app.attach(sids[m], fleet.of(m)[0], create=True)
            for k in range(rounds):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {k} restarts: the time budget of {budget:.0f} s ran out")
                    break
                crash = k % 2 == 0
                if not await _one_restart(fleet, app, attached, sids, required, k, crash, r):
                    r.failures += 1
                r.runs += 1
                progress(f"store-redis: restart {k + 1}/{rounds} ({'SIGKILL' if crash else 'SIGTERM'})")
        finally:
            if fleet.redis.proc is None or fleet.redis.proc.poll() is not None:
                fleet.start_redis()  # never leave the store down behind
            for a in attached.values():
                await a.detach()
            for m in MODES:
                events = Path(fleet.root) / f"{sids[m]}.events.jsonl"
                events.write_bytes(await app.events(sids[m], m))
                history = check_history(events, sids[m])
                if not r.check(f"{m}: history of {sids[m]} is one chain", history.coherent, history.describe()):
                    r.bump(f"incoherent_histories ({m})")
    return r.finish()


def _clear(text: str, session_id: str, mode: Mode) -> bool:
    if mode == "store":
        return session_id in text and "session store" in text
    return "lease" in text  # the volume mode's files do not depend on Redis; only its leases do


async def _one_restart(fleet: StoreFleet, app: StoreApp, attached: dict[Mode, Attached], sids: dict[Mode, str],
                       required: dict[Mode, list[str]], k: int, crash: bool, r: ScenarioResult) -> bool:
    ok = True
    for m, a in attached.items():
        word = f"{m}c{k}"
        await a.turn(f"remember: {word}")
        required[m].append(word)
    turns = {m: asyncio.ensure_future(a.turn(f"sleep: 1 remember: {m}i{k}")) for m, a in attached.items()}
    await asyncio.wait_for(asyncio.gather(*(a.turn_started.wait() for a in attached.values())), STEP_BOUND)
    down_at = time.monotonic()
    fleet.kill_redis(signal.SIGKILL if crash else signal.SIGTERM)
    how = "crash" if crash else "clean"
    outcomes = await asyncio.gather(*(asyncio.wait_for(t, STEP_BOUND) for t in turns.values()),
                                    return_exceptions=True)
    for m, outcome in zip(turns, outcomes, strict=True):
        if isinstance(outcome, TurnFailed):
            r.bump(f"turns_failed_during_outage ({m})")
            r.error(f"{m}: {type(outcome).__name__}")
            if not _clear(str(outcome), sids[m], m):
                r.bump(f"unclear_errors ({m})")
                r.check(f"{m} restart {k}: the failed turn names the session and the store", False, str(outcome))
                ok = False
            elif k < 2:  # one example of each kind of restart
                r.notes.append(f"{m}, {how}: the application saw: {str(outcome)[:400]}")
        elif isinstance(outcome, BaseException):
            r.error(f"{m}: {type(outcome).__name__}")
            r.bump(f"unclear_errors ({m})")
            r.check(f"{m} restart {k}: the turn under the outage ends with a reply or an error", False,
                    repr(outcome))
            ok = False
        else:
            r.bump(f"turns_answered_during_outage ({m})")
            required[m].append(f"{m}i{k}")  # the application saw it complete: it must stay
    start = time.monotonic()
    await asyncio.to_thread(fleet.start_redis)
    back_at = time.monotonic()
    r.time(f"redis_start ({how})", back_at - start, "start until redis-server answered again (AOF loaded)")
    r.time(f"outage ({how})", back_at - down_at, "Redis killed until it answered again (it stays down until the "
           "interrupted turns ended)")
    results = await asyncio.gather(*(_recover(fleet, app, attached, m, k, back_at, required, r) for m in attached))
    return ok and all(results)


async def _recover(fleet: StoreFleet, app: StoreApp, attached: dict[Mode, Attached], m: Mode, k: int,
                   back_at: float, required: dict[Mode, list[str]], r: ScenarioResult) -> bool:
    word = f"{m}a{k}"
    answered = False
    reattached = False
    while time.monotonic() < back_at + RECOVERY_BOUND and not answered:
        a = attached[m]
        try:
            await a.turn(f"remember: {word}", timeout=STEP_BOUND)
            answered = True
        except Exception as exc:  # noqa: BLE001 - the application's policy: attach again and retry
            r.error(f"{m} after: {type(exc).__name__}")
            await a.detach()
            reattached = True
            try:
                attached[m] = await app.attach(a.session_id, a.server, lease_wait=RECOVERY_BOUND)
            except Exception as again:  # noqa: BLE001
                r.error(f"{m} attach after: {type(again).__name__}")
                await asyncio.sleep(0.2)  # Redis answers but is not ready for this yet: try again shortly
    if not answered:
        r.bump(f"not_recovered ({m})")
        r.check(f"{m} restart {k}: a turn is answered after Redis came back", False, "none within the bound")
        return False
    r.time(f"recover ({m})", time.monotonic() - back_at, "Redis answering again until the session's next turn "
           "was answered")
    if reattached:
        r.bump(f"attached_again_to_recover ({m})")
    required[m].append(word)
    words = recalled_words(await attached[m].turn("recall")) or []
    missing = [w for w in required[m] if w not in words]
    r.bump(f"lost_turns ({m})", len(missing))
    if f"{m}i{k}" in words and f"{m}i{k}" not in required[m]:
        r.bump(f"failed_turn_kept ({m})")  # the CLI persisted it once the store was back
        required[m].append(f"{m}i{k}")
    return r.check(f"{m} restart {k}: every completed turn is recalled", not missing, f"missing {missing}")
