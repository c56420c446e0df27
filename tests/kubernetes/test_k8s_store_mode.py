"""Store mode on Kubernetes (fleet:sessionState.mode store), each pattern through the real program under the mock
engine: no session volume, the provider as the CLI container's command under tini, the store URL of the scope's own
ACL user from a Secret (the provider's alone), readiness only once the provider registered, Redis durable, never
evicting and with one ACL user per scope, the janitor on the store, the target a store-mode client needs, the
HorizontalPodAutoscaler, and every object valid as the API server would have it (strict schema)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from copilot_fleet import render
from copilot_fleet.components.kubernetes import store
from copilot_fleet.pod import health, janitor
from copilot_fleet.sessionstore import __main__ as provider_main
from copilot_fleet.spec import quantity_value
from tests.helpers.kubelet import expand

PATTERNS = ("shared-cli", "shared-session", "per-user")
STORE = {"sessionState": {"mode": "store"}}


def store_values(kube: Any, pattern: str, **overrides: Any) -> dict[str, Any]:
    """The pattern's minimal fleet in store mode: without the session volume's keys and the external Redis (store
    mode runs its own), which store mode refuses."""
    base = dict(kube.BASE[pattern][0])
    base.pop("storage", None)
    base.pop("redis", None)
    return kube.deep_merge(kube.deep_merge(base, STORE), overrides)


@pytest.fixture(params=PATTERNS)
def pattern(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fleet(pattern: str, kube: Any, make_fleet: Callable[..., Any]) -> Any:
    return make_fleet(values=store_values(kube, pattern), secret_keys=kube.BASE[pattern][1] - {"redis"})


def cli_sets(fleet: Any) -> list[dict[str, Any]]:
    return [s for s in fleet.of_kind("StatefulSet") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "cli"]


def test_no_session_volume_and_the_home_is_an_emptydir(fleet: Any) -> None:
    assert fleet.of_kind("PersistentVolumeClaim") == [] and fleet.of_kind("PersistentVolume") == []
    for sts in cli_sets(fleet):
        spec = sts["spec"]
        assert not spec.get("volumeClaimTemplates"), sts["metadata"]["name"]
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert "sessions" not in volumes and "emptyDir" in volumes["copilot-home"]
        (container,) = spec["template"]["spec"]["containers"]
        assert all(m["mountPath"] != "/var/lib/copilot/session-state" for m in container["volumeMounts"])


def test_the_cli_container_runs_the_provider_under_tini(fleet: Any, kube: Any) -> None:
    """The command is tini, then the execute-only interpreter running the provider; its arguments parse with the
    provider's own parser: the group's scope, the server id the target lists, the CLI's port on every address,
    the ready file; the CLI's own flags after `--`, whose --secret-env-vars never names the store URL."""
    target = fleet.target()
    for sts in cli_sets(fleet):
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert container["command"] == [store.INIT, "--", store.SEALED_PYTHON, "-m", "copilot_fleet.sessionstore"]
        first_pod = f"{sts['metadata']['name']}-0"
        # As the kubelet expands $(VAR) for the first pod.
        args = provider_main.parser().parse_args([expand(a, {"POD_NAME": first_pod}) for a in container["args"]])
        user = sts["spec"]["template"]["metadata"]["labels"].get("copilot-fleet/user")
        assert args.scope == (user or "shared")
        assert (str(args.cli), str(args.home), str(args.workdir)) == (store.CLI_BINARY, "/var/lib/copilot",
                                                                      container["workingDir"])
        assert (args.host, args.port, str(args.ready_file)) == ("0.0.0.0", 4321, store.READY_FILE)
        address = target.users[user] if user else target.replicas[0]
        assert target.server_id(address) == args.server_id == address
        assert "--host" not in args.cli_args and "--port" not in args.cli_args
        (secret_env,) = [a for a in args.cli_args if a.startswith("--secret-env-vars=")]
        env = kube.env_of(container)
        assert store.STORE_URL_ENV not in secret_env.split("=", 1)[1].split(",")
        assert env["COPILOT_CONNECTION_TOKEN"]["valueFrom"] and "COPILOT_CONNECTION_TOKEN" in secret_env
        ref = env[store.STORE_URL_ENV]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{sts['metadata']['name']}-credentials", "key": store.STORE_URL_KEY}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_every_process_the_kubelet_execs_is_non_dumpable(fleet: Any) -> None:
    """The container's environment holds the store URL, and the kubelet gives it to every probe and hook it execs:
    each one runs the execute-only interpreter (never a shell, sleep or the plain python3). Readiness and liveness
    also require the provider's ready file."""
    for sts in cli_sets(fleet):
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        execs = [container[p]["exec"]["command"] for p in ("readinessProbe", "livenessProbe")]
        execs.append(container["lifecycle"]["preStop"]["exec"]["command"])
        assert all(c[0] == store.SEALED_PYTHON for c in execs), execs
        for command in execs[:2]:
            assert command[1:3] == ["-m", "copilot_fleet.pod.health"]
            parsed = health.build_parser().parse_args(command[3:])
            assert str(parsed.ready_file) == store.READY_FILE and parsed.port == 4321
        assert "tcpSocket" in container["startupProbe"]


def _store_config_users(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^user (\S+) .* #([0-9a-f]{64})$", text, re.M)}


def test_each_scope_has_its_own_acl_user_and_url(fleet: Any) -> None:
    """Each group's Secret holds the URL of its scope's ACL user on the in-cluster Redis Service; Redis' Secret the
    ACL users with their passwords as SHA-256 only; every scope its own password."""
    redis_secret = fleet.get("Secret", "copilot-redis")["stringData"]
    users = _store_config_users(redis_secret[store.STORE_CONFIG_KEY])
    namespace = fleet.of_kind("Namespace")[0]["metadata"]["name"]
    passwords = set()
    for sts in cli_sets(fleet):
        name = sts["metadata"]["name"]
        url = fleet.get("Secret", f"{name}-credentials")["stringData"][store.STORE_URL_KEY]
        scope = sts["spec"]["template"]["metadata"]["labels"].get("copilot-fleet/user") or "shared"
        match = re.fullmatch(rf"redis://copilot-store-{scope}:(\w{{40}})@copilot-redis\.{namespace}\.svc\.cluster"
                             r"\.local:6379/0", url)
        assert match, url
        password = match.group(1)
        passwords.add(password)
        assert users[f"copilot-store-{scope}"] == hashlib.sha256(password.encode()).hexdigest()
        assert password not in redis_secret[store.STORE_CONFIG_KEY]
    assert len(passwords) == len(users) == len(cli_sets(fleet))
    line = next(li for li in redis_secret[store.STORE_CONFIG_KEY].splitlines() if li.startswith("user"))
    assert "-@all" in line and "+evalsha" in line and "+keys" not in line


def test_redis_is_durable_never_evicts_and_reads_the_acl_users(fleet: Any) -> None:
    sts = fleet.get("StatefulSet", "copilot-redis")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert option["--appendonly"] == "yes" and option["--appendfsync"] == "everysec"
    assert option["--maxmemory-policy"] == "noeviction" and option["--include"] == "/etc/copilot-redis/store.conf"
    memory = container["resources"]["limits"]["memory"]
    assert memory == container["resources"]["requests"]["memory"] == "1Gi"
    assert int(option["--maxmemory"]) == quantity_value(memory) // 2
    (auth,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth"]
    assert {i["key"] for i in auth["secret"]["items"]} == {"auth.conf", store.STORE_CONFIG_KEY}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_appendfsync_and_memory_come_from_the_stack(kube: Any, make_fleet: Callable[..., Any]) -> None:
    values = store_values(kube, "per-user", sessionState={"mode": "store", "appendfsync": "always"},
                          redis={"memory": "3Gi", "storageSize": "8Gi"})
    fleet = make_fleet(values=values, secret_keys={"users"})
    (container,) = fleet.get("StatefulSet", "copilot-redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendfsync") + 1] == "always"
    assert int(args[args.index("--maxmemory") + 1]) == 3 * 1024**3 // 2


def test_the_store_is_reached_by_the_cli_pods_only_on_its_port(fleet: Any) -> None:
    """The providers reach Redis (its ingress admits the CLI pods; their egress allows the Redis pods on 6379)."""
    ingress = fleet.get("NetworkPolicy", "copilot-redis-ingress")["spec"]["ingress"][0]
    cli_selector = cli_sets(fleet)[0]["spec"]["template"]["metadata"]["labels"]
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "cli"
               and "namespaceSelector" not in p for p in ingress["from"])
    assert ingress["ports"] == [{"port": 6379, "protocol": "TCP"}]
    egress = fleet.get("NetworkPolicy", "copilot-cli-egress")["spec"]["egress"]
    to_store = [r for r in egress if any(p.get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/component") == "lease-store" for p in r.get("to", []))]
    assert to_store == [{"to": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": cli_selector["app.kubernetes.io/instance"],
        "app.kubernetes.io/component": "lease-store"}}}], "ports": [{"port": 6379, "protocol": "TCP"}]}]


def test_the_janitor_cleans_its_scope_in_the_store(fleet: Any) -> None:
    """One janitor per group, on its store scope (the janitor's own parser reads the command), with the admin URL
    as a file; no volume of sessions."""
    jobs = fleet.of_kind("CronJob")
    assert len(jobs) == len(cli_sets(fleet))
    scopes = set()
    for job in jobs:
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][:3] == ["python3", "-m", "copilot_fleet.pod.janitor"]
        args = janitor.build_parser().parse_args(container["command"][3:])
        assert args.session_state is None and args.require_leases
        assert args.redis_url_file == "/var/run/copilot-fleet/redis-url"
        scopes.update(args.store_scope)
        assert [v["name"] for v in pod["volumes"]] == ["lease-store"]
        assert "affinity" not in pod
    assert scopes == {s["spec"]["template"]["metadata"]["labels"].get("copilot-fleet/user") or "shared"
                      for s in cli_sets(fleet)}


def test_the_target_says_store_mode_and_each_server_id(fleet: Any, pattern: str) -> None:
    target = fleet.target()
    assert target.store_mode and target.redis_url is not None
    addresses = list(target.users.values()) if pattern == "per-user" else target.replicas
    assert target.session_state.server_ids == {a: a for a in addresses}
    if pattern == "per-user":
        assert target.session_state.user_scopes == {u: u for u in target.users}
        assert target.store_scope("alice") == "alice"
    else:
        assert target.store_scope("alice") == "shared"
        assert target.endpoint is not None and target.server_id(target.endpoint) == "*"


def test_every_object_is_valid_for_the_api_server(fleet: Any) -> None:
    validator = render.SchemaValidator("1.33")
    errors = [e for obj in fleet.objects for e in validator.errors(obj)]
    assert errors == []


@pytest.mark.parametrize("mode", ["store", "volume"])
def test_the_autoscaler_scales_the_shared_replicas(mode: str, kube: Any, make_fleet: Callable[..., Any]) -> None:
    if mode == "store":
        values = store_values(kube, "shared-cli", autoscaling={"maxReplicas": 9, "cpuUtilization": 60})
    else:
        values = kube.deep_merge(kube.BASE["shared-cli"][0], {"autoscaling": {"maxReplicas": 9}})
    fleet = make_fleet(values=values, secret_keys={"githubToken"})
    hpa = fleet.get("HorizontalPodAutoscaler", "copilot-cli")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "copilot-cli"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 9)
    assert spec["metrics"][0]["resource"]["target"] == {"type": "Utilization",
                                                        "averageUtilization": 60 if mode == "store" else 70}
    down = spec["behavior"]["scaleDown"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert down["stabilizationWindowSeconds"] == 300
    assert render.SchemaValidator("1.33").errors(hpa) == []
    # Pulumi leaves the replica count to the autoscaler once the set exists.
    (sts,) = [r for r in fleet.run.registrations if r.typ == "kubernetes:apps/v1:StatefulSet"
              and r.name == "copilot-cli"]
    assert sts.inputs["spec"]["replicas"] == 3
    assert fleet.target().replicas and len(fleet.target().replicas) == 3


def test_no_autoscaler_without_the_key(kube: Any, make_fleet: Callable[..., Any]) -> None:
    fleet = make_fleet(values=store_values(kube, "shared-session"), secret_keys={"provider"})
    assert fleet.of_kind("HorizontalPodAutoscaler") == []


def test_verify_checks_store_pods_from_their_specs(fleet: Any) -> None:
    """verify's pod check for store mode reads the pod specs (no shell exec'd into a container holding the store
    URL): it passes on the rendered pods and fails on a pod that mounts a claim at session-state/."""
    import copy

    from copilot_fleet.smoke_tests import test_host_kubernetes as host

    pods = [{"metadata": {"name": f"{s['metadata']['name']}-0"}, "spec": s["spec"]["template"]["spec"]}
            for s in cli_sets(fleet)]
    target = fleet.target()
    host.test_store_mode_pods_keep_no_session_state({"items": pods}, target)
    broken = copy.deepcopy(pods[0])
    broken["spec"]["volumes"].append({"name": "sessions", "persistentVolumeClaim": {"claimName": "x"}})
    with pytest.raises(AssertionError, match="mounts claims"):
        host.test_store_mode_pods_keep_no_session_state({"items": [broken]}, target)
