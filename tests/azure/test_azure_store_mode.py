"""Store mode on Azure (fleet:sessionState.mode store), each pattern through the whole program under the mock
engine with Azure's answers: no Azure Files share and no Azure Cache for Redis; the store is a Redis on AKS with
persistence on its own disk; every credential of the store (the admin's and each scope's password, the ACL users'
config, each server's store URL) in Key Vault and synced into exactly the Secrets the pods read; the CLI pods the
same as on any cluster; the target a store-mode client needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet import render
from copilot_fleet.components.azure.secret_sync import NAME as SYNC_NAME
from copilot_fleet.components.kubernetes import store
from copilot_fleet.stackfile import read_stack_config
from copilot_fleet.target import parse_target
from tests.helpers.azure_mock_engine import PROJECT_DIR, Run, clear, is_secret

AZ = "azure-native:"
STACK = "azure-store-shared-cli"


def _config(isolation: str) -> tuple[dict[str, Any], set[str]]:
    """The example store stack, or the same fleet as another pattern."""
    values, secret = read_stack_config(Path(PROJECT_DIR), STACK)
    config = dict(values)
    config["fleet:isolation"] = isolation
    if isolation == "per-user":
        for key in ("fleet:replicas", "fleet:autoscaling", "fleet:githubToken"):
            config.pop(key, None)
        config["fleet:users"] = [{"id": "alice", "githubToken": "ghp_TESTSECRET_alice"},
                                 {"id": "bob-smith", "githubToken": "ghp_TESTSECRET_bob"}]
        secret = (set(secret) - {"fleet:githubToken"}) | {"fleet:users"}
    return config, set(secret)


_RUNS: dict[str, Run] = {}


@pytest.fixture(params=["shared-cli", "shared-session", "per-user"])
def run(request: pytest.FixtureRequest, run_mocked: Callable[..., Run]) -> Run:
    isolation = str(request.param)
    if isolation not in _RUNS:
        config, secret = _config(isolation)
        _RUNS[isolation] = run_mocked(config, secret, stack=f"store-{isolation}")
    return _RUNS[isolation]


def cli_sets(run: Run) -> list[dict[str, Any]]:
    return [m for m in run.kind("StatefulSet") if m["metadata"]["labels"]["app.kubernetes.io/component"] == "cli"]


def test_no_share_no_cache_and_a_redis_on_aks_with_its_own_disk(run: Run) -> None:
    assert run.of_type(f"{AZ}storage:StorageAccount") == [] and run.of_type(f"{AZ}storage:FileShare") == []
    assert run.of_type(f"{AZ}redis:Redis") == []
    assert run.kind("PersistentVolume") == [] and run.kind("PersistentVolumeClaim") == []
    redis = run.get("StatefulSet", "copilot-redis")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    # The cluster's default class (managed-csi on AKS: an Azure Disk) holds the append-only file.
    assert "storageClassName" not in claim["spec"] and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis_host" not in (run.outputs.get("azure") or {})


def test_the_cli_pods_run_the_provider_as_on_any_cluster(run: Run) -> None:
    for sts in cli_sets(run):
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == [store.INIT, "--", store.SEALED_PYTHON]
        env = {e["name"]: e for e in container["env"]}
        assert env[store.STORE_URL_ENV]["valueFrom"]["secretKeyRef"]["key"] == store.STORE_URL_KEY
        volumes = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert "sessions" not in volumes


def test_every_store_credential_is_in_key_vault_and_synced_where_pods_read_it(run: Run) -> None:
    """The Kubernetes fleet creates no Secret; each (Secret, key) a pod or volume reads, the store's included, is
    synced from a Key Vault secret whose value is a Pulumi secret."""
    assert not run.kind("Secret")
    provider_class = run.get("SecretProviderClass", SYNC_NAME)["spec"]
    synced = {(s["secretName"], d["key"]): d["objectName"] for s in provider_class["secretObjects"]
              for d in s["data"]}
    wanted = set()
    for m in run.manifests():
        template = (m["spec"]["jobTemplate"]["spec"]["template"] if m["kind"] == "CronJob"
                    else m["spec"].get("template") if m["kind"] in ("StatefulSet", "Deployment") else None)
        if template is None:
            continue
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    wanted.add((ref["name"], ref["key"]))
        for volume in template["spec"].get("volumes") or []:
            if secret := volume.get("secret"):
                wanted |= {(secret["secretName"], item["key"]) for item in secret["items"]}
    store_keys = {k for k in wanted if k[1] in (store.STORE_URL_KEY, store.STORE_CONFIG_KEY)}
    assert ("copilot-redis", store.STORE_CONFIG_KEY) in store_keys
    assert len([k for k in store_keys if k[1] == store.STORE_URL_KEY]) == len(cli_sets(run))
    assert wanted <= set(synced), sorted(wanted - set(synced))
    vault = {s.inputs["secretName"]: s for s in run.of_type(f"{AZ}keyvault:Secret")}
    for key in wanted:
        assert synced[key] in vault and is_secret(vault[synced[key]].inputs["properties"]), key


def test_each_scope_url_names_its_own_acl_user(run: Run) -> None:
    vault = {s.inputs["secretName"]: clear(s.inputs)["properties"]["value"]
             for s in run.of_type(f"{AZ}keyvault:Secret")}
    for sts in cli_sets(run):
        scope = sts["spec"]["template"]["metadata"]["labels"].get("copilot-fleet/user") or "shared"
        url = vault[f"{sts['metadata']['name']}-credentials-store-redis-url"]
        assert url.startswith(f"redis://copilot-store-{scope}:") and "@copilot-redis." in url
        assert f"user copilot-store-{scope} " in vault["copilot-redis-store-conf"]


def test_the_target_is_a_store_mode_target(run: Run) -> None:
    target = parse_target(json.dumps(run.outputs), source="stack outputs")
    assert target.store_mode and target.redis_url is not None
    assert "copilot-redis." in target.redis_url.get_secret_value()
    addresses = list(target.users.values()) if target.isolation == "per-user" else target.replicas
    assert set(target.session_state.server_ids) == set(addresses)


def test_kubernetes_objects_validate_strictly(run: Run) -> None:
    validator = render.SchemaValidator("1.33")
    errors = [e for m in run.manifests() if m["kind"] != "SecretProviderClass" for e in validator.errors(m)]
    assert errors == []


def test_the_shared_patterns_get_the_autoscaler(run: Run) -> None:
    hpas = run.kind("HorizontalPodAutoscaler")
    if cli_sets(run)[0]["metadata"]["labels"].get("copilot-fleet/user"):
        assert hpas == []
    else:
        (hpa,) = hpas
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
