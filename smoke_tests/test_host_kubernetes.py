"""Check 8 for Kubernetes and Azure (AKS) fleets: inside the CLI pods, through pytest-testinfra's `kubectl://`.

Skipped, saying why, when no cluster is configured (no kubectl, or no current context). The pods are found by
`--kube-namespace` and `--kube-selector` (defaults: the target's namespace, and the CLI pods' name label plus the
stack's instance label).
Each `kubectl` call made here is bounded; the commands testinfra runs through `kubectl exec` are bounded by the
run's overall deadline (`copilot-fleet verify --timeout`).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from typing import Any

import pytest

pytestmark = pytest.mark.applies(platform=("kubernetes", "azure"))

KUBECTL_TIMEOUT = 30
DEBUG_LEVELS = ("debug", "all")
CLI_PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -- '--headless'"


def _kubectl(kubectl: str, context: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    base = [kubectl] + ([f"--context={context}"] if context else [])
    return subprocess.run([*base, f"--request-timeout={KUBECTL_TIMEOUT}s", *args], capture_output=True, text=True,
                          timeout=KUBECTL_TIMEOUT + 5, check=False)


def default_selector(stack: str) -> str:
    """The CLI pods of this stack's fleet: the labels components/kubernetes/meta.py gives them (instance: the stack
    name made a valid label value, as there)."""
    instance = re.sub(r"[^A-Za-z0-9._-]", "-", stack)[:63].strip("._-") or "default"
    return f"app.kubernetes.io/name=copilot-cli,app.kubernetes.io/instance={instance}"


def pods_namespace(target) -> str:
    """The target's namespace, else the one its cluster DNS names share (`<service>.<namespace>.svc...`), else the
    fleet:namespace default."""
    from copilot_fleet.clusterdns import DEFAULT_NAMESPACE, namespaces
    from copilot_fleet.portforward import cluster_addresses

    if target.namespace:
        return target.namespace
    found = namespaces(cluster_addresses(target))
    return found[0] if len(found) == 1 else DEFAULT_NAMESPACE


@pytest.fixture(scope="module")
def cluster(pytestconfig: pytest.Config, target) -> dict[str, Any]:
    """The kubectl context, namespace and Running CLI pods; skip when no cluster is configured."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no cluster configured: kubectl is not installed (run the suite from a machine or pod with "
                    "kubectl access to the cluster)")
    context = pytestconfig.getoption("--kube-context")
    if context is None:
        current = _kubectl(kubectl, None, "config", "current-context")
        if current.returncode != 0 or not current.stdout.strip():
            pytest.skip("no cluster configured: kubectl has no current context (kubectl config use-context NAME, "
                        "or pass --kube-context)")
        context = current.stdout.strip()
    namespace = pytestconfig.getoption("--kube-namespace") or pods_namespace(target)
    selector = pytestconfig.getoption("--kube-selector") or default_selector(target.stack)
    listed = _kubectl(kubectl, context, "get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    assert listed.returncode == 0, (f"kubectl (context {context}) cannot list pods in {namespace}: "
                                    f"{listed.stderr.strip()[-400:]}")
    items = json.loads(listed.stdout)["items"]
    assert items, f"no pods match {selector!r} in namespace {namespace} (context {context}); see --kube-selector"
    return {"kubectl": kubectl, "context": context, "namespace": namespace, "items": items,
            "pods": [p["metadata"]["name"] for p in items]}


def _host(cluster: dict[str, Any], pod: str) -> Any:
    import testinfra

    return testinfra.get_host(f"kubectl://{pod}?namespace={cluster['namespace']}&context={cluster['context']}")


def _home(host: Any) -> str:
    home = host.run("printenv COPILOT_HOME").stdout.strip()
    return home or host.run("printf %s \"$HOME/.copilot\"").stdout.strip()


def test_pods_running(cluster, target) -> None:
    """pods: every CLI pod Running and ready, one per server in the target"""
    not_ready = []
    for pod in cluster["items"]:
        name, phase = pod["metadata"]["name"], pod["status"].get("phase")
        statuses = pod["status"].get("containerStatuses") or []
        if phase != "Running" or not statuses or not all(s.get("ready") for s in statuses):
            not_ready.append(f"{name} ({phase}, ready: {[s.get('ready') for s in statuses]})")
    assert not not_ready, f"CLI pods not ready: {not_ready}"
    servers = len(target.replicas) + len(target.users)
    if servers:
        assert len(cluster["pods"]) == servers, (f"{len(cluster['pods'])} CLI pods run, the target lists "
                                                 f"{servers} servers")


# Store mode: a shell exec'd into a CLI container would get the container's environment, the store URL included,
# where a concurrent tool run could read it (docs/kubernetes.md, Store mode): these checks read the pods' specs.
NO_EXEC_IN_STORE_MODE = ("store mode: no shell is exec'd into a CLI container (it would get the store URL, readable "
                         "by a concurrent tool run); the pod specs are checked instead")


def test_store_mode_pods_keep_no_session_state(cluster, target) -> None:
    """pods (store mode): no session volume, the provider under an init, the store URL from a Secret only"""
    if not target.store_mode:
        pytest.skip("applies to store mode only")
    secret_values = target.secret_values()
    for pod in cluster["items"]:
        name, spec = pod["metadata"]["name"], pod["spec"]
        claims = [v["name"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v]
        assert not claims, f"{name}: store mode, yet the CLI pod mounts claims {claims}"
        (container,) = [c for c in spec["containers"] if "copilot_fleet.sessionstore" in (c.get("command") or [])]
        mounts = [m["mountPath"] for m in container.get("volumeMounts") or []]
        assert not [m for m in mounts if m.endswith("/session-state")], f"{name}: a volume at session-state/"
        store_env = [e for e in container.get("env") or [] if e["name"] == "COPILOT_FLEET_STORE_REDIS_URL"]
        assert store_env and "secretKeyRef" in (store_env[0].get("valueFrom") or {}), (
            f"{name}: the store URL does not come from a Secret")
        args = container.get("args") or []
        cli_args = args[args.index("--") + 1:] if "--" in args else []
        level = cli_args[cli_args.index("--log-level") + 1] if "--log-level" in cli_args[:-1] else None
        assert level not in DEBUG_LEVELS, f"{name}: the CLI runs with --log-level {level}: prompts go to disk"
        leaked = [key for key, value in secret_values.items() if any(value in a for a in args)]
        assert not leaked, f"{name}: {leaked} visible in the container's arguments"


def test_session_state_mounted_and_writable(cluster, target) -> None:
    """pods: session-state/ mounted, writable, shared where the pattern shares it"""
    if target.store_mode:
        pytest.skip(NO_EXEC_IN_STORE_MODE)
    marker = f".copilot-fleet-verify-{secrets.token_hex(4)}"
    writer = cluster["pods"][0]
    homes = {}
    try:
        for pod in cluster["pods"]:
            host = _host(cluster, pod)
            homes[pod] = home = _home(host)
            path = f"{home}/session-state"
            assert host.mount_point(path).exists, f"{pod}: {path} is not a mount point (the session volume)"
            probe = host.run(f"touch {path}/{marker}.{pod} && rm {path}/{marker}.{pod}")
            assert probe.rc == 0, f"{pod}: {path} is not writable: {probe.stderr.strip()}"
        if target.isolation != "per-user" and len(cluster["pods"]) > 1:
            wrote = _host(cluster, writer).run(f"touch {homes[writer]}/session-state/{marker}")
            assert wrote.rc == 0, f"{writer}: cannot write {marker}: {wrote.stderr.strip()}"
            for pod in cluster["pods"][1:]:
                assert _host(cluster, pod).file(f"{homes[pod]}/session-state/{marker}").exists, (
                    f"{pod} does not see a file {writer} wrote to session-state/: the volume is not shared"
                )
    finally:
        if writer in homes:
            _host(cluster, writer).run(f"rm -f {homes[writer]}/session-state/{marker}")


def test_cli_process(cluster, target) -> None:
    """pods: CLI up, not at --log-level debug/all, no secret in its arguments"""
    if target.store_mode:
        pytest.skip(NO_EXEC_IN_STORE_MODE)
    secret_values = target.secret_values()
    for pod in cluster["pods"]:
        found = _host(cluster, pod).run(CLI_PROCESSES)
        lines = [line for line in found.stdout.splitlines() if line.strip()]
        assert lines, f"{pod}: no `copilot --headless` process"
        for line in lines:
            args = line.split()
            level = args[args.index("--log-level") + 1] if "--log-level" in args[:-1] else None
            assert level not in DEBUG_LEVELS, f"{pod}: the CLI runs with --log-level {level}: prompts go to disk"
            leaked = [name for name, value in secret_values.items() if value in line]
            assert not leaked, f"{pod}: {leaked} visible in the CLI's arguments"
