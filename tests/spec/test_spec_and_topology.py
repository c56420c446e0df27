"""The fleet spec and topology: pure Python, no Pulumi engine, no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from copilot_fleet import CLI_VERSION
from copilot_fleet.spec import OFFLINE_SECRET, ConfigError, RawConfig, load_spec, parse_duration, quantity_value
from copilot_fleet.stackfile import (
    StackNotFound,
    as_engine_config,
    list_stacks,
    load_stack_spec,
    raw_config_from_stack,
    read_stack_config,
)
from copilot_fleet.topology import SHARED_GROUP, build_topology

PROJECT = Path(__file__).resolve().parents[2]


def spec_of(secret_keys: set[str] | None = None, /, **values: object):
    return load_spec(RawConfig(values=values, secret_keys=frozenset(secret_keys or ()), stack="t"))


@pytest.mark.example_stacks()
def test_every_example_stack_validates(example_project: Path, example_stack: str,
                                      example_stack_kinds: dict[str, tuple[str, str]]) -> None:
    spec = load_stack_spec(example_project, example_stack)
    assert spec.stack == example_stack
    assert spec.cli_version == CLI_VERSION
    assert (spec.platform, spec.isolation) == example_stack_kinds[example_stack]


def test_the_examples_are_every_stack_the_repository_ships(example_project: Path) -> None:
    """The list the tests use is the set of files the repository tracks (a user's own files are not in git)."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "stacks"], cwd=PROJECT, capture_output=True, text=True,
                             check=False)
    if tracked.returncode != 0:
        pytest.skip(f"not a git checkout: {tracked.stderr.strip()}")
    shipped = {Path(f).name.removeprefix("Pulumi.").removesuffix(".yaml") for f in tracked.stdout.split()}
    assert set(list_stacks(example_project)) == shipped


def test_defaults() -> None:
    spec = spec_of(isolation="shared-cli", platform="local")
    assert spec.idle_timeout == 30 * 60  # a 30-minute idle timeout
    assert spec.max_sessions_per_replica == 50  # sessions attached per server
    assert spec.port == 4321
    assert spec.log_level == "info"
    assert spec.infinite_sessions.background_compaction_threshold == 0.80
    assert spec.infinite_sessions.buffer_exhaustion_threshold == 0.95


def test_shared_patterns_get_one_load_balanced_group_and_a_lease_store() -> None:
    for isolation in ("shared-cli", "shared-session"):
        topo = build_topology(spec_of(isolation=isolation, platform="local", replicas=3))
        assert [g.name for g in topo.groups] == [SHARED_GROUP]
        group = topo.groups[0]
        assert group.replicas == 3 and group.user is None
        assert group.replica_names() == ["copilot-cli-0", "copilot-cli-1", "copilot-cli-2"]
        # shared-cli needs the lease as much as shared-session: shared session-state/ lets two servers attach.
        assert topo.lease_store == "local"
        assert topo.load_balanced


def test_per_user_gets_one_server_volume_and_token_per_user() -> None:
    topo = build_topology(spec_of(isolation="per-user", platform="local", users=[{"id": "alice"}, {"id": "bob-smith"}]))
    assert [g.user for g in topo.groups] == ["alice", "bob-smith"]
    assert len({g.session_volume for g in topo.groups}) == 2
    assert [g.token_key for g in topo.groups] == ["alice", "bob-smith"]
    assert all(g.replicas == 1 for g in topo.groups)
    assert topo.lease_store is None and not topo.load_balanced
    assert topo.group_for_user("bob-smith").name == "copilot-user-bob-smith"
    with pytest.raises(KeyError, match="carol"):
        topo.group_for_user("carol")


def test_kubernetes_credential_and_lease_store_follow_config() -> None:
    byok = spec_of(
        {"provider", "redis"},
        isolation="shared-session", platform="kubernetes", image=f"r.example/cli:{CLI_VERSION}",
        provider={"baseUrl": "https://models.example/v1", "apiKey": "k"},
        redis={"mode": "external", "url": "rediss://:p@redis.example:6380/0"}, storage={"storageClass": "nfs"},
    )
    topo = build_topology(byok)
    assert topo.groups[0].credential == "provider"
    assert topo.lease_store == "external"
    per_user = spec_of(
        {"users", "githubToken"},
        isolation="per-user", platform="kubernetes", image=f"r.example/cli:{CLI_VERSION}", githubToken="t",
        users=[{"id": "alice", "githubToken": "a"}, {"id": "bob"}], storage={"accessMode": "ReadWriteOnce"},
    )
    creds = {g.user: g.credential for g in build_topology(per_user).groups}
    assert creds == {"alice": "user-github-token", "bob": "github-token"}


def test_secure_values_are_secrets_offline(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: x\nruntime: python\nstackConfigDir: stacks\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text(
        "config:\n"
        "  fleet:isolation: per-user\n"
        "  fleet:platform: kubernetes\n"
        f"  fleet:image: r.example/cli:{CLI_VERSION}\n"
        "  fleet:users:\n"
        "    - id: alice\n"
        "      githubToken:\n"
        "        secure: v1:abc\n"
        "  fleet:storage:\n"
        "    accessMode: ReadWriteOnce\n"
        "  kubernetes:context: other-namespace-is-ignored\n"
    )
    values, secret = read_stack_config(tmp_path, "dev")
    assert secret == {"fleet:users"}
    assert values["fleet:users"][0]["githubToken"] == OFFLINE_SECRET
    raw = raw_config_from_stack(tmp_path, "dev")
    assert "context" not in raw.values and raw.secret_keys == {"users"}
    spec = load_stack_spec(tmp_path, "dev")
    assert spec.users[0].github_token is not None
    assert OFFLINE_SECRET not in repr(spec)  # SecretStr keeps it out of reprs and logs
    engine = as_engine_config(values)
    assert engine["fleet:platform"] == "kubernetes" and engine["fleet:users"].startswith("[")
    with pytest.raises(StackNotFound, match="stacks here: dev"):
        load_stack_spec(tmp_path, "prod")


@pytest.mark.parametrize(
    ("values", "secret", "key"),
    [
        ({"isolation": "shared-cli", "platform": "kubernetes", "image": f"r/c:{CLI_VERSION}", "githubToken": "t"},
         set(), "fleet:githubToken: a credential must be set as a secret"),
        ({"isolation": "shared-cli", "platform": "local", "replicaz": 2}, set(), "did you mean fleet:replicas?"),
        ({"isolation": "shared-cli", "platform": "local", "logLevel": "all"}, set(), "fleet:logLevel"),
        ({"isolation": "shared-cli", "platform": "local", "local": {"endpointPort": 4401}}, set(), "fleet:local"),
        ({"isolation": "shared-cli", "platform": "kubernetes", "image": f"r/c:{CLI_VERSION}", "githubToken": "t",
          "recycle": {"maxRssMb": 4096}}, {"githubToken"}, "fleet:recycle.maxRssMb: 4096 MiB is not below"),
        ({"isolation": "shared-cli", "platform": "local", "recycle": {"checkEvery": "5s"}}, set(),
         "recycle.checkEvery"),
    ],
)
def test_refusals_name_the_key(values: dict[str, object], secret: set[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec_of(secret, **values)
    assert key in str(info.value)


def test_debug_logging_needs_explicit_consent() -> None:
    spec = spec_of(isolation="shared-cli", platform="local", logLevel="debug", allowDebugLogging=True)
    assert spec.log_level == "debug"


@pytest.mark.parametrize(("given", "seconds"), [(90, 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)])
def test_durations(given: object, seconds: int) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("bad", ["soon", "-5m", True, 1.5, "5w"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_quantities() -> None:
    assert quantity_value("512Mi") == 512 * 1024**2
    assert quantity_value("250m") == 0.25
    with pytest.raises(ValueError, match="quantity"):
        quantity_value("ten gigs")


@pytest.mark.parametrize(
    ("azure", "storage", "key"),
    [
        ({"fileShareQuotaGb": 100}, {"size": "200Gi"}, "fleet:storage.size"),
        ({"redisSku": "Premium", "redisCapacity": 0}, {}, "fleet:azure.redisCapacity"),
        ({"resourceGroupName": "rg."}, {}, "fleet:azure.resourceGroupName"),
        ({"resourceGroupName": "rg/bad"}, {}, "fleet:azure.resourceGroupName"),
    ],
)
def test_azure_limits_are_refused_up_front(azure: dict[str, object], storage: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec_of({"githubToken"}, isolation="shared-cli", platform="azure", image=f"r/c:{CLI_VERSION}",
                githubToken="t", azure=azure, storage=storage)
    assert key in str(info.value)


def test_user_ids_fit_kubernetes_statefulset_names() -> None:
    ok = spec_of(isolation="per-user", platform="local", users=[{"id": "a" * 39}])
    assert len(f"copilot-user-{ok.users[0].id}") == 52  # the StatefulSet name limit
    with pytest.raises(ConfigError, match="1-39"):
        spec_of(isolation="per-user", platform="local", users=[{"id": "a" * 40}])


@pytest.mark.parametrize(("values", "key"), [
    ({"replicas": True}, "fleet:replicas"),
    ({"port": False}, "fleet:port"),
    ({"local": {"redisPort": True}}, "fleet:local.redisPort"),
    ({"infiniteSessions": {"backgroundCompactionThreshold": True}}, "fleet:infiniteSessions"),
])
def test_booleans_are_not_numbers(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match="boolean") as info:
        spec_of(isolation="shared-cli", platform="local", **values)
    assert key in str(info.value)
    assert spec_of(isolation="shared-cli", platform="local", allowDebugLogging=True).allow_debug_logging


def test_azure_per_user_disk_homes_are_sized_against_attach_limits() -> None:
    """A per-user home on a disk is one Azure Disk per user; 2 x Standard_D4s_v5 attach 16: 17 users are refused,
    the default (an emptyDir home) takes them."""
    base: dict[str, Any] = dict(isolation="per-user", platform="azure", image=f"r.example/cli:{CLI_VERSION}",
                                githubToken="t", users=[{"id": f"user-{i}"} for i in range(17)],
                                azure={"nodeCount": 2, "nodeVmSize": "Standard_D4s_v5"})
    with pytest.raises(ConfigError, match="attach at most 16 data disks"):
        spec_of({"githubToken"}, **base, storage={"accessMode": "ReadWriteOnce", "persistentHome": True})
    assert not spec_of({"githubToken"}, **base, storage={"accessMode": "ReadWriteOnce"}).home_is_persistent
    spec_of({"githubToken"}, **{**base, "users": base["users"][:16]},
            storage={"accessMode": "ReadWriteOnce", "persistentHome": True})


def test_config_is_read_without_pulumis_private_names() -> None:
    """What `pulumi up` runs (the program, its config reading, the components) uses no underscore name of the SDK:
    those change in any release without notice. (The offline render's mock harness is not part of a deployment.)"""
    import ast

    offenders = []
    program = [PROJECT / "copilot_fleet/program.py", PROJECT / "copilot_fleet/pulumi_config.py"]
    for path in [*program, *PROJECT.glob("components/**/*.py")]:
        tree = ast.parse(path.read_text())
        pulumi_aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and (node.module or "").startswith("pulumi") for alias in node.names}
        pulumi_aliases |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                           for alias in node.names if alias.name.startswith("pulumi")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in pulumi_aliases):
                offenders.append(f"{path.relative_to(PROJECT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert offenders == []


# --- fleet:sessionState -------------------------------------------------------------------------------------------

def test_volume_mode_is_the_default_and_changes_nothing() -> None:
    for isolation, extra in (("shared-cli", {}), ("per-user", {"users": [{"id": "alice"}]})):
        topology = build_topology(spec_of(isolation=isolation, platform="local", **extra))
        assert topology.session_state == "volume" and not topology.store_mode
        assert all(g.session_volume is not None and g.store_scope is None for g in topology.groups)
    assert build_topology(spec_of(isolation="per-user", platform="local", users=[{"id": "a"}])).lease_store is None


@pytest.mark.parametrize("isolation", ["shared-cli", "shared-session"])
def test_store_mode_shared_patterns_have_no_volume_and_the_shared_scope(isolation: str) -> None:
    topology = build_topology(spec_of(isolation=isolation, platform="local", sessionState={"mode": "store"}))
    (group,) = topology.groups
    assert topology.store_mode and topology.lease_store == "local"
    assert group.session_volume is None and group.store_scope == "shared"
    assert topology.session_volumes == []
    with pytest.raises(ValueError, match="no session volume"):
        group.volume_name()


def test_store_mode_per_user_gets_a_lease_store_and_a_scope_per_user() -> None:
    spec = spec_of(isolation="per-user", platform="local", sessionState={"mode": "store"},
                   users=[{"id": "alice"}, {"id": "bob-smith"}])
    topology = build_topology(spec)
    assert topology.lease_store == "local"
    assert {g.user: g.store_scope for g in topology.groups} == {"alice": "alice", "bob-smith": "bob-smith"}
    assert all(g.session_volume is None for g in topology.groups)


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"sessionState": {"mode": "disk"}}, "fleet:sessionState.mode", "'volume' or 'store'"),
    ({"sessionState": {"mdoe": "store"}}, "fleet:sessionState.mdoe", "did you mean fleet:sessionState.mode"),
    ({"sessionState": {"appendfsync": "always"}}, "fleet:sessionState.appendfsync", "only for"),
    ({"sessionState": {"mode": "store", "appendfsync": "no"}}, "fleet:sessionState.appendfsync", "'always'"),
    ({"sessionState": {"mode": "store"}, "storage": {"accessMode": "ReadWriteOnce"}}, "fleet:storage.accessMode",
     "does not have"),
    ({"sessionState": {"mode": "store"}, "storage": {"size": "5Gi"}}, "fleet:storage.size", "does not have"),
])
def test_session_state_mistakes_name_the_key(values: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        spec_of(isolation="shared-cli", platform="local", **values)
    line = next((p for p in err.value.problems if p.startswith(key)), None)
    assert line is not None, err.value.problems
    assert words in line


CLUSTER = {"image": f"r.example/copilot-cli:{CLI_VERSION}", "githubToken": "t"}


@pytest.mark.parametrize("platform", ["kubernetes", "azure"])
def test_store_mode_runs_on_clusters_with_their_own_redis_on_an_emptydir_home(platform: str) -> None:
    spec = spec_of({"githubToken"}, isolation="shared-cli", platform=platform, sessionState={"mode": "store"},
                   **CLUSTER)
    topology = build_topology(spec)
    assert topology.store_mode and topology.lease_store == "in-cluster" and topology.session_volumes == []
    assert not spec.home_is_persistent  # config and logs only: nothing a resume needs
    assert spec.redis.memory_limit(spec.store_mode) == "1Gi"


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"storage": {"storageClass": "nfs-client"}}, "fleet:storage.storageClass", "does not have"),
    ({"redis": {"mode": "external", "url": "rediss://:p@r.example:6380/0"}}, "fleet:redis.mode", "runs its own"),
    ({"redis": {"memory": "4Gi"}}, "fleet:redis.storageSize", "at least as much storage as memory"),
    ({"autoscaling": {"maxReplicas": 2}}, "fleet:autoscaling.maxReplicas", "must be above fleet:replicas (2)"),
    ({"autoscaling": {"maxReplicas": 4, "cpuUtilization": 5}}, "fleet:autoscaling.cpuUtilization", "10"),
    ({"autoscaling": {"cpuUtilization": 50}}, "fleet:autoscaling.maxReplicas", ""),
])
def test_store_mode_and_autoscaling_mistakes_on_clusters_name_the_key(values: dict[str, Any], key: str,
                                                                      words: str) -> None:
    secret = {"githubToken", "redis"} if "redis" in values else {"githubToken"}
    with pytest.raises(ConfigError) as err:
        spec_of(secret, isolation="shared-cli", platform="kubernetes", sessionState={"mode": "store"},
                **CLUSTER, **values)
    line = next((p for p in err.value.problems if p.startswith(key)), None)
    assert line is not None, err.value.problems
    assert words in line


@pytest.mark.parametrize(("values", "words"), [
    ({"isolation": "per-user", "users": [{"id": "a", "githubToken": "t"}], "autoscaling": {"maxReplicas": 3}},
     "per-user runs exactly one server per user"),
    ({"platform": "local", "autoscaling": {"maxReplicas": 3}}, "needs a cluster"),
    ({"platform": "azure", "azure": {"redisSku": "Premium", "redisCapacity": 1}}, "no Azure Cache for Redis"),
])
def test_autoscaling_and_azure_cache_keys_are_refused_where_they_do_nothing(values: dict[str, Any],
                                                                            words: str) -> None:
    merged: dict[str, Any] = {"isolation": "shared-cli", "platform": "kubernetes", "sessionState": {"mode": "store"},
                              **CLUSTER, **values}
    secret = {"githubToken", "users"} if "users" in values else {"githubToken"}
    with pytest.raises(ConfigError) as err:
        spec_of(secret, **merged)
    assert any(words in p for p in err.value.problems), err.value.problems


def test_per_user_store_mode_accepts_fleet_redis_and_refuses_a_user_called_shared() -> None:
    spec_of(isolation="per-user", platform="local", sessionState={"mode": "store"}, users=[{"id": "a"}],
            redis={"mode": "in-cluster"})
    with pytest.raises(ConfigError, match="fleet:redis: per-user keeps"):
        spec_of(isolation="per-user", platform="local", users=[{"id": "a"}], redis={"mode": "in-cluster"})
    with pytest.raises(ConfigError, match="rename user 'shared'"):
        spec_of(isolation="per-user", platform="local", sessionState={"mode": "store"}, users=[{"id": "shared"}])


def test_a_per_user_store_fleet_checks_the_redis_port_against_the_servers() -> None:
    with pytest.raises(ConfigError, match="fleet:local.redisPort 4401 falls in the CLI servers' ports"):
        spec_of(isolation="per-user", platform="local", sessionState={"mode": "store"}, users=[{"id": "a"}],
                local={"replicaBasePort": 4401, "redisPort": 4401})
