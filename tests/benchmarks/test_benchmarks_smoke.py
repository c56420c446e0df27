"""Smoke test of the benchmark modules: each runs at its smallest size against one real local fleet (2 CLI
replicas, Redis, HAProxy, test model) and its output has the expected structure. No timing target is asserted:
the machine is shared and the figures are what the benchmark is for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import common
import floor
import hops
import latency
import overheads
import run_all
import scale
import sockopts
import vs_raw_sdk

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- pure parts -------------------------------------------------------------------------------------------------

def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    s = common.summary(values)
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    assert common.percentile([], 50) != common.percentile([], 50)  # NaN for no samples
    assert common.ratio([2.0, 2.0], [1.0, 1.0]) == 2.0


def test_budget_stops_on_count_and_on_time() -> None:
    by_count = common.Budget(max_count=3, max_seconds=60)
    assert sum(1 for _ in iter(by_count.next, False)) == 3
    by_time = common.Budget(max_count=10**9, max_seconds=0.05)
    started = time.monotonic()
    n = 0
    while by_time.next():
        n += 1
        time.sleep(0.01)
    assert time.monotonic() - started < 1.0 and 0 < n < 20 and by_time.exhausted_by_time


def test_skip_rejects_unknown_parts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--quick", "--skip", "latency,bogus"])
    assert "bogus" in capsys.readouterr().err


# --- against a real fleet ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet() -> Iterator[common.LocalFleet]:
    if not common.CLI.exists():
        pytest.skip(f"Copilot CLI not installed at {common.CLI}")
    f = common.LocalFleet.create(replicas=2)
    try:
        f.up()
        yield f
    finally:
        f.down()
    assert not f.fleet_pids(), "processes of the benchmark fleet survived down"


def test_each_benchmark_runs_smallest_size_and_reports(fleet: common.LocalFleet, tmp_path: Path) -> None:
    target = fleet.target
    assert target is not None
    results = run_all.Results(load_start=(0.0, 0.0, 0.0))

    results.latency = common.run(latency.measure(target, target.replicas[0], (1, 2), max_sessions=2))
    assert [r.concurrency for r in results.latency] == [1, 2]
    for r in results.latency:
        assert sum(r.errors.values()) == 0, r.error_examples
        assert len(r.samples["create"]) == len(r.samples["delete"]) == r.rounds * r.concurrency
        assert len(r.samples["send"]) == 2 * r.rounds * r.concurrency  # one send after create, one after resume
        assert all(t > 0 for op in latency.OPS for t in r.samples[op])

    results.overheads, results.profile = common.run(overheads.measure(target, iterations=2, profile=False,
                                                                             locate=fleet.replica_of))
    assert [c.name for c in results.overheads] == ["endpoint", "fleet_client", "cross_replica_resume"]
    for c in results.overheads:
        assert c.errors == 0, c.error_examples
        assert len(c.a) == len(c.b) == 2 and c.ratio > 0
        assert isinstance(c.to_json()["met"], bool)

    results.vs_raw, results.vs_raw_profile = common.run(vs_raw_sdk.measure(target, fleet, iterations=2,
                                                                           profile=False))
    assert [r.route for r in results.vs_raw] == ["same", "haproxy", "other"]
    cli_reachable = sockopts.available(fleet.pid("copilot-cli-0")) is None
    for route in results.vs_raw:
        expected = ["raw", "nodelay", "fleet"] + (["both ends"] if route.route == "same" and cli_reachable else [])
        assert route.arms() == expected, (route.route, route.skipped)
        assert route.cycles == 2 and all(n == 0 for n in route.errors.values()), route.error_examples
        for arm in route.arms():
            assert [len(route.samples[arm][op]) for op in vs_raw_sdk.OPS] == [2, 4, 2, 2], (route.route, arm)
        assert all(route.ratio("fleet", op) > 0 for op in vs_raw_sdk.OPS)
        assert "ours" in vs_raw_sdk.attribution(route, "create", results.vs_raw[0])

    results.floor = common.run(floor.measure(fleet, turns=2))
    assert list(results.floor.turn) == (list(floor.ARMS) if not results.floor.skipped else ["client"])
    assert all(len(v) == 2 for v in results.floor.turn.values()) and results.floor.errors == 0

    results.haproxy = common.run(hops.haproxy_ends(fleet))
    # What the seam gives through the load balancer, and the SDK's own default, read back from the sockets.
    assert results.haproxy.application == {"copilot_fleet.nodelay client": True, "raw SDK as shipped": False}
    if not results.haproxy.skipped:
        assert len(results.haproxy.frontend) >= 2 and results.haproxy.backend and results.haproxy.cli_end

    results.scale = common.run(scale.measure(fleet, (1, 2), settle=0.5))
    sr = results.scale
    assert [lv.sessions for lv in sr.levels] == [1, 2] and all(lv.errors == 0 for lv in sr.levels)
    assert sr.idle_rss_mib > 50 and sr.after_detach_rss_mib > 50 and sr.after_recycle_rss_mib > 50
    assert sr.stopped_because.startswith("reached the bound")
    assert sr.recycle_seconds > 0

    async def attached_where() -> str | None:
        client = await common.sdk_client(target.replicas[1], common.token_of(target))
        try:
            sid = common.new_id("where")
            session = await client.create_session(session_id=sid, name="where", **common.session_options(target))
            where = fleet.replica_of(sid)
            await session.disconnect()
            await client.delete_session(sid)
            return where
        finally:
            await common.close_client(client)

    assert common.run(attached_where()) == target.replicas[1]  # how the HAProxy comparison finds its baseline

    doc = tmp_path / "benchmarks.md"
    run_all.write_doc(results, doc, quick=True)
    text = doc.read_text()
    for heading in ("## Latency on one replica", "## Overheads of the fleet", "## Sessions per replica",
                    "## The fleet client against the raw SDK as shipped", "## The CLI's floor", "## The hops"):
        assert heading in text
    assert "FleetClient / raw SDK as shipped, create, replica 0" in text
    assert "| 2 | send |" in text and "FleetClient (routing + lease)" in text
    for png in ("latency.png", "overheads.png", "scale.png", "before_after.png", "vs_raw_arms.png"):
        assert (tmp_path / "benchmarks" / png).read_bytes()[:8] == PNG_MAGIC


def test_service_path_is_one_connection_through_a_dnat_rule() -> None:
    """The Kubernetes Service path benchmark: a DNAT rule in a namespace of its own, and the measurement it reports."""
    if not common.CLI.exists():
        pytest.skip(f"Copilot CLI not installed at {common.CLI}")
    result = hops.service_path(cycles=1)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.errors == 0, result.error_examples
    assert result.rule_packets >= 1  # the connection really went through the rule
    assert result.one_connection and result.client_nodelay == {"service": True, "direct": True}
    assert all(len(result.samples[arm]["create"]) == 1 for arm in ("service", "direct"))
    assert "DNAT rule matched" in hops.service_report(result)


def test_sockopts_reads_and_sets_another_process_socket() -> None:
    """pidfd_getfd: TCP_NODELAY read from, and set on, a socket another process holds."""
    import socket
    import subprocess

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", (
            f"import socket,sys; s=socket.create_connection(('127.0.0.1', {port})); print(s.getsockname()[1], "
            "flush=True); sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            why = sockopts.available(child.pid)
            if why is not None:
                pytest.skip(why)
            peer = ("127.0.0.1", server.getsockname()[1])
            assert [(s.local, s.nodelay) for s in sockopts.tcp_sockets(child.pid)] == [(("127.0.0.1", port), False)]
            assert sockopts.set_nodelay(child.pid, peer, True) == 1
            assert [s.nodelay for s in sockopts.tcp_sockets(child.pid)] == [True]
            assert sockopts.set_nodelay(child.pid, ("127.0.0.1", 1), True) == 0  # another peer: untouched
        finally:
            child.kill()
            child.wait(timeout=10)


def test_scale_in_store_mode_attaches_through_the_fleet_client_and_reads_both_processes() -> None:
    """`scale.py --store` at its smallest size on a 1-replica store-mode fleet: every session leased and bound (a
    write that is not would fail the send), the CLI's and the provider's memory as two processes, Redis growing
    with the sessions, and a recycle that waits for the new provider to register."""
    if not common.CLI.exists():
        pytest.skip(f"Copilot CLI not installed at {common.CLI}")
    fleet = common.LocalFleet.create(replicas=1, store=True)
    try:
        fleet.up()
        name = fleet.replica_name(0)
        provider, cli = fleet.pid(name), fleet.cli_pid(name)
        assert provider != cli
        r = common.run(scale.measure(fleet, (1, 2), settle=0.5))
        assert [lv.sessions for lv in r.levels] == [1, 2] and all(lv.errors == 0 for lv in r.levels), \
            r.error_examples
        assert all(lv.provider_rss_mib > 10 and lv.rss_mib > 50 for lv in r.levels)
        assert r.levels[-1].redis_mib > r.idle_redis_mib  # the sessions' state is in Redis
        assert fleet.cli_pid(name) != cli and r.after_recycle_rss_mib > 60  # a new CLI under a new provider
        assert "provider VmRSS MiB" in scale.report(r)
    finally:
        fleet.down()
    assert not fleet.fleet_pids(), "processes of the benchmark fleet survived down"
