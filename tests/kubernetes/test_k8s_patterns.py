"""What each isolation pattern deploys on Kubernetes: properties of the mocked program's registrations."""

from __future__ import annotations

import re
from typing import Any

import pytest

from copilot_fleet.pod.janitor import build_parser

PATTERNS = ("shared-cli", "shared-session", "per-user")
CREDENTIAL_NAME = re.compile(r"TOKEN|KEY|PASSWORD|SECRET", re.IGNORECASE)


@pytest.fixture(scope="module", params=PATTERNS)
def pattern(request: pytest.FixtureRequest) -> str:
    return request.param


def cli_sets(fleet, kube):
    return [s for s in fleet.of_kind("StatefulSet")
            if s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "cli"]


def test_session_state_alone_is_on_the_session_volume(make_fleet, kube, pattern):
    fleet = make_fleet(pattern)
    claims = {c["metadata"]["name"]: c for c in fleet.of_kind("PersistentVolumeClaim")}
    for sts in cli_sets(fleet, kube):
        pod = sts["spec"]["template"]["spec"]
        (cli,) = [c for c in pod["containers"] if c["name"] == "copilot"]
        home = kube.env_of(cli)["COPILOT_HOME"]["value"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in cli["volumeMounts"]}
        # session-state/ is the session claim; nothing else of it is mounted anywhere in the pod
        session_volume = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
        assert len(session_volume) == 1
        assert mounts[session_volume[0]] == f"{home}/session-state"
        claim = claims[volumes[session_volume[0]]["persistentVolumeClaim"]["claimName"]]
        expected_mode = "ReadWriteOnce" if pattern == "per-user" else "ReadWriteMany"
        assert claim["spec"]["accessModes"] == [expected_mode]
        # COPILOT_HOME itself is the replica's own: a volumeClaimTemplate (ReadWriteOnce) for the shared patterns,
        # an emptyDir per-user (a disk per user runs into attach limits); never the share
        if pattern == "per-user":
            assert "volumeClaimTemplates" not in sts["spec"]
            (home_volume,) = [n for n, v in volumes.items() if "emptyDir" in v and mounts.get(n) == home]
        else:
            (template,) = sts["spec"]["volumeClaimTemplates"]
            home_mount = mounts[template["metadata"]["name"]]
            assert home == home_mount
            assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert not home.startswith(mounts[session_volume[0]])


def test_mount_points_sit_directly_in_a_volume_root(make_fleet, kube, pattern):
    """A container runtime creates a missing mount point, and every directory above it, as root with mode 0755: a
    mount two levels inside another volume leaves a root-owned directory the non-root server cannot write in (the
    CLI exited 1 on every start; tests/runtime runs the pods in runc)."""
    fleet = make_fleet(pattern)
    for workload in kube.workloads(fleet):
        for container in kube.containers(workload):
            paths = sorted(m["mountPath"] for m in container.get("volumeMounts", []))
            for path in paths:
                inside = [p for p in paths if p != path and path.startswith(p.rstrip("/") + "/")]
                if inside:
                    assert path.rpartition("/")[0] == max(inside, key=len), (
                        f"{workload['metadata']['name']}: {path} is not directly in the root of {max(inside, key=len)}")


def test_node_local_disk_is_bounded_and_nothing_transient_lands_on_the_retained_home(make_fleet, kube, pattern):
    """Every container requests and limits ephemeral-storage; every emptyDir has a sizeLimit; the CLI's logs and its
    working directory (the agents' files) are emptyDirs, not the retained home volume that outlives every pod."""
    fleet = make_fleet(pattern)
    for workload in kube.workloads(fleet):
        spec = kube.pod_template(workload)["spec"]
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{workload['metadata']['name']}: {volume['name']}"
        for container in spec["containers"]:
            resources = container["resources"]
            assert "ephemeral-storage" in resources["requests"] and "ephemeral-storage" in resources["limits"], (
                f"{workload['metadata']['name']}/{container['name']}: no ephemeral-storage bounds")
        if workload["kind"] != "StatefulSet" or "copilot-home" not in {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}:
            continue
        (cli,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in cli["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        home = kube.env_of(cli)["COPILOT_HOME"]["value"]
        assert "emptyDir" in volumes[mounts[f"{home}/logs"]], "the CLI's logs are on the retained home volume"
        assert "emptyDir" in volumes[mounts[cli["workingDir"]]], "the working directory is not an emptyDir"


def test_ephemeral_storage_is_configurable(make_fleet, kube):
    fleet = make_fleet("shared-cli", resources={
        "requests": {"cpu": "250m", "memory": "512Mi", "ephemeralStorage": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi", "ephemeralStorage": "8Gi"}})
    (cli,) = kube.containers(fleet.get("StatefulSet", "copilot-cli"))
    assert cli["resources"]["requests"]["ephemeral-storage"] == "1Gi"
    assert cli["resources"]["limits"]["ephemeral-storage"] == "8Gi"


def test_nested_extra_mount_is_refused(kube):
    from copilot_fleet.components.kubernetes.pod import mount_points_are_direct

    assert mount_points_are_direct(["/var/lib/copilot", "/var/lib/copilot/session-state", "/tmp"]) == []
    assert mount_points_are_direct(["/var/lib/copilot", "/var/lib/copilot/.copilot/session-state"]) == [
        "/var/lib/copilot/.copilot/session-state (inside /var/lib/copilot)"]


def test_shared_patterns_share_one_read_write_many_claim(make_fleet, kube):
    fleet = make_fleet("shared-cli")
    (sts,) = cli_sets(fleet, kube)
    assert sts["spec"]["replicas"] == 3
    claims = [v["persistentVolumeClaim"]["claimName"] for v in sts["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    claim = fleet.get("PersistentVolumeClaim", claims[0])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_credentials_come_from_secret_refs_only(make_fleet, kube, pattern):
    fleet = make_fleet(pattern)
    secrets = {s["metadata"]["name"]: s for s in fleet.of_kind("Secret")}
    seen = set()
    for workload in kube.workloads(fleet):
        for container in kube.containers(workload):
            for name, entry in kube.env_of(container).items():
                if CREDENTIAL_NAME.search(name) and not name.endswith(("_SECONDS", "_ROOT")):
                    assert "value" not in entry, f"{workload['metadata']['name']}: {name} has a literal value"
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secrets[ref["name"]]["stringData"], f"{name}: {ref} does not exist"
                    seen.add(name)
    assert "COPILOT_CONNECTION_TOKEN" in seen
    dump = fleet.dump()
    for value in kube.ALL_SECRETS:
        if value in dump:
            # the clear value may only sit in a Secret's stringData (the render masks even that)
            assert all(value not in str(w) for w in kube.workloads(fleet))
    masked = make_fleet(pattern, mask=True).dump()
    assert not [v for v in kube.ALL_SECRETS if v in masked]
    for token in make_fleet(pattern).outputs.get("user_tokens", {}).values():
        assert token not in masked
    # Nothing a session's tool run could read as a file: the CLI pods mount no Secret (or projected token) volume.
    for sts in cli_sets(fleet, kube):
        volumes = kube.pod_template(sts)["spec"]["volumes"]
        assert not [v["name"] for v in volumes if {"secret", "projected", "csi"} & set(v)], volumes


@pytest.mark.parametrize("idle, expect_flag", [("45m", "2700"), (0, None)])
def test_cli_arguments(make_fleet, kube, idle, expect_flag):
    fleet = make_fleet("shared-cli", idleTimeout=idle, port=5000, logLevel="warning")
    (sts,) = cli_sets(fleet, kube)
    (cli,) = sts["spec"]["template"]["spec"]["containers"]
    args = cli["args"]

    def value_of(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None

    for flag in ("--headless", "--no-auto-update", "--no-auto-login"):
        assert flag in args
    assert value_of("--host") == "0.0.0.0"
    assert value_of("--port") == "5000"
    assert value_of("--log-level") == "warning"
    assert value_of("--session-idle-timeout") == expect_flag
    assert cli["ports"][0]["containerPort"] == 5000
    env = kube.env_of(cli)
    assert env["COPILOT_AUTO_UPDATE"]["value"] == "false"


def test_per_user_gives_each_user_their_own_everything(make_fleet, kube):
    fleet = make_fleet("per-user")
    users = list(kube.USER_TOKENS)
    per_user: dict[str, dict[str, str]] = {u: {} for u in users}
    for sts in cli_sets(fleet, kube):
        labels = sts["spec"]["template"]["metadata"]["labels"]
        user = labels["copilot-fleet/user"]
        pod = sts["spec"]["template"]["spec"]
        assert sts["spec"]["replicas"] == 1
        (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        env = kube.env_of(pod["containers"][0])
        per_user[user] = {
            "sts": sts["metadata"]["name"],
            "claim": claim,
            "token_secret": env["COPILOT_CONNECTION_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
            "github_secret": env["COPILOT_GITHUB_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
        }
        services = [s for s in fleet.of_kind("Service") if s["spec"].get("clusterIP") != "None"
                    and kube.matches(s["spec"]["selector"], labels)]
        assert len(services) == 1, f"{user}: one Service of its own, got {[s['metadata']['name'] for s in services]}"
        # ... and that Service selects no other user's pod
        for other in cli_sets(fleet, kube):
            if other is not sts:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not kube.matches(services[0]["spec"]["selector"], labels)
        per_user[user]["service"] = services[0]["metadata"]["name"]
    assert set(per_user) == set(users)
    for key in ("sts", "claim", "token_secret", "service"):
        assert len({per_user[u][key] for u in users}) == len(users), key
    for u in users:
        assert per_user[u]["github_secret"] == per_user[u]["token_secret"]  # the user's own GitHub token
        fleet.get("PersistentVolumeClaim", per_user[u]["claim"])
        fleet.get("Secret", per_user[u]["token_secret"])
    tokens = fleet.outputs["user_tokens"]
    assert set(tokens) == set(users) and len(set(tokens.values())) == len(users)
    assert "connection_token" not in fleet.outputs and "endpoint" not in fleet.outputs
    assert {"user_tokens"} <= fleet.run.secret_outputs


@pytest.mark.parametrize("pattern, overrides, expect_redis", [
    ("shared-cli", {}, True),
    ("shared-session", {"redis": {"mode": "in-cluster", "url": None}}, True),
    ("shared-session", {}, False),  # external URL
    ("per-user", {}, False),
])
def test_redis_exactly_where_the_pattern_needs_it(make_fleet, kube, pattern, overrides, expect_redis):
    if overrides.get("redis", {}).get("url", "") is None:
        base, keys = kube.BASE[pattern]
        values = {**base, "redis": {"mode": "in-cluster"}}
        fleet = make_fleet(values=values, secret_keys=keys - {"redis"})
    else:
        fleet = make_fleet(pattern, **overrides)
    redis_sets = [s for s in fleet.of_kind("StatefulSet")
                  if s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "lease-store"]
    assert bool(redis_sets) == expect_redis
    if expect_redis:
        (sts,) = redis_sets
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        args = c["args"]
        # The password is in a mounted config file: not on Redis' command line, not in its environment.
        assert "--requirepass" not in args and "env" not in c
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        (config_file,) = [a for a in args if not a.startswith("--") and a.endswith(".conf")]
        auth = volumes[mounts[config_file.rpartition("/")[0]]]["secret"]
        secret = fleet.get("Secret", auth["secretName"])["stringData"]
        password = secret["password"]
        assert secret[auth["items"][0]["key"]] == f"requirepass {password}\n"
        assert auth["defaultMode"] == 0o440
        assert args[args.index("--appendonly") + 1] == "yes"
        assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in c["volumeMounts"]}
        services = [s for s in fleet.of_kind("Service") if kube.matches(s["spec"]["selector"],
                                                                       sts["spec"]["template"]["metadata"]["labels"])]
        svc = [s for s in services if s["spec"].get("clusterIP") != "None"]
        assert svc and svc[0]["spec"]["ports"][0]["port"] == 6379
        # The StatefulSet's governing Service is headless (stable pod DNS), the clients' one is not.
        governing = fleet.get("Service", sts["spec"]["serviceName"])
        assert governing["spec"]["clusterIP"] == "None" and governing in services
        assert c["image"] == "redis:7.2.12-alpine" and c["imagePullPolicy"] == "Always"
        assert "copilot-fleet/secrets-checksum" in sts["spec"]["template"]["metadata"]["annotations"]
        assert fleet.outputs["redis_url"] == (
            f"redis://:{password}@{svc[0]['metadata']['name']}.{sts['metadata']['namespace']}.svc.cluster.local:6379/0")
        assert "redis_url" in fleet.run.secret_outputs
    elif pattern == "per-user":
        assert "redis_url" not in fleet.outputs
    else:
        assert fleet.outputs["redis_url"] == kube.REDIS_URL
        assert "redis_url" in fleet.run.secret_outputs


def _policies_for(fleet, kube, pod_labels):
    return [p for p in fleet.of_kind("NetworkPolicy")
            if kube.matches(p["spec"]["podSelector"]["matchLabels"], pod_labels)]


def _admits(policy, kube, client_labels, port):
    for rule in policy["spec"].get("ingress", []):
        if any(p["port"] == port for p in rule.get("ports", [])):
            for peer in rule.get("from", []):
                if "podSelector" in peer and kube.matches(peer["podSelector"]["matchLabels"], client_labels):
                    return True
    return False


def test_network_policies_admit_only_clients(make_fleet, kube):
    fleet = make_fleet("shared-cli", clientSelector={"app": "chat"})
    pods = {w["metadata"]["name"]: kube.pod_template(w)["metadata"]["labels"] for w in kube.workloads(fleet)}
    for name, labels in pods.items():
        policies = _policies_for(fleet, kube, labels)
        assert any(p["spec"]["policyTypes"] == ["Ingress"] and p["spec"]["ingress"] == [] for p in policies), \
            f"{name} is not under the default-deny policy"
    cli = pods["copilot-cli"]
    redis = pods["copilot-redis"]
    client = {"app": "chat"}
    stranger = {"app": "other"}

    def admitted(target, source, port):
        return any(_admits(p, kube, source, port) for p in _policies_for(fleet, kube, target))

    assert admitted(cli, client, 4321)
    assert not admitted(cli, stranger, 4321)
    assert not admitted(cli, client, 6379)
    assert admitted(redis, client, 6379)
    # the servers never use the lease store: a session's tool run on one must not reach it
    assert not admitted(redis, cli, 6379)
    assert not admitted(redis, stranger, 6379)
    # the janitor takes a session's lease before deleting it
    assert admitted(redis, pods["copilot-session-janitor"], 6379)


def test_per_user_servers_are_unreachable_from_other_users_pods(make_fleet, kube):
    fleet = make_fleet("per-user", clientSelector={"app": "chat"})
    labels = [s["spec"]["template"]["metadata"]["labels"] for s in cli_sets(fleet, kube)]
    servers = {label["copilot-fleet/user"]: label for label in labels}
    for user, labels in servers.items():
        for client_user in servers:
            client = {"app": "chat", "copilot-fleet/user": client_user}
            ok = any(_admits(p, kube, client, 4321) for p in _policies_for(fleet, kube, labels))
            assert ok == (client_user == user), f"{client_user}'s pods reaching {user}'s server: {ok}"
        # a client pod without a user label reaches no user's server
        assert not any(_admits(p, kube, {"app": "chat"}, 4321) for p in _policies_for(fleet, kube, labels))


def test_per_user_trusted_backend_reaches_every_users_server(make_fleet, kube):
    """One backend that serves all users (fleet:backendSelector) reaches every user's server; other client pods
    still reach only their own user's."""
    fleet = make_fleet("per-user", clientSelector={"app": "chat"}, backendSelector={"app": "chat-backend"})
    backend = {"app": "chat-backend"}
    for sts in cli_sets(fleet, kube):
        labels = sts["spec"]["template"]["metadata"]["labels"]
        policies = _policies_for(fleet, kube, labels)
        assert any(_admits(p, kube, backend, 4321) for p in policies)
        assert not any(_admits(p, kube, {"app": "chat"}, 4321) for p in policies)
    assert not any(_admits(p, kube, backend, 4321) for sts in cli_sets(make_fleet("per-user"), kube)
                   for p in _policies_for(make_fleet("per-user"), kube, sts["spec"]["template"]["metadata"]["labels"]))


def test_client_namespaces_and_source_ranges_through_args(make_fleet, kube):
    """KubernetesFleetArgs.client_namespace_selector / source_ranges (proposed spec keys) shape the peers."""
    from copilot_fleet.pulumi_config import load_engine_spec
    from copilot_fleet.topology import build_topology

    def program():
        from copilot_fleet.components.common import ConnectionTokens
        from copilot_fleet.components.kubernetes import KubernetesFleet, KubernetesFleetArgs

        topology = build_topology(load_engine_spec())
        tokens = ConnectionTokens("t", topology)
        KubernetesFleet("f", KubernetesFleetArgs(topology, tokens, client_namespace_selector={"team": "chat"},
                                                 source_ranges=["203.0.113.0/24"]))
        return {}

    fleet = make_fleet("shared-session", program=program)
    policy = fleet.get("NetworkPolicy", "copilot-cli-ingress")
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0]["namespaceSelector"] == {"matchLabels": {"team": "chat"}}
    assert peers[0]["podSelector"] == {"matchLabels": {"copilot-fleet/client": "true"}}
    assert {"ipBlock": {"cidr": "203.0.113.0/24"}} in peers
    assert fleet.get("Service", "copilot-cli")["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    redis_peers = [p for p in fleet.of_kind("NetworkPolicy") if "redis" in p["metadata"]["name"]]
    assert not redis_peers  # external Redis: no in-cluster Redis, no policy for it


@pytest.mark.parametrize("replicas, expect_pdb", [(1, False), (3, True)])
def test_disruption_budget_only_with_several_replicas(make_fleet, kube, replicas, expect_pdb):
    fleet = make_fleet("shared-cli", replicas=replicas)
    pdbs = fleet.of_kind("PodDisruptionBudget")
    assert bool(pdbs) == expect_pdb
    if pdbs:
        (sts,) = cli_sets(fleet, kube)
        assert kube.matches(pdbs[0]["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
        assert pdbs[0]["spec"]["maxUnavailable"] == 1
        # A crash-looping replica must not stall node drains (only healthy replicas count as protected).
        assert pdbs[0]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not make_fleet("per-user").of_kind("PodDisruptionBudget")


def test_every_pod_runs_locked_down(make_fleet, kube, pattern):
    fleet = make_fleet(pattern)
    for workload in kube.workloads(fleet):
        pod = kube.pod_template(workload)["spec"]
        where = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
        if workload["kind"] == "StatefulSet":
            mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
    for sts in cli_sets(fleet, kube):
        sc = sts["spec"]["template"]["spec"]["securityContext"]
        assert (sc["runAsUser"], sc["fsGroup"]) == (1000, 1000)


def test_probes_resources_and_graceful_shutdown(make_fleet, kube):
    fleet = make_fleet("shared-cli", port=4400, terminationGraceSeconds=90,
                       resources={"requests": {"cpu": "500m", "memory": "1Gi"},
                                  "limits": {"cpu": "3", "memory": "4Gi"}})
    (sts,) = cli_sets(fleet, kube)
    pod = sts["spec"]["template"]["spec"]
    (cli,) = pod["containers"]
    assert cli["startupProbe"]["tcpSocket"]["port"] == 4400
    for probe in ("readinessProbe", "livenessProbe"):
        # a real JSON-RPC round trip, not a TCP connect: a server that accepts but never answers fails it
        command = cli[probe]["exec"]["command"]
        assert command[:3] == ["python3", "-m", "copilot_fleet.pod.health"]
        assert command[command.index("--port") + 1] == "4400"
    assert cli["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "512Mi"},
                                "limits": {"cpu": "3", "memory": "4Gi", "ephemeral-storage": "4Gi"}}
    assert pod["terminationGracePeriodSeconds"] == 90
    command = cli["lifecycle"]["preStop"]["exec"]["command"]
    # The CLI by its PID (1: the container's command execs it), not its port: it is non-dumpable, and its own user
    # cannot trace the listening socket to it.
    found = re.search(r"copilot_fleet\.pod\.drain --session-state (\S+) --pid 1 --timeout (\d+)", command[-1])
    assert found, command
    assert found.group(1).endswith("/session-state")
    assert 0 < int(found.group(2)) < 90


def test_client_service_type_and_affinity(make_fleet, kube):
    fleet = make_fleet("shared-session", idleTimeout="20m")
    svc = fleet.get("Service", "copilot-cli")["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["sessionAffinity"] == "ClientIP"
    assert svc["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 1200
    plain = make_fleet("shared-cli").get("Service", "copilot-cli")["spec"]
    assert plain["type"] == "ClusterIP" and plain["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in plain
    headless = make_fleet("shared-cli").get("Service", "copilot-cli-headless")["spec"]
    assert headless["clusterIP"] == "None"


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
@pytest.mark.parametrize("affinity", ["None", "ClientIP"])
def test_outside_clients_keep_their_address(make_fleet, kube, service_type, affinity):
    """With any Service outside clients reach, the client's address must survive to the pod: the NetworkPolicy
    admits outside clients by their address (sourceRanges as ipBlock peers), whatever the session affinity."""
    fleet = make_fleet("shared-cli", loadBalancer={"serviceType": service_type, "sessionAffinity": affinity,
                                                    "sourceRanges": ["203.0.113.0/24"], "acceptPlaintext": True})
    assert fleet.get("Service", "copilot-cli")["spec"]["externalTrafficPolicy"] == "Local"
    assert "externalTrafficPolicy" not in make_fleet("shared-cli").get("Service", "copilot-cli")["spec"]


def test_janitor_cleans_the_right_volume(make_fleet, kube, pattern):
    fleet = make_fleet(pattern, janitorSchedule="0 * * * *", sessionTtl="2d")
    jobs = fleet.of_kind("CronJob")
    assert jobs
    claims_used_by_servers = set()
    for sts in cli_sets(fleet, kube):
        claims_used_by_servers |= {v["persistentVolumeClaim"]["claimName"]
                                   for v in sts["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    janitor_claims = set()
    for job in jobs:
        assert job["spec"]["schedule"] == "0 * * * *"
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = kube.pod_template(job)["spec"]
        (c,) = pod["containers"]
        (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        janitor_claims.add(claim)
        # the same janitor as local fleets, once per run, over the mounted session volume
        assert c["command"][:3] == ["python3", "-m", "copilot_fleet.pod.janitor"]
        args = build_parser().parse_args(c["command"][3:])
        mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        claim_volume = next(v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        assert args.session_state == mount[claim_volume]
        assert args.ttl == 2 * 86400
        assert args.every is None and not args.dry_run
        assert pod["securityContext"]["runAsNonRoot"] is True
        if pattern == "per-user":  # ReadWriteOnce: the janitor must land on the server's node
            term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            assert term["topologyKey"] == "kubernetes.io/hostname"
            owners = [s for s in cli_sets(fleet, kube) if claim in str(s["spec"]["template"]["spec"]["volumes"])]
            owner_labels = owners[0]["spec"]["template"]["metadata"]["labels"]
            assert kube.matches(term["labelSelector"]["matchLabels"], owner_labels)
    assert janitor_claims == claims_used_by_servers


def test_credentials_follow_the_configured_model_access(make_fleet, kube):
    byok = make_fleet("shared-session", otlpEndpoint="http://otel.example:4318",
                      egress={"allow": [{"namespace": "example", "ports": [4318]}]})
    (cli,) = cli_sets(byok, kube)[0]["spec"]["template"]["spec"]["containers"]
    env = kube.env_of(cli)
    assert env["COPILOT_PROVIDER_BASE_URL"]["value"] == "https://models.example.com/v1"
    assert env["COPILOT_PROVIDER_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "provider-api-key"
    assert env["COPILOT_OFFLINE"]["value"] == "true"
    assert "COPILOT_GITHUB_TOKEN" not in env
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel.example:4318"
    assert env["COPILOT_OTEL_ENABLED"]["value"] == "true"
    assert env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"]["value"] == "false"
    assert "$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    names = [e["name"] for e in cli["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # $(VAR) refers back only
    github = make_fleet("shared-cli")
    env = kube.env_of(cli_sets(github, kube)[0]["spec"]["template"]["spec"]["containers"][0])
    assert env["COPILOT_GITHUB_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "copilot-fleet-credentials",
                                                                        "key": "github-token"}
    assert not {"COPILOT_OFFLINE", "COPILOT_PROVIDER_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"} & set(env)


def test_outputs_are_the_target(make_fleet, kube, pattern):
    fleet = make_fleet(pattern)
    target = fleet.target()
    base, _ = kube.BASE[pattern]
    ns = base["namespace"]
    assert (target.stack, target.platform, target.isolation) == ("test", "kubernetes", pattern)
    assert target.model == "gpt-4.1"
    if pattern == "per-user":
        assert target.endpoint is None and target.replicas == []
        for user, address in target.users.items():
            svc = fleet.get("Service", address.split(".")[0])
            assert address == f"{svc['metadata']['name']}.{ns}.svc.cluster.local:4321"
            assert svc["spec"]["selector"]["copilot-fleet/user"] == user
        assert target.token_for("alice") != target.token_for("carol")
    else:
        assert target.endpoint == f"copilot-cli.{ns}.svc.cluster.local:4321"
        (sts,) = cli_sets(fleet, kube)
        headless = sts["spec"]["serviceName"]
        assert fleet.get("Service", headless)["spec"]["clusterIP"] == "None"
        assert target.replicas == [f"copilot-cli-{i}.{headless}.{ns}.svc.cluster.local:4321"
                                   for i in range(sts["spec"]["replicas"])]
        assert target.connection_token is not None and target.redis_url is not None
        secret = fleet.get("Secret", "copilot-cli-credentials")["stringData"]["connection-token"]
        assert target.connection_token.get_secret_value() == secret
        assert {"connection_token", "redis_url"} <= fleet.run.secret_outputs
    if pattern == "shared-session":
        assert target.provider is not None and target.provider.to_sdk()["api_key"] == kube.API_KEY
        assert "provider" in fleet.run.secret_outputs
    else:
        assert target.provider is None


def test_program_exports_each_target_key(make_fleet):
    """run() exports one stack output per target key, the same values it returns."""
    seen: dict[str, Any] = {}

    def program():
        from pulumi.runtime import settings

        from copilot_fleet.program import TARGET_KEYS, run

        exported = run()
        root: Any = settings.get_root_resource()  # the Stack resource: its outputs are not public API
        assert root is not None
        seen["stack_outputs"] = sorted(root.outputs)
        seen["keys"] = TARGET_KEYS
        return exported

    fleet = make_fleet("shared-session", program=program)
    assert seen["stack_outputs"] == sorted(fleet.outputs)
    assert set(fleet.outputs) <= set(seen["keys"])
    assert {"stack", "platform", "isolation", "endpoint", "replicas", "connection_token", "redis_url", "provider",
            "model"} <= set(fleet.outputs)


def test_azure_dispatch_needs_the_azure_components(monkeypatch):
    import sys

    from copilot_fleet import program
    from copilot_fleet.spec import FleetSpec

    spec = FleetSpec.model_validate({"isolation": "shared-cli", "platform": "azure",
                                     "image": "registry.example.com/copilot-cli:1.0.102", "githubToken": "x"})
    monkeypatch.setitem(sys.modules, "copilot_fleet.components.azure", None)  # as if the module were not installed
    with pytest.raises(RuntimeError, match="copilot_fleet.components.azure.deploy_azure"):
        program._platform_deployer(spec)
    assert program._platform_deployer(spec.model_copy(update={"platform": "kubernetes"})) is program._deploy_kubernetes


def _checksums(fleet, kube) -> dict[str, str]:
    return {s["metadata"]["name"]: s["spec"]["template"]["metadata"]["annotations"]["copilot-fleet/secrets-checksum"]
            for s in cli_sets(fleet, kube)}


def test_rotated_credentials_roll_the_pods_that_read_them(make_fleet, kube):
    """Env from a Secret is read at container start: a rotated value must change the pod template (a checksum
    annotation) of exactly the pods that read it."""
    base = _checksums(make_fleet("shared-cli"), kube)
    assert base == _checksums(make_fleet("shared-cli"), kube)  # deterministic: no roll without a change
    rotated = _checksums(make_fleet("shared-cli", githubToken="ghp_TESTSECRET_rotated_0009"), kube)
    assert rotated["copilot-cli"] != base["copilot-cli"]
    users = dict(kube.USER_TOKENS)
    per_user = _checksums(make_fleet("per-user"), kube)
    users["alice"] = "ghp_TESTSECRET_alice_rotated"
    after = _checksums(make_fleet("per-user", users=[{"id": u, "githubToken": t} for u, t in users.items()]), kube)
    assert after["copilot-user-alice"] != per_user["copilot-user-alice"]
    assert after["copilot-user-bob-smith"] == per_user["copilot-user-bob-smith"]
    # the annotation is a digest, never a value
    assert all(len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in base.values())


@pytest.mark.parametrize("image, policy", [
    ("registry.example.com/copilot-cli:1.0.102", "Always"),
    ("registry.example.com/copilot-cli:1.0.102@sha256:" + "a" * 64, "IfNotPresent"),
])
def test_a_digest_pins_the_build_a_tag_is_checked_at_every_start(make_fleet, kube, image, policy):
    """A tag can be pushed again: with IfNotPresent, nodes would keep running different builds under one name."""
    fleet = make_fleet("shared-cli", image=image)
    for workload in kube.workloads(fleet):
        for container in kube.containers(workload):
            if container["image"] == image:
                assert container["imagePullPolicy"] == policy, workload["metadata"]["name"]
    assert {c["image"] for w in kube.workloads(fleet) for c in kube.containers(w)} >= {image}


@pytest.mark.parametrize("pattern, persistent, expect_claim", [
    ("per-user", None, False), ("per-user", True, True), ("shared-cli", None, True), ("shared-cli", False, False)])
def test_home_volume_per_pattern(make_fleet, kube, pattern, persistent, expect_claim):
    """per-user homes are emptyDirs by default (a disk per user runs into the nodes' attach limits; resume never
    needs the home), the shared patterns' few replicas keep a volume; storage.persistentHome overrides."""
    storage = {"accessMode": "ReadWriteOnce"} if pattern == "per-user" else {"storageClass": "nfs-client"}
    if persistent is not None:
        storage["persistentHome"] = persistent
    fleet = make_fleet(pattern, storage=storage)
    for sts in cli_sets(fleet, kube):
        claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert (claims == ["copilot-home"]) == expect_claim
        assert ("copilot-home" in volumes) == (not expect_claim)
        if not expect_claim:
            assert volumes["copilot-home"]["emptyDir"]["sizeLimit"]


def _egress(fleet, kube, labels):
    return [p for p in fleet.of_kind("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]
            and kube.matches(p["spec"]["podSelector"]["matchLabels"], labels)]


def test_egress_is_restricted_by_default(make_fleet, kube, pattern):
    """A session's tool run is untrusted code with the server's network: the CLI pods reach DNS and public
    addresses on 443, never private or link-local ones (other pods, the node, cloud metadata); the janitor DNS and
    the lease store; Redis nothing."""
    fleet = make_fleet(pattern)
    pods = {w["metadata"]["name"]: kube.pod_template(w)["metadata"]["labels"] for w in kube.workloads(fleet)}
    for name, labels in pods.items():
        assert _egress(fleet, kube, labels), f"{name} has no egress policy"
    for sts in cli_sets(fleet, kube):
        (policy,) = _egress(fleet, kube, sts["spec"]["template"]["metadata"]["labels"])
        rules = policy["spec"]["egress"]
        dns = [r for r in rules if {"port": 53, "protocol": "UDP"} in r["ports"]]
        assert dns and dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        public = [r for r in rules if any("ipBlock" in t for t in r["to"])]
        assert [p["port"] for p in public[0]["ports"]] == [443]
        v4 = next(t["ipBlock"] for t in public[0]["to"] if t["ipBlock"]["cidr"] == "0.0.0.0/0")
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
    if "copilot-redis" in pods:
        (redis,) = _egress(fleet, kube, pods["copilot-redis"])
        assert redis["spec"]["egress"] == []
    open_fleet = make_fleet(pattern, egress={"mode": "open"})
    assert not [p for p in open_fleet.of_kind("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]


def test_egress_allow_rules_reach_private_and_in_cluster_endpoints(make_fleet, kube):
    fleet = make_fleet("shared-session", otlpEndpoint="http://otel-collector.observability.svc:4318",
                       provider={"baseUrl": "http://10.20.0.5:8000/v1", "apiKey": kube.API_KEY},
                       egress={"allow": [{"namespace": "observability", "ports": [4318]},
                                         {"cidr": "10.20.0.0/24", "ports": [8000]}]})
    (policy,) = [p for p in fleet.of_kind("NetworkPolicy") if p["metadata"]["name"] == "copilot-cli-egress"]
    rules = policy["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "ports": [{"port": 8000, "protocol": "TCP"}]} in rules
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}],
            "ports": [{"port": 4318, "protocol": "TCP"}]} in rules


def test_tool_runs_do_not_inherit_the_servers_credentials(make_fleet, kube, pattern):
    """Every variable a CLI container gets from a Secret is named in --secret-env-vars: the CLI strips them from
    the environment of the shells and MCP servers a session starts (untrusted code) and redacts them from output."""
    fleet = make_fleet(pattern)
    for sts in cli_sets(fleet, kube):
        (cli,) = kube.containers(sts)
        from_secrets = {e["name"] for e in cli["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert "COPILOT_CONNECTION_TOKEN" in from_secrets
        (flag,) = [a for a in cli["args"] if a.startswith("--secret-env-vars=")]
        assert set(flag.partition("=")[2].split(",")) == from_secrets


def test_janitor_egress_reaches_the_external_lease_store_port(make_fleet, kube):
    """The janitor takes leases in an external Redis: its egress opens that URL's port (Azure Managed Redis serves
    10000), nothing else beside DNS."""
    fleet = make_fleet("shared-session", redis={"mode": "external",
                                                "url": "rediss://:TESTSECRET-pw@cache.example.com:10000/0"})
    (policy,) = [p for p in fleet.of_kind("NetworkPolicy") if p["metadata"]["name"] == "copilot-janitor-egress"]
    store = [r for r in policy["spec"]["egress"] if {"port": 53, "protocol": "UDP"} not in r["ports"]]
    assert store == [{"ports": [{"port": 10000, "protocol": "TCP"}]}]
