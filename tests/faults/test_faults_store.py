"""The store-mode fault scenarios at CI size, with real processes: provider-backed CLIs (store mode) beside CLIs on
one shared session-state/ (volume mode), one redis-server with AOF and noeviction, the test model. The same scenario
code as the full run (benchmarks/reliability.py --only store-...); here every target is asserted. The fenced-write
comparison runs in tests/sessionstore/test_fencing_pause.py (one round per mode, the same round code).

Every wait in the scenarios returns on an event (a ready line, a connection's end, the CLI starting a turn, a
process exit, a reply); the bounds only limit how long a broken run takes to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from faults import runner
from faults.measure import ScenarioResult
from faults.store_fleet import StoreFleet, alive, why_not_runnable
from faults.store_full import store_full
from faults.store_kill import store_sigkill
from faults.store_redis import redis_restart

pytestmark = pytest.mark.fleet
PLAN = runner.QUICK


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreFleet]:
    why_not = why_not_runnable()
    if why_not is not None:
        pytest.skip(why_not)
    levels = runner.quiet_logs()
    f = StoreFleet(tmp_path_factory.mktemp("store-faults"), providers=PLAN.store_servers,
                   volume_clis=PLAN.store_servers)
    f.start()
    try:
        yield f
    finally:
        runner.restore_logs(levels)
        f.stop()
        left = [s.name for s in f.servers if any(p is not None and alive(p) for p in (s.cli_pid, s.provider_pid))]
        assert not left, f"servers survived the teardown: {left}"


def assert_targets(r: ScenarioResult) -> None:
    assert r.ok, r.summary()


def test_a_cli_killed_mid_turn_loses_no_turn_in_either_mode(fleet: StoreFleet) -> None:
    r = asyncio.run(store_sigkill(fleet, kills=PLAN.store_kills, budget=PLAN.store_budget))
    assert_targets(r)
    for mode in ("store", "volume"):
        # Each kill landed mid-turn and the application saw the connection end (not a timeout).
        assert r.stats(f"detect ({mode})")[2] + r.counts.get(f"turns_finished_before_kill ({mode})", 0) \
            == PLAN.store_kills, r.summary()
        assert r.stats(f"retried ({mode})")[2] == PLAN.store_kills, r.summary()


def test_a_killed_provider_takes_its_cli_and_the_session_resumes_elsewhere(fleet: StoreFleet) -> None:
    r = asyncio.run(store_sigkill(fleet, kills=PLAN.store_provider_kills, budget=PLAN.store_budget,
                                  what="provider"))
    assert_targets(r)
    assert r.stats("cli_gone")[2] == PLAN.store_provider_kills, r.summary()


def test_a_redis_restart_loses_no_acknowledged_turn(fleet: StoreFleet) -> None:
    r = asyncio.run(redis_restart(fleet, rounds=PLAN.store_redis_restarts, budget=PLAN.store_budget))
    assert_targets(r)
    assert r.runs == PLAN.store_redis_restarts
    # Store mode: the turn in flight meets the outage and fails naming the session and the store; volume mode keeps
    # its files on disk and answers.
    assert r.counts.get("turns_failed_during_outage (store)") == PLAN.store_redis_restarts, r.summary()
    assert r.counts.get("turns_answered_during_outage (volume)") == PLAN.store_redis_restarts, r.summary()


def test_a_full_store_refuses_clearly_and_recovers(fleet: StoreFleet) -> None:
    r = asyncio.run(store_full(fleet, rounds=PLAN.store_full_rounds, budget=PLAN.store_budget))
    assert_targets(r)
    # Per round: the turn and the new session's lease were both refused with a clear error.
    assert r.counts.get("clear_errors") == 2 * PLAN.store_full_rounds, r.summary()
    assert r.stats("writes_resume")[2] == PLAN.store_full_rounds, r.summary()

