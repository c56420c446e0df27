"""Store mode (fleet:sessionState.mode store) on Kubernetes, run in podman/runc as a kubelet would run it.

One world per stack (shared-session with two replicas, per-user with two users), its pods started once for the
module: the in-cluster Redis with the store's config, the test model, then every CLI pod, whose container runs the
session store provider under tini and becomes ready only once the provider registered with its CLI. Then: verify
against the pods; a session resumed with its history on another server (shared) or on its user's server recreated
with empty volumes (per-user); a real tool run that tries to read the store credential; the janitor Job on the
store; pod deletion.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

import tests.helpers.store_fleet as sf
from copilot_fleet.client import FleetClient
from copilot_fleet.components.kubernetes import store
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.server import NO_LOCAL_STATE
from copilot_fleet.spec import quantity_value
from copilot_fleet.target import Target, parse_target
from tests.helpers.kubelet import RunningPod
from tests.helpers.stackworld import (
    CLI_COMPONENT,
    LEASE_STORE_COMPONENT,
    StackWorld,
    build_world,
    run_verify,
)
from tests.helpers.store_world import compose_store_secrets, store_servers, store_target

STACKS = ("k8s-store-shared-session", "k8s-store-per-user")
DAY_MS = 86400 * 1000


@dataclass
class StoreWorld:
    world: StackWorld
    passwords: dict[str, str]  # store scope -> its ACL user's password
    redis_pod: RunningPod
    cli: list[RunningPod]
    target_doc: dict[str, Any] = field(default_factory=dict)

    def target(self) -> Target:
        self.target_doc = store_target(self.world)
        return parse_target(json.dumps(self.target_doc), source="runtime tier")

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis_pod.ports[6379], password=self.world.redis_password,
                           decode_responses=True)

    def scope_client(self, scope: str) -> redis.Redis:
        """Redis as the scope's providers reach it (their ACL user), through the published port."""
        return redis.Redis(host="127.0.0.1", port=self.redis_pod.ports[6379], username=store.acl_user(scope),
                           password=self.passwords[scope])

    @property
    def users(self) -> list[str]:
        return sorted(self.target().users)


@pytest.fixture(scope="module", params=STACKS)
def sw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cli_image: str,
       run_prefix: str) -> Iterator[StoreWorld]:
    name = request.param
    world = build_world(name, tmp_path_factory.mktemp(name), f"{run_prefix}-{name}", cli_image)
    try:
        passwords = compose_store_secrets(world)
        (redis_pod,) = world.start_components(LEASE_STORE_COMPONENT)
        world.start_test_model()
        cli = world.start_components(CLI_COMPONENT)
        yield StoreWorld(world, passwords, redis_pod, cli)
    finally:
        problems = world.node.close()
        assert not problems, f"could not remove what the run made: {problems}"


def test_providers_register_and_the_pods_become_ready(sw: StoreWorld) -> None:
    """Each CLI pod (started above, through its startup and readiness probes) runs the provider under tini; the
    provider registered the server id the target lists; no session volume, and the CLI's session-state/ and
    session index are the provider's dangling links into /proc on the pod's emptyDir home."""
    servers = {s.pod: s for s in store_servers(sw.world)}
    for pod in sw.cli:
        assert not [v for v in pod.spec["volumes"] if "persistent_volume_claim" in v], f"{pod.name} mounts a claim"
        assert f"session store provider ready: server {servers[pod.name].server_id} on port" in pod.logs(), (
            pod.logs()[-2000:])
        init = pod.exec("cat", "/proc/1/cmdline").stdout.split("\0")
        assert init[:4] == [store.INIT, "--", store.SEALED_PYTHON, "-m"], init
        home = pod.volume_dirs["copilot-home"]
        assert Path(os.readlink(home / "session-state")) == NO_LOCAL_STATE
        assert (home / "session-store.db").is_symlink()


def test_ready_only_while_the_provider_is_registered(sw: StoreWorld) -> None:
    """The readiness probe (run inside the container) fails without the provider's ready file although the CLI
    answers, and passes again with it."""
    pod = sw.cli[0]
    probe = pod.main["readiness_probe"]
    assert pod.probe(probe).ok
    moved = pod.exec("mv", store.READY_FILE, store.READY_FILE + ".away")
    assert moved.returncode == 0, moved.stderr
    try:
        result = pod.probe(probe)
        assert not result.ok and "has not registered" in result.detail, result.detail
    finally:
        pod.exec("mv", store.READY_FILE + ".away", store.READY_FILE)
    assert pod.probe(probe).ok


def test_redis_runs_with_the_store_config(sw: StoreWorld) -> None:
    """Persistence as the stack says, no eviction, writes refused at half the container's memory, one ACL user per
    store scope; each scope's user reaches its own keys only."""
    config = sw.world.config
    admin = sw.admin()
    got = {str(k): str(v) for k, v in admin.config_get("*").items()}
    assert got["appendonly"] == "yes"
    assert got["appendfsync"] == (config.get("fleet:sessionState") or {}).get("appendfsync", "everysec")
    assert got["maxmemory-policy"] == "noeviction"
    limit = sw.redis_pod.main["resources"]["limits"]["memory"]
    assert int(got["maxmemory"]) == int(quantity_value(limit) // 2)
    users = {str(u) for u in admin.acl_users()}
    assert {store.acl_user(s) for s in sw.passwords} <= users, users
    for scope in sw.passwords:
        own = sw.scope_client(scope)
        assert own.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            own.keys("*")
        for other in set(sw.passwords) - {scope}:
            with pytest.raises(redis.exceptions.NoPermissionError):
                own.get(StoreKeys(other).index)


def test_verify_against_the_store_pods(sw: StoreWorld, tmp_path: Path) -> None:
    """`copilot-fleet verify` against the pods' published ports with the store mode's target: the walk-through
    (create, resume elsewhere with history, list and delete in the store) and a resume where the lease is not
    bound, refused by the store."""
    sw.target()
    proc, passed = run_verify(sw.target_doc, tmp_path)
    assert proc.returncode == 0, f"verify failed:\n{proc.stdout}\n{proc.stderr}"
    assert {"test_persistent_session_lifecycle", "test_resume_where_the_lease_is_not_bound_is_fenced"} <= passed, (
        proc.stdout)


async def _remember(target: Target, user: str, word: str) -> str:
    async with FleetClient(target, user=user) as fleet:
        session = await fleet.create_session("runtime-store")
        await session.reply(f"remember: {word}", timeout=90)
        await session.close()
        return session.session_id


async def _recall(target: Target, user: str, sid: str) -> tuple[str | None, str]:
    async with FleetClient(target, user=user) as fleet:
        resumed = await fleet.resume_session(sid)
        recalled = await resumed.reply("recall: which words?", timeout=90)
        address = resumed.address
        await resumed.close()
        await fleet.delete_session(sid)
        return recalled, address


def _restart(sw: StoreWorld, pod: RunningPod) -> RunningPod:
    """Pod deletion and a new pod in its place, with fresh emptyDirs (what a reschedule gives)."""
    stopped = pod.stop()
    assert stopped.graceful, pod.exit_report("did not stop gracefully")
    pod.remove()
    plan = sw.world.plans[pod.name]
    fresh = sw.world.start(plan)
    fresh.wait_ready()
    sw.cli[sw.cli.index(pod)] = fresh
    return fresh


def test_session_resumes_with_its_history_elsewhere(sw: StoreWorld) -> None:
    """shared: created on replica 0, resumed with its history on replica 1. per-user: created on alice's server,
    which is then deleted and recreated with empty volumes, and resumed there with its history: in both, the
    history comes from the store and nothing else."""
    target = sw.target()
    word = f"okapi{os.getpid()}"
    if target.isolation == "per-user":
        user = "alice"
        sid = asyncio.run(_remember(target, user, word))
        pod = next(p for p in sw.cli if p.labels.get("copilot-fleet/user") == user)
        marker = pod.volume_dirs["copilot-home"] / "from-the-old-pod"
        marker.write_text("the old pod's home")
        fresh = _restart(sw, pod)
        assert not (fresh.volume_dirs["copilot-home"] / marker.name).exists(), "the new pod got the old pod's home"
        target = sw.target()  # the new pod's published port
        recalled, _ = asyncio.run(_recall(target, user, sid))
    else:
        user = "alice"
        first = target.model_copy(update={"replicas": [target.replicas[0]], "endpoint": None})
        second = target.model_copy(update={"replicas": [target.replicas[1]], "endpoint": None})
        sid = asyncio.run(_remember(first, user, word))
        recalled, address = asyncio.run(_recall(second, user, sid))
        assert address == target.replicas[1]
    assert recalled is not None and word in recalled, f"resumed without its history: {recalled!r}"


_CREDENTIAL_PROBE = (
    "set -- $(python3 -c \"import json; d = json.load(open('" + store.READY_FILE + "')); "
    "print(d['pid'], d['cli_pid'])\"); "
    "for pid in 1 $1; do for e in environ mem; do "
    "head -c 1 /proc/$pid/$e >/dev/null 2>&1 && echo READ-$pid-$e || echo refused-$pid-$e; done; done; "
    "grep -qa " + store.STORE_URL_ENV[:-1] + " /proc/$2/environ 2>/dev/null && echo cli-has-it || echo cli-clean; "
    "n=0; for f in /proc/[0-9]*/environ; do grep -qa " + store.STORE_URL_ENV[:-1] + " $f 2>/dev/null && n=$((n+1)); "
    "done; echo environs-with-it=$n; echo own=$(env | grep -c " + store.STORE_URL_ENV[:-1] + ")"
)


def test_a_tool_run_reaches_no_store_credential(sw: StoreWorld) -> None:
    """A real tool run (the test model's `run:`) in a CLI pod, as the CLI's uid: /proc of tini (PID 1) and of the
    provider, which hold the store URL, refuse environ and memory; the CLI's environment (which the image may leave
    readable: the CLI is the volume mode's concern) and every other environment it can read, its own included, has
    no store URL."""
    target = sw.target()
    user = sorted(target.users)[0] if target.isolation == "per-user" else "alice"
    address = target.users[user] if target.isolation == "per-user" else target.replicas[0]
    output = sf.tool_run(target, user, _CREDENTIAL_PROBE, address=address)
    lines = output.split()
    assert [line for line in lines if line.startswith("READ-")] == [], f"the tool run read: {output}"
    assert len([line for line in lines if line.startswith("refused-")]) == 4, output
    assert {"cli-clean", "environs-with-it=0", "own=0"} <= set(lines), output


# The CLI's pid from the provider's ready file, SIGUSR1 to it, then ask Node's inspector port for its targets for
# about 10 s (the inspector starts a moment after the signal). Sent base64-encoded: the model's `run:` takes one line.
_DEBUGGER_SCRIPT = f"""
import json, os, signal, time, urllib.request
os.kill(json.load(open({store.READY_FILE!r}))["cli_pid"], signal.SIGUSR1)
seen = None
for _ in range(10):
    time.sleep(0.3)
    try:
        seen = urllib.request.urlopen("http://127.0.0.1:9229/json/list", timeout=1).read()[:200]
        break
    except Exception:
        pass
print(seen if seen else "no debugger: 10 tries")
"""
_DEBUGGER_PROBE = ("python3 -c \"import base64; exec(base64.b64decode('"
                   + base64.b64encode(_DEBUGGER_SCRIPT.encode()).decode() + "'))\"")
INSPECTOR_REFUSED = "Starting inspector on 127.0.0.1:9229 failed: address already in use"


def test_sigusr1_from_a_tool_run_opens_no_debugger_in_the_cli(sw: StoreWorld) -> None:
    """SIGUSR1 makes the CLI (a Node application) open an unauthenticated debugger on 127.0.0.1:9229, and a tool run
    has the CLI's uid (docs/security.md). In store mode the provider, which the tool run can neither reach nor
    outlive the CLI of, holds that port in the pod (`--hold-inspector-port`): the inspector cannot start (the CLI
    says so in its log), and the server serves on."""
    target = sw.target()
    user = sorted(target.users)[0] if target.isolation == "per-user" else "alice"
    address = target.users[user] if target.isolation == "per-user" else target.replicas[0]
    pod = next(p for p in sw.cli if any(address.endswith(f":{port}") for port in p.ports.values()))
    output = sf.tool_run(target, user, _DEBUGGER_PROBE, address=address)
    assert "no debugger: 10 tries" in output and "webSocketDebuggerUrl" not in output, output
    assert INSPECTOR_REFUSED in pod.logs(), pod.logs()[-2000:]
    assert "served-42" in sf.tool_run(target, user, "echo served-$((6*7))", address=address)


def test_the_janitor_job_cleans_the_store(sw: StoreWorld) -> None:
    """Each janitor Job (one per store scope) deletes a session of its scope idle past the TTL from the store and
    keeps a recent one, reading the admin's URL from its Secret file."""
    target = sw.target()
    user = "alice"
    scope = target.store_scope(user)
    old = asyncio.run(_remember(target, user, "old"))
    recent = asyncio.run(_remember(target, user, "recent"))
    keys = StoreKeys(scope)
    admin = sw.admin()
    now_ms = int(admin.time()[0]) * 1000
    admin.zadd(keys.index, {old: now_ms - 30 * DAY_MS})
    admin.hset(keys.meta(old), "modified", now_ms - 30 * DAY_MS)
    jobs = list(sw.world.janitor_jobs())
    assert jobs, "the stack renders no janitor CronJob"
    for pod_name, template in jobs:
        command = template["spec"]["containers"][0]["command"]
        assert "--store-scope" in command and not [v for v in template["spec"].get("volumes") or []
                                                   if "persistentVolumeClaim" in v], command
        pod = sw.world.run_janitor(pod_name, template)
        code = pod.wait_exit(timeout=float(template["spec"].get("activeDeadlineSeconds") or 600))
        assert code == 0, pod.exit_report("failed")
    stored = {str(m) for m in admin.zrange(keys.index, 0, -1)}
    assert old not in stored and recent in stored, stored
    admin.close()


def test_alices_leaked_store_password_opens_none_of_bobs_keys(sw: StoreWorld) -> None:
    """per-user: the rendered ACL as deployed: alice's store user reads alice's sessions, not bob's."""
    target = sw.target()
    if target.isolation != "per-user":
        pytest.skip("per-user only")
    bob = next(u for u in target.users if u != "alice")
    sid = asyncio.run(_remember(target, bob, "bobs-secret"))
    bob_keys = StoreKeys(target.store_scope(bob))
    alice = sw.scope_client(target.store_scope("alice"))
    for key in (bob_keys.content(sid, "events.jsonl"), bob_keys.tree(sid), bob_keys.index, bob_keys.lease(sid)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            alice.get(key)


# Last: it stops the pods the tests above use.
def test_cli_pods_stop_gracefully(sw: StoreWorld) -> None:
    """Pod deletion: the preStop pause, then SIGTERM through tini to the provider, which lets the CLI finish and
    exits 0 within the grace period, without SIGKILL."""
    pods = list(sw.cli)
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        results = list(pool.map(lambda p: p.stop(), pods))
    for pod, result in zip(pods, results, strict=True):
        assert result.pre_stop is not None and result.pre_stop.returncode == 0, result.pre_stop
        assert not result.killed, f"{pod.name}: SIGKILL after {result.grace_seconds} s grace:\n{pod.logs()[-2000:]}"
        assert result.exit_code in (0, 143), pod.exit_report(f"exit code {result.exit_code} on SIGTERM")

