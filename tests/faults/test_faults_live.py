"""The fault suite at CI size against one real local fleet: 3 CLI replicas, HAProxy, Redis, the test model, under
supervisord, started with `copilot-fleet up` in a private mount namespace (root) so the storage faults can mount over
its session-state. The same scenario code as the full run (benchmarks/reliability.py); here each target is asserted.

Tests marked xfail(strict=True) pin down defects found by the suite in code outside it; each turns red once the
defect is fixed (then drop the marker). docs/reliability.md, "Findings", has the suggested fixes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.timescale import time_scale
from faults import runner
from faults.bad_config import bad_config_while_running
from faults.bad_input import bad_input
from faults.flapping import replica_flapping
from faults.fleet_under_test import FleetUnderTest
from faults.janitor_run import janitor_live
from faults.kill import sigkill_mid_turn
from faults.lease_store import redis_outage
from faults.measure import ScenarioResult
from faults.restart import restart_identity
from faults.secrets_audit import secrets_audit
from faults.sessions import SMALL
from faults.storage import storage_faults
from faults.writers import pinned, two_writers, writers_without_lease

pytestmark = pytest.mark.fleet
PLAN = runner.QUICK


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetUnderTest]:
    levels = runner.quiet_logs()
    f = FleetUnderTest(tmp_path_factory.mktemp("faults"), replicas=PLAN.replicas)
    f.start()
    try:
        yield f
    finally:
        runner.restore_logs(levels)
        assert f.stop() == [], "fleet processes survived the teardown"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def healthy_again(fleet: FleetUnderTest) -> None:
    assert fleet.wait_healthy(timeout=90), "the fleet did not become healthy again"


def assert_targets(r: ScenarioResult, *keys: str) -> None:
    """The named targets (default: all) are met, and no check failed (unless limited to keys)."""
    wanted = keys or tuple(r.targets)
    missed = {k: r.targets[k].value for k in wanted if not r.targets[k].met}
    assert not missed, r.summary()
    if not keys:
        assert not r.failed_checks, r.summary()


# -- SIGKILL mid-turn ---------------------------------------------------------------------------------------------

def test_sigkill_mid_turn_loses_no_completed_turn(fleet: FleetUnderTest) -> None:
    r = run(sigkill_mid_turn(fleet, kills=PLAN.kills, budget=PLAN.kill_budget, sessions_per_kill=PLAN.kill_sessions))
    assert_targets(r)
    assert r.counts["turns_interrupted"] >= PLAN.kills, "the kills must land while a turn runs"
    assert r.counts["restarts_verified"] == PLAN.kills
    med, p95, n = r.stats("resume")
    assert n == PLAN.kills * PLAN.kill_sessions and p95 is not None and p95 < 30
    healthy_again(fleet)


def test_reply_fails_fast_when_the_replica_dies_mid_turn(fleet: FleetUnderTest) -> None:
    """SDK 1.0.25 does not wake send_and_wait when the server's connection drops; FleetSession watches for it."""
    from copilot_fleet.client import ClientPool, FleetClient, SessionDisconnected

    name = fleet.replica_names()[0]
    turn_timeout = 6 * time_scale()  # the turn's own bound; its end must come long before it

    async def scenario() -> tuple[float, BaseException | None]:
        async with ClientPool() as pool, FleetClient(pinned(fleet.target, fleet.address_of(name)), user="fast",
                                                     pool=pool) as fc:
            session = await fc.create_session("fast", **SMALL)
            turn = asyncio.ensure_future(session.reply("sleep: 4 remember: x", timeout=turn_timeout))
            await asyncio.sleep(0.7)
            fleet.kill(name)
            killed = time.monotonic()
            try:
                await turn
                error = None
            except Exception as exc:  # noqa: BLE001
                error = exc
            return time.monotonic() - killed, error

    try:
        took, error = run(scenario())
    finally:
        healthy_again(fleet)
    assert isinstance(error, SessionDisconnected), repr(error)
    assert took < turn_timeout / 2, (f"the caller learned of the dead replica after {took:.1f} s, not long before "
                                     f"the turn's timeout ({turn_timeout:g} s)")


# -- two writers --------------------------------------------------------------------------------------------------

def test_two_writers_never_attach_together_and_keep_one_history(fleet: FleetUnderTest) -> None:
    r = run(two_writers(fleet, rounds=PLAN.writer_rounds, sessions=PLAN.writer_sessions, budget=PLAN.writer_budget))
    assert_targets(r)
    assert r.runs == 2 * PLAN.writer_rounds * PLAN.writer_sessions
    assert r.counts["attached"] >= PLAN.writer_rounds  # the lease serialises them; it does not starve them


def test_without_the_lease_the_histories_diverge(fleet: FleetUnderTest) -> None:
    """The control: proves the divergence check can see what the lease prevents."""
    r = run(writers_without_lease(fleet, attempts=PLAN.control_attempts, budget=60))
    assert_targets(r)
    assert r.counts["forks"] >= 1


# -- Redis --------------------------------------------------------------------------------------------------------

def test_redis_outage_fails_closed_and_recovers(fleet: FleetUnderTest) -> None:
    r = run(redis_outage(fleet, outages=PLAN.outages, attempts=PLAN.outage_attempts, budget=PLAN.outage_budget))
    assert_targets(r)
    assert r.counts["held_lease_refused"] == PLAN.outages
    assert r.errors["LeaseUnavailable"] == PLAN.outages * PLAN.outage_attempts
    _, p95, _ = r.stats("holder_lost")
    assert p95 is not None and p95 < 3.0 + 3, "the holder learns of the loss within its lease TTL (3 s) and a renewal"


# -- replicas going down and up behind HAProxy -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def flapping(fleet: FleetUnderTest) -> ScenarioResult:
    r = run(replica_flapping(fleet, duration=PLAN.flap_seconds, workers=PLAN.flap_workers))
    healthy_again(fleet)
    return r


def test_flapping_replicas_give_bounded_errors_never_a_wrong_session(flapping: ScenarioResult) -> None:
    assert_targets(flapping)
    assert flapping.runs >= 1 and flapping.counts.get("ops_ok", 0) > 0


# -- restarts -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def restarts(fleet: FleetUnderTest) -> ScenarioResult:
    return run(restart_identity(fleet, restarts=PLAN.restarts, budget=PLAN.restart_budget))


def test_a_restarted_replica_keeps_identity_and_storage(restarts: ScenarioResult) -> None:
    assert_targets(restarts)
    assert restarts.runs == PLAN.restarts


def test_the_first_call_after_a_restart_reconnects(restarts: ScenarioResult) -> None:
    """ClientPool.get reconnects a pooled connection whose server restarted (with one address, as in per-user fleets,
    handing out the dead one failed the first call after every restart)."""
    assert restarts.runs == PLAN.restarts
    assert restarts.counts.get("first_call_failed_on_stale_connection", 0) == 0, restarts.summary()


# -- the janitor --------------------------------------------------------------------------------------------------

def test_janitor_removes_only_expired_detached_sessions(fleet: FleetUnderTest) -> None:
    r = run(janitor_live(fleet, rounds=PLAN.janitor_rounds, budget=PLAN.janitor_budget))
    assert_targets(r)
    assert r.runs == PLAN.janitor_rounds and r.counts["skipped_attached"] >= 2 * PLAN.janitor_rounds


def test_janitor_trash_directory_is_private(tmp_path: Path) -> None:
    from copilot_fleet.pod.janitor import TRASH_DIR, Janitor
    from faults.janitor_run import make_old

    old_umask = os.umask(0o022)  # what a CronJob or a shell has
    try:
        session = tmp_path / "u-5-alice-old-1700000000-0badcafe"
        session.mkdir()
        (session / "events.jsonl").write_text('{"type":"session.start"}\n')
        make_old(session, 30 * 86400)
        report = run(Janitor(tmp_path, 7 * 86400).run())
    finally:
        os.umask(old_umask)
    assert report.count("removed") == 1
    assert (tmp_path / TRASH_DIR).stat().st_mode & 0o777 == 0o700


# -- bad input ----------------------------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors_and_changes_nothing(fleet: FleetUnderTest, tmp_path: Path) -> None:
    r = run(bad_input(fleet, tmp_path))
    assert_targets(r)
    assert r.runs >= 25


def test_an_invalid_stack_file_on_a_running_fleet_changes_nothing(fleet: FleetUnderTest) -> None:
    r = ScenarioResult("bad-config", "bad config on a running fleet")
    r.target("accepted", max=0)
    r.target("left_behind", max=0)
    bad_config_while_running(fleet, r)
    assert_targets(r)
    assert fleet.wait_healthy(timeout=10)


# -- storage ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def storage(fleet: FleetUnderTest) -> ScenarioResult:
    r = run(storage_faults(fleet, free_pages=PLAN.free_pages, reply_timeout=PLAN.storage_reply_timeout))
    if r.skipped:
        pytest.skip(r.skipped)
    return r


def test_storage_faults_lose_nothing_and_change_nothing(storage: ScenarioResult) -> None:
    assert_targets(storage, "lost_turns", "changed_on_disk", "incoherent_histories")
    assert storage.counts.get("clear_errors", 0) >= 2  # create on a read-only and on a full session-state


def test_a_full_disk_leaves_no_ghost_session(storage: ScenarioResult) -> None:
    """CLI 1.0.102 leaves a session whose first event could not be written listed but not resumable (finding 4);
    the fleet client deletes such a session (created by the handle, no completed turn, a storage error) on close."""
    assert storage.targets["ghosts"].value == 0, storage.summary()


def test_every_storage_failure_names_its_cause(storage: ScenarioResult) -> None:
    """CLI 1.0.102 never answers a turn on a resumed session whose session-state is read-only or full to the last
    page (finding 5); the fleet client names the cause at the turn's timeout (SessionStateUnwritable,
    client/write_check.py)."""
    assert storage.targets["unclear_errors"].value == 0, storage.summary()
    assert storage.counts.get("clear_errors", 0) >= 4  # both creates and both silent turns, at least


# -- secrets (last: every log has content by now) -------------------------------------------------------------------

def test_no_secret_outside_its_files_and_private_modes(fleet: FleetUnderTest) -> None:
    r = secrets_audit(fleet, render=PLAN.render_audit)
    assert_targets(r, "leaks", "render_leaks")
    assert r.counts["secret values searched for"] >= 3
    assert r.counts["process command lines"] > 10 and r.counts["log files searched"] > 5
    assert r.counts["rendered manifests"] > 20
    assert not r.failed_checks, r.summary()
