"""The whole fault suite, in a fixed order, each scenario bounded in count and time.

`FULL` is what `benchmarks/reliability.py` runs to write docs/reliability.md (15 to 20 minutes on 2 cores); `QUICK`
is the CI size. The volume-mode scenarios run against one local shared-cli fleet; order matters only for the last
two: the storage faults mount over session-state (nothing else may run meanwhile), and the secrets audit runs last,
when every log has something in it. The store-mode scenarios (`store-*`) run afterwards, once that fleet is
stopped, against their own processes (faults/store_fleet.py: providers and bare CLIs side by side, one Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from faults import bad_config
from faults.bad_input import bad_input
from faults.flapping import replica_flapping
from faults.fleet_under_test import FleetUnderTest
from faults.janitor_run import janitor_live
from faults.kill import sigkill_mid_turn
from faults.lease_store import redis_outage
from faults.measure import ScenarioResult
from faults.restart import restart_identity
from faults.secrets_audit import secrets_audit
from faults.storage import storage_faults
from faults.store_fleet import StoreFleet, why_not_runnable
from faults.store_full import store_full
from faults.store_kill import store_sigkill
from faults.store_pause import paused_holders
from faults.store_redis import redis_restart
from faults.writers import two_writers, writers_without_lease

Progress = Callable[[str], None]
FLEET_SCENARIOS = ("sigkill", "writers", "redis", "flapping", "restart", "janitor", "bad-input", "storage", "secrets")
STORE_SCENARIOS = ("store-sigkill", "store-provider", "store-redis", "store-full", "store-fencing")
SCENARIOS = ("bad-config", *FLEET_SCENARIOS, *STORE_SCENARIOS)


@dataclass(frozen=True)
class Plan:
    replicas: int = 3
    kills: int = 100
    kill_sessions: int = 2
    kill_budget: float = 420
    writer_rounds: int = 60
    writer_sessions: int = 2
    control_attempts: int = 10
    writer_budget: float = 120
    outages: int = 8
    outage_attempts: int = 4
    outage_budget: float = 120
    flap_seconds: float = 45
    flap_workers: int = 4
    restarts: int = 4
    restart_budget: float = 90
    janitor_rounds: int = 3
    janitor_budget: float = 60
    free_pages: tuple[int, ...] = (0, 1, 2, 3, 4, 6)
    storage_reply_timeout: float = 10
    config_commands: tuple[str, ...] | None = None  # None: every invalid config also through the real command
    render_audit: bool = True
    store_servers: int = 3  # per mode
    store_kills: int = 20  # per mode
    store_provider_kills: int = 10
    store_redis_restarts: int = 4
    store_full_rounds: int = 3
    store_pause_rounds: int = 4  # per mode
    store_budget: float = 300  # per scenario


FULL = Plan()
QUICK = Plan(kills=5, kill_sessions=1, kill_budget=90, writer_rounds=5, control_attempts=1, writer_budget=60,
             outages=2, outage_attempts=2, outage_budget=60, flap_seconds=10, flap_workers=3, restarts=2,
             restart_budget=60, janitor_rounds=1, janitor_budget=40, free_pages=(0, 3),
             storage_reply_timeout=3, config_commands=("replicas-string", "yaml-malformed", "per-user-port-clash"),
             store_servers=2, store_kills=3, store_provider_kills=2, store_redis_restarts=2, store_full_rounds=1,
             store_pause_rounds=1, store_budget=150)


QUIET_LOGGERS = ("copilot", "copilot_fleet.client", "copilot_fleet.pod.janitor")


def quiet_logs() -> dict[str, int]:
    """The fleet client and the SDK log every failure the scenarios cause on purpose; keep the console readable.
    Returns the levels before, for `restore_logs`."""
    before = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return before


def restore_logs(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def _bounded(coro: object, seconds: float, name: str) -> ScenarioResult:
    try:
        return await asyncio.wait_for(coro, seconds)  # type: ignore[arg-type]
    except TimeoutError:
        r = ScenarioResult(name, name)
        r.check(f"{name} finished within its bound of {seconds:.0f} s", False, "it did not")
        return r.finish()


@dataclass
class Fleets:
    """What the run started, for the report."""

    volume: FleetUnderTest | None = None
    store: StoreFleet | None = None


async def run_all(plan: Plan, workdir: Path, *, only: Sequence[str] = SCENARIOS,
                  progress: Progress = print) -> tuple[list[ScenarioResult], Fleets]:
    quiet_logs()
    results: list[ScenarioResult] = []
    config_result: ScenarioResult | None = None
    if "bad-config" in only:
        progress("bad-config: invalid stack configs through `up` and the mock engine")
        config_result = await asyncio.to_thread(bad_config.invalid_configs, workdir / "configs",
                                                subprocess_ids=plan.config_commands)
        results.append(config_result)
    fleets = Fleets()
    if any(s in only for s in FLEET_SCENARIOS):
        fleets.volume = await _fleet_scenarios(plan, workdir, only, results, config_result, progress)
    if any(s in only for s in STORE_SCENARIOS):
        fleets.store = await _store_scenarios(plan, workdir, only, results, progress)
    return results, fleets


async def _run_steps(steps: list[tuple[str, Callable[[], object], float]], only: Sequence[str],
                     results: list[ScenarioResult], progress: Progress, after: Callable[[], object]) -> None:
    for name, make, bound in steps:
        if name not in only:
            continue
        progress(f"{name}: starting")
        began = time.monotonic()
        result = await _bounded(make(), bound, name)
        results.append(result)
        progress(f"{result.summary()}\n  ({time.monotonic() - began:.0f} s)")
        await asyncio.to_thread(after)


async def _fleet_scenarios(plan: Plan, workdir: Path, only: Sequence[str], results: list[ScenarioResult],
                           config_result: ScenarioResult | None, progress: Progress) -> FleetUnderTest:
    fleet = FleetUnderTest(workdir / "fleet", replicas=plan.replicas)
    progress(f"starting a shared-cli fleet of {plan.replicas} replicas in {fleet.dir}")
    await asyncio.to_thread(fleet.start)
    progress(f"fleet up in {fleet.up_seconds:.1f} s (private mount namespace: {fleet.private_mounts})")
    try:
        steps: list[tuple[str, Callable[[], object], float]] = [
            ("sigkill", lambda: sigkill_mid_turn(fleet, kills=plan.kills, budget=plan.kill_budget,
                                                 sessions_per_kill=plan.kill_sessions, progress=progress),
             plan.kill_budget + 240),
            ("writers", lambda: two_writers(fleet, rounds=plan.writer_rounds, sessions=plan.writer_sessions,
                                            budget=plan.writer_budget, progress=progress), plan.writer_budget + 120),
            ("writers", lambda: writers_without_lease(fleet, attempts=plan.control_attempts, budget=60), 180),
            ("redis", lambda: redis_outage(fleet, outages=plan.outages, attempts=plan.outage_attempts,
                                           budget=plan.outage_budget, progress=progress), plan.outage_budget + 120),
            ("flapping", lambda: replica_flapping(fleet, duration=plan.flap_seconds, workers=plan.flap_workers,
                                                  progress=progress), plan.flap_seconds + 200),
            ("restart", lambda: restart_identity(fleet, restarts=plan.restarts, budget=plan.restart_budget,
                                                 progress=progress), plan.restart_budget + 200),
            ("janitor", lambda: janitor_live(fleet, rounds=plan.janitor_rounds, budget=plan.janitor_budget,
                                             progress=progress), plan.janitor_budget + 120),
            ("bad-input", lambda: bad_input(fleet, workdir / "bad-input"), 180),
            ("storage", lambda: storage_faults(fleet, free_pages=plan.free_pages,
                                               reply_timeout=plan.storage_reply_timeout, progress=progress), 400),
        ]

        def healthy_again() -> None:
            if not fleet.wait_healthy(None, 120):
                progress("warning: the fleet did not become healthy again within 120 s")

        await _run_steps(steps, only, results, progress, healthy_again)
        if config_result is not None:
            await asyncio.to_thread(bad_config.bad_config_while_running, fleet, config_result)
        if "secrets" in only:
            progress("secrets: auditing state, logs, process arguments and the render")
            results.append(await asyncio.to_thread(secrets_audit, fleet, render=plan.render_audit))
    finally:
        await asyncio.to_thread(fleet.stop)
    return fleet


async def _store_scenarios(plan: Plan, workdir: Path, only: Sequence[str], results: list[ScenarioResult],
                           progress: Progress) -> StoreFleet | None:
    why_not = why_not_runnable()
    if why_not is not None:
        for name in STORE_SCENARIOS:
            if name in only:
                results.append(ScenarioResult(name, name, skipped=why_not))
        return None
    fleet = StoreFleet(workdir / "store", providers=plan.store_servers, volume_clis=plan.store_servers)
    progress(f"starting {plan.store_servers} store-mode and {plan.store_servers} volume-mode servers in {fleet.root}")
    await asyncio.to_thread(fleet.start)
    progress(f"store fleet up in {fleet.up_seconds:.1f} s")
    budget = plan.store_budget
    steps: list[tuple[str, Callable[[], object], float]] = [
        ("store-sigkill", lambda: store_sigkill(fleet, kills=plan.store_kills, budget=budget, progress=progress),
         budget + 240),
        ("store-provider", lambda: store_sigkill(fleet, kills=plan.store_provider_kills, budget=budget,
                                                 what="provider", progress=progress), budget + 240),
        ("store-redis", lambda: redis_restart(fleet, rounds=plan.store_redis_restarts, budget=budget,
                                              progress=progress), budget + 240),
        ("store-full", lambda: store_full(fleet, rounds=plan.store_full_rounds, budget=budget, progress=progress),
         budget + 240),
        ("store-fencing", lambda: paused_holders(fleet, rounds=plan.store_pause_rounds, budget=budget,
                                                 progress=progress), budget + 300),
    ]

    def every_server_up() -> None:  # a scenario cut short by its bound may leave a server killed or Redis down
        if fleet.redis.proc is None or fleet.redis.proc.poll() is not None:
            fleet.start_redis()
        for server in fleet.servers:
            server.resume()
            if not server.running():
                fleet.reap(server)
                fleet.start_server(server)

    try:
        await _run_steps(steps, only, results, progress, every_server_up)
    finally:
        await asyncio.to_thread(fleet.stop)
    return fleet
