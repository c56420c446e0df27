"""Every Kubernetes and Azure stack's rendered pods, run in podman/runc as a kubelet would run them.

For each stack (one world per stack, torn down before the next): the lease store (the in-cluster Redis pod, or a
stand-in for a store outside the cluster), the CLI pods (every replica; their readiness and liveness probes run
inside the containers), `copilot-fleet verify` against their published ports, one run of each janitor Job, and
pod deletion (preStop, then SIGTERM) for each CLI pod.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.kubelet import RunningPod
from tests.helpers.stackworld import (
    CLI_COMPONENT,
    LEASE_STORE_COMPONENT,
    MODEL_HOST,
    MODEL_PORT,
    StackWorld,
    build_world,
    run_verify,
)

STACKS = ("k8s-shared-cli", "k8s-shared-session", "k8s-per-user",
          "azure-shared-cli", "azure-shared-session", "azure-per-user")


class Started:
    """The world's pods, each group started once for the module's tests (the first test that needs it starts it);
    a failure to start is kept and raised again to every test that needs the group."""

    def __init__(self, world: StackWorld) -> None:
        self.world = world
        self._started: dict[str, list[RunningPod]] = {}
        self._errors: dict[str, BaseException] = {}

    def _once(self, group: str, start: Callable[[], list[RunningPod]]) -> list[RunningPod]:
        if group in self._errors:
            raise self._errors[group]
        if group not in self._started:
            try:
                self._started[group] = start()
            except BaseException as exc:
                self._errors[group] = exc
                raise
        return self._started[group]

    def lease_store(self) -> list[RunningPod]:
        """The in-cluster Redis pod, or the stand-in for a lease store outside the cluster (none per-user)."""
        def start() -> list[RunningPod]:
            external = self.world.start_external_redis()
            return [external] if external else self.world.start_components(LEASE_STORE_COMPONENT)
        return self._once("lease-store", start)

    def cli(self) -> list[RunningPod]:
        """The test model pod the sessions use, then every CLI replica, ready."""
        self._once("test-model", lambda: [self.world.start_test_model()])
        return self._once("cli", lambda: self.world.start_components(CLI_COMPONENT))


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cli_image: str,
          run_prefix: str) -> Iterator[Started]:
    name = request.param
    world = build_world(name, tmp_path_factory.mktemp(name), f"{run_prefix}-{name}", cli_image)
    try:
        yield Started(world)
    finally:
        problems = world.node.close()
        assert not problems, f"could not remove what the run made: {problems}"


def test_cli_pods_become_ready(stack: Started) -> None:
    """Every CLI replica starts under the pod's own user, groups, read-only root and volumes, passes its startup
    and readiness probes (run inside the container), and its liveness probe."""
    pods = stack.cli()
    assert pods, "the stack renders no CLI pods"
    for pod in pods:
        liveness = pod.probe(pod.main["liveness_probe"])
        assert liveness.ok, f"{pod.name}: liveness probe failed: {liveness.detail}"


def test_lease_store_ready(stack: Started) -> None:
    """The lease store answers its own readiness probe (redis-cli ping with the password, inside the container);
    outside the cluster, the stand-in serves TLS only; per-user fleets have none."""
    stores = stack.lease_store()
    if not stack.world.janitor_url_key():
        assert stores == [], "a per-user fleet runs no lease store"
        return
    (store,) = stores
    assert store.running(), store.exit_report("is not running")
    if stack.world.in_cluster_redis() is not None:
        # The password reaches Redis as a mounted file: not in its command line or environment (any process of
        # the same user, and `ps` on the node, could read those).
        password = stack.world.redis_password
        assert password
        seen = store.exec("sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; tr '\\0' ' ' < /proc/1/environ")
        assert seen.returncode == 0, seen.stderr
        assert password not in seen.stdout, f"the Redis password is in its command line or environment: {seen.stdout}"


def test_verify_against_the_pods(stack: Started, tmp_path: Path) -> None:
    """`copilot-fleet verify --target FILE`, the target made of the pods' published ports: create, resume on
    another replica, delete, tokens, isolation, leases."""
    stack.lease_store()
    stack.cli()
    proc, passed = run_verify(stack.world.target(), tmp_path)
    assert proc.returncode == 0, f"verify failed:\n{proc.stdout}\n{proc.stderr}"
    assert "test_persistent_session_lifecycle" in passed, proc.stdout


POD_CHECKS = {"test_pods_running", "test_session_state_mounted_and_writable", "test_cli_process"}


def test_verify_from_outside_the_cluster(stack: Started, tmp_path: Path) -> None:
    """The user's path from a laptop: the target as the stack outputs give it (cluster DNS names, which do not
    resolve on this machine) and `copilot-fleet verify --target FILE` with its defaults. Verify sees the names do
    not resolve, forwards each pod, Service and the in-cluster Redis with `kubectl port-forward`, and every check
    passes through the forwards, the pod checks included (`kubectl get pods`, then pytest-testinfra's `kubectl
    exec` into the containers). kubectl is the stand-in (tests/helpers/kubectl_standin.py): its API server is the
    rendered objects and the running pods, so a target naming an object the manifests do not make fails here."""
    from copilot_fleet.pod import procfs
    from tests.helpers.kubectl_standin import install
    from tests.helpers.kubelet import PODMAN

    stack.lease_store()
    stack.cli()
    document = stack.world.cluster_target()
    forwards, pods = stack.world.api_server_forwards()
    bin_dir = tmp_path / "bin"
    pids = tmp_path / "forward-pids"
    bin_dir.mkdir()
    pids.mkdir()
    install(bin_dir)
    standin = tmp_path / "kubectl-standin.json"
    standin.write_text(json.dumps({"context": "runtime-tier", "forwards": forwards, "pids": str(pids),
                                   "pods": pods, "podman": list(PODMAN)}))
    env = {**os.environ, "KUBECTL_STANDIN": str(standin), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc, passed = run_verify(document, tmp_path, env)
    assert proc.returncode == 0, f"verify failed:\n{proc.stdout}\n{proc.stderr}"
    assert "through kubectl port-forward (context runtime-tier)" in proc.stdout.splitlines()[0], proc.stdout
    assert {"test_persistent_session_lifecycle", *POD_CHECKS} <= passed, proc.stdout
    forwarded = [line for line in proc.stdout.splitlines() if line.startswith("  forward  ")]
    servers = len(document.get("replicas") or []) + len(document.get("users") or {})
    assert len(forwarded) >= servers, proc.stdout
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == len(forwarded), (started, forwarded)
    assert not [p for p in started if procfs.is_alive(p)], "forwards left running"


def _plant_session(sessions: Path, session_id: str, age_days: float) -> Path:
    """A session directory as the CLI leaves it (uid 1000), last touched `age_days` ago."""
    directory = sessions / session_id
    directory.mkdir()
    stamp = time.time() - age_days * 86400
    updated = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(stamp))
    (directory / "workspace.yaml").write_text(f"id: {session_id}\ncreated_at: {updated}\nupdated_at: {updated}\n")
    (directory / "events.jsonl").write_text('{"type":"session.start"}\n')
    for path in (directory / "workspace.yaml", directory / "events.jsonl", directory):
        os.chown(path, 1000, 1000)
        os.utime(path, (stamp, stamp))
    return directory


def test_janitor_job_runs(stack: Started) -> None:
    """One Job of each janitor CronJob, from its rendered pod template: it reads the lease store URL from its
    Secret file (shared patterns: it takes leases in Redis over cluster DNS), removes a session past the TTL and
    keeps a recent one, and exits 0."""
    stack.lease_store()
    stack.cli()
    jobs = list(stack.world.janitor_jobs())
    assert jobs, "the stack renders no janitor CronJob"
    for pod_name, template in jobs:
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]
                     if "persistentVolumeClaim" in v)
        sessions = stack.world.node.claim_dir(claim)
        old = _plant_session(sessions, f"janitor-old-{pod_name}", age_days=30)
        recent = _plant_session(sessions, f"janitor-recent-{pod_name}", age_days=0)
        pod = stack.world.run_janitor(pod_name, template)
        deadline = template["spec"].get("active_deadline_seconds") or 600
        code = pod.wait_exit(timeout=float(deadline))
        output = pod.logs()
        assert code == 0, pod.exit_report("failed")
        assert not old.exists(), f"{pod_name}: the session past its TTL is still there:\n{output}"
        assert recent.exists(), f"{pod_name}: a recent session was removed:\n{output}"
        shutil.rmtree(recent)


def test_cli_code_lives_in_the_image(stack: Started) -> None:
    """The CLI's unpacked runtime (about 235 MB) is part of the image, root-owned: nothing is unpacked onto the
    retained home volume, where a truncated file broke a replica on every later start."""
    for pod in stack.cli():
        home = pod.volume_dirs["copilot-home"]
        unpacked = [str(p.relative_to(home)) for p in home.rglob("pkg") if p.is_dir()]
        assert not unpacked, f"{pod.name}: the CLI unpacked itself onto its home volume: {unpacked}"
        check = pod.exec("sh", "-c", 'test -d "$COPILOT_CACHE_HOME/pkg" && test -O "$COPILOT_CACHE_HOME/pkg"; '
                         'echo owner-is-me=$?; test -w "$COPILOT_CACHE_HOME/pkg"; echo writable=$?')
        assert "owner-is-me=1" in check.stdout and "writable=1" in check.stdout, (
            f"{pod.name}: the image's CLI runtime is missing or writable by the server: {check.stdout}{check.stderr}")



def test_retained_home_holds_only_config_and_session_store(stack: Started) -> None:
    """After verify's sessions, the retained home volume holds the CLI's config and its session store, not its logs
    (an emptyDir) or files of the agents' tools (the working directory is an emptyDir)."""
    for pod in stack.cli():
        home = pod.volume_dirs["copilot-home"]
        logs = sorted(str(p.relative_to(home)) for p in home.rglob("*.log"))
        assert not logs, f"{pod.name}: logs on the retained home volume: {logs}"
        in_pod = pod.exec("sh", "-c", 'ls "$COPILOT_HOME/logs"; pwd').stdout.split()
        assert any(name.startswith("process-") for name in in_pod), f"{pod.name}: the CLI wrote no log: {in_pod}"
        assert pod.main["working_dir"] in in_pod



_CONNECT_ALL = """
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), 5).close()
        out[f"{host}:{port}"] = True
    except OSError:
        out[f"{host}:{port}"] = False
print(json.dumps(out))
"""


def _connects(pod: RunningPod, *targets: tuple[str, int]) -> dict[str, bool]:
    """Which TCP connections from inside the pod's container get through (as a session's tool run would try)."""
    proc = pod.exec("python3", "-c", _CONNECT_ALL, json.dumps(targets), timeout=60)
    assert proc.returncode == 0, f"{pod.name}: {proc.stderr}"
    return json.loads(proc.stdout)


def test_egress_policy_holds_inside_the_cli_pods(stack: Started) -> None:
    """The rendered egress policy, enforced in the pods' network namespaces: the CLI reaches its (private) model
    endpoint, which the stack allows, but not the lease store, another CLI pod or the cloud metadata address."""
    stores = stack.lease_store()
    pods = stack.cli()
    for pod in pods:
        assert pod.egress_rules is not None, f"{pod.name}: no egress policy selects it"
        blocked = [("169.254.169.254", 80), *((s.address, port) for s in stores for port in s.ports),
                   *((o.address, 4321) for o in pods if o is not pod)]
        result = _connects(pod, (MODEL_HOST, MODEL_PORT), *blocked)
        assert result.pop(f"{MODEL_HOST}:{MODEL_PORT}"), f"{pod.name}: the allowed model endpoint is blocked"
        assert not any(result.values()), f"{pod.name} gets through to {[t for t, ok in result.items() if ok]}"


def test_egress_policy_opens_only_the_public_ports(stack: Started) -> None:
    """Public addresses: 443 (GitHub, public model endpoints) gets through, 80 does not. Uses the package registry
    address this machine reaches on both ports; skipped where it reaches none."""
    try:
        address = socket.gethostbyname("pypi.org")
        for port in (443, 80):
            socket.create_connection((address, port), 5).close()
    except OSError as exc:
        pytest.skip(f"this machine reaches no public address on 443 and 80 to try ({exc})")
    pod = stack.cli()[0]
    result = _connects(pod, (address, 443), (address, 80))
    assert result == {f"{address}:443": True, f"{address}:80": False}, f"{pod.name}: {result}"


def test_image_pulls_log_in_where_the_stack_says(stack: Started) -> None:
    """With fleet:imagePullCredentials the CLI pods name a kubernetes.io/dockerconfigjson Secret (on Azure the one
    Key Vault sync makes) holding a login for the CLI image's registry: the kubelet's keyring finds it. Without it
    they name none."""
    login = stack.world.config.get("fleet:imagePullCredentials")
    for pod in stack.cli():
        if login is None:
            assert not pod.spec.get("image_pull_secrets"), pod.name
            continue
        assert pod.pull_logins.get(pod.main["name"]) == login["server"], (
            f"{pod.name}: no pull login for {pod.main['image']} ({pod.spec.get('image_pull_secrets')})")


# What a session's tool run tries in the CLI pod: the server's credentials through /proc, the service account
# token, credentials in its own environment. One line per finding, so the model repeats all of it.
_TOOL_RUN_PROBE = (
    "cat /proc/1/environ >/dev/null 2>&1 && echo environ=read || echo environ=denied; "
    "ls /proc/1/fd >/dev/null 2>&1 && echo fd=read || echo fd=denied; "
    "test -e /var/run/secrets/kubernetes.io/serviceaccount && echo satoken=present || echo satoken=absent; "
    "echo credentials-in-env=$(env | grep -c -E 'COPILOT_(CONNECTION|GITHUB)_TOKEN|API_KEY'); "
    "echo uid=$(id -u)")


def test_a_tool_run_cannot_read_the_clis_credentials(stack: Started) -> None:
    """The CLI is installed root-owned and execute-only (0711), so the kernel makes its process non-dumpable: a
    session's tool run (the same uid 1000, here run by the real CLI for a prompt-injected model and an approving
    client, the worst case) cannot read the server's environment (/proc/1/environ: the connection token, the GitHub
    token, the provider key) or its file descriptors; no service account token is mounted, and its own environment
    holds no credential. The CLI still serves (the session ran), and its command line stays readable for probes."""
    from copilot_fleet.target import parse_target
    from tests.helpers.attacker import tool_run

    pods = stack.cli()
    stack.lease_store()
    target = parse_target(json.dumps(stack.world.target()), source="runtime tier")
    secret_values = target.secret_values()
    for pod in pods:
        address = f"127.0.0.1:{pod.ports[int(pod.main['ports'][0]['container_port'])]}"
        token = (target.connection_token.get_secret_value() if target.connection_token is not None
                 else next(t.get_secret_value() for u, t in target.user_tokens.items()
                           if target.users[u] == address))
        run = tool_run(address, token, target, _TOOL_RUN_PROBE)
        found = dict(line.split("=", 1) for line in run.output.split() if "=" in line)
        assert found == {"environ": "denied", "fd": "denied", "satoken": "absent", "credentials-in-env": "0",
                         "uid": "1000"}, f"{pod.name}: {run.output}"
        assert not [n for n, v in secret_values.items() if v in run.reply], f"{pod.name}: a secret came back"
        seen = pod.exec("sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline", user="1000")
        assert "--headless" in seen.stdout, f"{pod.name}: the CLI's command line is unreadable: {seen}"


def _tcp_probe(targets: list[tuple[str, int]]) -> str:
    """A shell command a tool run can give: one `net:HOST:PORT=open|closed` word per target (bash's /dev/tcp, no
    tool the image would have to add; `timeout` because a dropped SYN never answers)."""
    return "; ".join(f"timeout 5 bash -c '</dev/tcp/{host}/{port}' 2>/dev/null "
                     f"&& echo net:{host}:{port}=open || echo net:{host}:{port}=closed" for host, port in targets)


def test_a_tool_run_reaches_only_what_the_egress_policy_allows(stack: Started) -> None:
    """The same attacker as above, on the network: from a session's shell tool in each CLI pod, the model endpoint
    the stack allows answers; the cloud metadata address, the lease store and the other CLI pods do not (the
    rendered egress policy, enforced in the pod's network namespace, which the tool run shares with its server)."""
    from copilot_fleet.target import parse_target
    from tests.helpers.attacker import tool_run

    stores = stack.lease_store()
    pods = stack.cli()
    target = parse_target(json.dumps(stack.world.target()), source="runtime tier")
    for pod in pods:
        address = f"127.0.0.1:{pod.ports[int(pod.main['ports'][0]['container_port'])]}"
        token = (target.connection_token.get_secret_value() if target.connection_token is not None
                 else next(t.get_secret_value() for u, t in target.user_tokens.items()
                           if target.users[u] == address))
        blocked = [("169.254.169.254", 80), *((s.address, port) for s in stores for port in s.ports),
                   *((o.address, 4321) for o in pods if o is not pod)]
        run = tool_run(address, token, target, _tcp_probe([(MODEL_HOST, MODEL_PORT), *blocked]))
        found = dict(word.split("=", 1) for word in run.output.split() if word.startswith("net:"))
        expected = {f"net:{MODEL_HOST}:{MODEL_PORT}": "open", **{f"net:{h}:{p}": "closed" for h, p in blocked}}
        assert found == expected, f"{pod.name}: {run.output}"


def test_recycle_bounds_still_see_the_cli(stack: Started) -> None:
    """The readiness probe as rendered, with a memory bound below what any CLI uses: it must fail, naming the
    bound. A non-dumpable CLI hides its sockets from its own user; a probe that looked the CLI up by its port would
    find nothing and pass, and recycling would stop without a word."""
    for pod in stack.cli():
        command = [*pod.main["readiness_probe"]["exec"]["command"], "--recycle-rss-mb", "64"]
        proc = pod.exec(*command, timeout=30)
        assert proc.returncode == 1 and "past its recycle bound" in proc.stdout, f"{pod.name}: {proc}"


def test_a_restarted_cli_prunes_its_old_logs(stack: Started) -> None:
    """The CLI writes a log per process start into the pod's log volume (an emptyDir that outlives container
    restarts), and nothing removes them: a crash loop or recycling would fill it and the kubelet would evict the
    pod. At every start the container's command keeps the newest few before the CLI starts (one pod of one stack:
    the command is the same in every stack)."""
    from copilot_fleet import cli_logs

    if stack.world.rendered.stack != "k8s-shared-cli":
        pytest.skip("the CLI container's command is the same in every stack: shown on k8s-shared-cli")
    pod = stack.cli()[0]
    logs = pod.volume_dirs["logs"]
    now_ms = int(time.time() * 1000)
    for i in range(8):  # earlier starts of the container, as the CLI names them (PID 1 in its container)
        old = logs / f"process-{now_ms - 3_600_000 + i}-1.log"
        old.write_text("earlier start\n")
        os.chown(old, 1000, 1000)
    pod.restart()
    names = sorted(p.name for p in logs.iterdir() if p.name.startswith("process-"))
    assert len(names) <= cli_logs.KEEP, f"{pod.name}: {len(names)} per-start logs after a restart: {names}"
    assert any(int(n.split("-")[1]) > now_ms for n in names), f"{pod.name}: the new start wrote no log: {names}"


# Last: it stops the pods the tests above use.
def test_cli_pods_stop_gracefully(stack: Started) -> None:
    """Pod deletion: the preStop hook (the drain, inside the container) succeeds, then SIGTERM ends the CLI
    within the grace period, without SIGKILL."""
    pods = stack.cli()
    # Pods are deleted together (a rollout or a scale-down stops several at once): their hooks run concurrently.
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        results = list(pool.map(lambda p: p.stop(), pods))
    for pod, result in zip(pods, results, strict=True):
        assert result.pre_stop is not None and result.pre_stop.returncode == 0, (
            f"{pod.name}: preStop hook failed: {result.pre_stop}")
        assert not result.killed, f"{pod.name}: SIGKILL after {result.grace_seconds} s grace:\n{pod.logs()[-2000:]}"
        assert result.exit_code in (0, 143), pod.exit_report(f"exit code {result.exit_code} on SIGTERM")
