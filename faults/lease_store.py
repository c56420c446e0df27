"""Redis (the lease store) goes away while sessions are active: nothing attaches (fail closed), a lease held from
before is not silently assumed, and service comes back when Redis does.

Two kinds of outage, alternating: Redis stopped through supervisord (connections refused) and Redis frozen with
SIGSTOP (connections hang until the client's timeout). Per outage: a holder attaches a session (short lease TTL)
and takes a turn; the outage starts; newcomers try to create and resume sessions (each must fail with
LeaseUnavailable, and no session directory may appear); the holder's renewals fail, so its lease must be marked
lost and its next send must raise LeaseLost; Redis returns; the time until a newcomer attaches again is the time
to recover, and the holder's session resumes with its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from copilot_fleet.client import ClientPool, FleetClient, LeaseLost, LeaseUnavailable
from copilot_fleet.local import probes
from faults.fleet_under_test import FleetUnderTest
from faults.measure import ScenarioResult
from faults.sessions import SMALL, call_timeout, close_quietly, recalled_words, reply_watching

Progress = Callable[[str], None]


def redis_password(fleet: FleetUnderTest) -> str:
    assert fleet.target.redis_url is not None
    return urlsplit(fleet.target.redis_url.get_secret_value()).password or ""


async def redis_outage(fleet: FleetUnderTest, *, outages: int, attempts: int, budget: float, lease_ttl: float = 3.0,
                       progress: Progress = lambda _: None) -> ScenarioResult:
    r = ScenarioResult("redis", "Redis stopped while sessions are active", run_unit="outages")
    r.target("attached_during_outage", max=0, meaning="attaches that succeeded while Redis was down")
    r.target("unclear_errors", max=0, meaning="refusals that were not LeaseUnavailable naming the lease store")
    r.target("held_lease_assumed", max=0, meaning="sends that went through on a lease Redis could not renew")
    r.target("not_recovered", max=0, meaning="outages after which no session attached within 30 s")
    r.target("lost_turns", max=0, meaning="completed turns missing after the holder resumed")
    r.target("dirs_created_during_outage", max=0, meaning="session directories that appeared while nothing may attach")
    target = fleet.target
    password = redis_password(fleet)
    redis_port = int(urlsplit(target.redis_url.get_secret_value()).port or 0) if target.redis_url else 0
    deadline = time.monotonic() + budget

    async with ClientPool() as pool:
        bystander = FleetClient(target, user="bystander", pool=pool, lease_ttl=lease_ttl, call_timeout=call_timeout())
        try:
            b = await bystander.create_session("outage", **SMALL)
            bystander_sid = b.session_id
            await reply_watching(b, "remember: bystander")
            await b.close()
            for k in range(outages):
                if time.monotonic() > deadline:
                    r.notes.append(f"stopped after {k} outages: the time budget of {budget:.0f} s ran out")
                    break
                mode = "stopped" if k % 2 == 0 else "frozen"
                await _one_outage(fleet, k, mode, pool, bystander, bystander_sid, attempts, lease_ttl, password,
                                  redis_port, r)
                progress(f"redis: outage {k + 1}/{outages} ({mode})")
        finally:
            await bystander.aclose()
            _restore(fleet, "frozen")  # never leave Redis frozen or stopped behind
            _restore(fleet, "stopped")
    return r.finish()


def _restore(fleet: FleetUnderTest, mode: str) -> None:
    sup = fleet.supervisor
    info = sup.processes().get("redis", {})
    if mode == "frozen" and info.get("pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGCONT)
    elif mode == "stopped" and info.get("statename") not in ("RUNNING", "STARTING"):
        sup.start_process("redis")


async def _one_outage(fleet: FleetUnderTest, k: int, mode: str, pool: ClientPool, bystander: FleetClient,
                      bystander_sid: str, attempts: int, lease_ttl: float, password: str, redis_port: int,
                      r: ScenarioResult) -> None:
    target = fleet.target
    failed = False
    r.runs += 1
    holder_client = FleetClient(target, user=f"holder{k}", pool=pool, lease_ttl=lease_ttl, call_timeout=call_timeout())
    newcomer = FleetClient(target, user=f"newcomer{k}", pool=pool, lease_ttl=lease_ttl, call_timeout=call_timeout())
    holder = None
    try:
        holder = await holder_client.create_session("outage", **SMALL)
        await reply_watching(holder, f"remember: held{k}")
        dirs_before = {p.name for p in fleet.view(fleet.session_state).iterdir()}

        # -- the outage -----------------------------------------------------------------------------------------
        sup = fleet.supervisor
        out_at = time.monotonic()
        lost_at: list[float] = []

        async def watch_holder() -> None:
            while holder is not None and not holder.lost and time.monotonic() < out_at + lease_ttl + 30:
                await asyncio.sleep(0.02)
            lost_at.append(time.monotonic())

        watcher = asyncio.ensure_future(watch_holder())
        if mode == "stopped":
            await asyncio.to_thread(sup.stop_process, "redis")
        else:
            os.kill(int(sup.processes()["redis"]["pid"]), signal.SIGSTOP)
        for j in range(attempts):
            started = time.monotonic()
            try:
                if j % 2 == 0:
                    s = await newcomer.create_session("outage", **SMALL)
                else:
                    s = await bystander.resume_session(bystander_sid, **SMALL)
            except LeaseUnavailable as exc:
                r.time(f"refusal_{mode}", time.monotonic() - started,
                       f"an attach attempt while Redis was {mode} until LeaseUnavailable")
                r.error(exc)
                text = str(exc)
                clear = "lease store" in text and f"127.0.0.1:{redis_port}" in text and password not in text
                if not clear:
                    r.bump("unclear_errors")
                    r.check("the refusal names the lease store and not its password", False, text[:300])
                    failed = True
            except Exception as exc:  # noqa: BLE001
                r.error(exc)
                r.bump("unclear_errors")
                r.check(f"outage {k}: attempt {j} fails closed with LeaseUnavailable", False, repr(exc))
                failed = True
            else:
                r.bump("attached_during_outage")
                r.check(f"outage {k}: nothing attaches while Redis is {mode}", False, s.session_id)
                await close_quietly(s)
                failed = True
        await asyncio.wait_for(watcher, lease_ttl + 35)
        if holder.lost:
            r.time("holder_lost", lost_at[0] - out_at, "outage start until the holder's lease was marked lost")
        try:
            await holder.reply(f"remember: late{k}", timeout=20)
        except LeaseLost:
            r.bump("held_lease_refused")
        except Exception as exc:  # noqa: BLE001
            r.error(exc)
            r.check(f"outage {k}: the holder's send fails with LeaseLost", False, repr(exc))
            failed = True
        else:
            r.bump("held_lease_assumed")
            r.check(f"outage {k}: the holder may not send on a lease it cannot renew", False, "the send went through")
            failed = True
        dirs_after = {p.name for p in fleet.view(fleet.session_state).iterdir()}
        new_dirs = dirs_after - dirs_before
        if new_dirs:
            r.bump("dirs_created_during_outage", len(new_dirs))
            failed = True
        await close_quietly(holder)

        # -- Redis returns -----------------------------------------------------------------------------------------
        back_at = time.monotonic()
        if mode == "stopped":
            await asyncio.to_thread(sup.start_process, "redis")
        else:
            os.kill(int(sup.processes()["redis"]["pid"]), signal.SIGCONT)
        recovered = False
        while time.monotonic() < back_at + 30:
            try:
                s = await newcomer.create_session("after", **SMALL)
            except LeaseUnavailable:
                await asyncio.sleep(0.05)
                continue
            r.time("recover", time.monotonic() - back_at, "Redis back until a new session attached again")
            redis_up = probes.probe_redis(redis_port, password, timeout=1.0).ok
            r.check(f"outage {k}: Redis answers again", redis_up)
            await reply_watching(s, "remember: after")
            await s.close()
            await newcomer.delete_session(s.session_id)
            recovered = True
            break
        if not recovered:
            r.bump("not_recovered")
            failed = True
        again = await holder_client.resume_session(holder.session_id, wait=lease_ttl + 5, **SMALL)
        words = recalled_words(await reply_watching(again, "recall")) or []
        await again.close()
        if f"held{k}" not in words:
            r.bump("lost_turns")
            failed = True
        if f"late{k}" in words:
            r.check(f"outage {k}: the refused send left nothing in the history", False, str(words))
            failed = True
        await holder_client.delete_session(holder.session_id)
    except Exception as exc:  # noqa: BLE001
        r.error(exc)
        r.check(f"outage {k} ran", False, repr(exc))
        failed = True
    finally:
        _restore(fleet, mode)
        await holder_client.aclose()
        await newcomer.aclose()
    if failed:
        r.failures += 1
