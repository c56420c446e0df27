"""The Azure components beyond the example stacks: what importing them costs, configs they refuse, the names they
hand back for `az` commands, and an external lease store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from copilot_fleet.components.azure import offline
from copilot_fleet.spec import ConfigError
from copilot_fleet.stackfile import read_stack_config
from tests.helpers.azure_mock_engine import PROJECT_DIR, Run

# What the Azure components use of pulumi-azure-native, and nothing else (the whole package: seconds, ~600 MB).
EXPECTED_SUBMODULES = {"authorization", "containerservice", "keyvault", "managedidentity", "operationalinsights",
                       "redis", "resources", "storage"}

_PROBE = """
import json, sys, time

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

import pulumi, pulumi_kubernetes, pulumi_random, copilot_fleet.components.kubernetes  # the baseline every platform pays
import pulumi._utils
base = rss_mib()
start = time.perf_counter()
import copilot_fleet.components.azure
imported = time.perf_counter() - start
# azure-native submodules are lazy: they load on first use, so run a whole stack to load what is used.
from tests.helpers.azure_mock_engine import AzureRecordingMocks
from copilot_fleet import render
from copilot_fleet.stackfile import read_stack_config
from pathlib import Path
values, secret = read_stack_config(Path("."), "azure-shared-cli")
start = time.perf_counter()
render.run_program(values, secret, stack="azure-shared-cli", mocks=AzureRecordingMocks())
ran = time.perf_counter() - start
loaded = sorted({m.split(".")[1] for m, mod in list(sys.modules.items())
                 if m.startswith("pulumi_azure_native.") and not isinstance(mod, pulumi._utils._LazyModule)})
print(json.dumps({"import_s": imported, "program_s": ran, "rss_mib": rss_mib() - base, "loaded": loaded}))
"""


def test_the_azure_components_load_only_the_azure_native_submodules_they_use() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180,
                          cwd=PROJECT_DIR)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(probe["loaded"]) - {"_utilities", "provider"} == EXPECTED_SUBMODULES
    # Measured (docs/azure.md): import 0.1 s; a whole stack, azure-native loads included, 5-6 s and about 50 MiB
    # over the Kubernetes baseline (touching every submodule: over a minute and about 550 MiB). Loose bounds:
    # a shared 2-core CI machine under load runs this several times slower.
    assert probe["import_s"] < 3.0, probe
    assert probe["program_s"] < 90.0, probe
    assert probe["rss_mib"] < 250, probe


def _stack_config(stack: str, **changes: Any) -> tuple[dict[str, Any], set[str]]:
    values, secret = read_stack_config(PROJECT_DIR, stack)
    for key, value in changes.items():
        values[key] = value
    return values, secret


def test_a_claim_larger_than_the_share_is_refused_before_any_azure_resource(run_mocked: Callable[..., Run]) -> None:
    values, secret = _stack_config("azure-shared-cli", **{"fleet:storage": {"size": "200Gi"}})
    with pytest.raises(ConfigError, match=r"fleet:storage.size: 200Gi .*fleet:azure.fileShareQuotaGb: 100"):
        run_mocked(values, secret, stack="azure-bad-size")


def test_premium_redis_needs_a_premium_size(run_mocked: Callable[..., Run]) -> None:
    values, secret = _stack_config("azure-shared-cli")
    values["fleet:azure"] = {**values["fleet:azure"], "redisSku": "Premium", "redisCapacity": 0}
    with pytest.raises(ConfigError, match=r"fleet:azure.redisCapacity: Premium caches come in sizes 1-5"):
        run_mocked(values, secret, stack="azure-bad-redis")


def test_an_external_lease_store_replaces_azure_cache(run_mocked: Callable[..., Run]) -> None:
    values, secret = _stack_config(
        "azure-shared-cli", **{"fleet:redis": {"mode": "external", "url": {"secure": "v1:x"}}})
    # read_stack_config turns `secure:` into the offline placeholder only when read from a file: do it here.
    values["fleet:redis"]["url"] = "rediss://:pw@leases.example.com:6380/0"
    run = run_mocked(values, secret | {"fleet:redis"}, stack="azure-external-redis")
    assert not run.of_type("azure-native:redis:Redis")
    assert run.outputs["redis_url"] == "rediss://:pw@leases.example.com:6380/0"
    assert "redis_url" in run.secret_outputs
    names = {s.inputs["secretName"] for s in run.of_type("azure-native:keyvault:Secret")}
    assert "lease-store-redis-url" in names and "lease-store-redis-key" not in names
    # the janitor takes its leases there too: the URL is synced into its Secret
    provider_class = next(m for m in run.manifests() if m["kind"] == "SecretProviderClass")["spec"]
    synced = {(s["secretName"], d["key"]): d["objectName"] for s in provider_class["secretObjects"] for d in s["data"]}
    assert synced[("copilot-janitor-credentials", "redis-url")] == "lease-store-redis-url"


def test_the_fleet_hands_back_where_things_landed(run_mocked: Callable[..., Run]) -> None:
    values, secret = _stack_config("azure-shared-session")

    def program() -> dict[str, Any]:
        from copilot_fleet.components.azure import AzureFleet, AzureFleetArgs
        from copilot_fleet.components.common import ConnectionTokens
        from copilot_fleet.pulumi_config import load_engine_spec
        from copilot_fleet.topology import build_topology

        topology = build_topology(load_engine_spec())
        fleet = AzureFleet("fleet", AzureFleetArgs(topology, ConnectionTokens("tokens", topology)))
        return fleet.names.as_output()

    run = run_mocked(values, secret, stack="azure-shared-session", program=program)
    out = run.outputs
    assert out["resource_group"] == "rg-copilot-team"  # fleet:azure.resourceGroupName
    assert out["key_vault_uri"] == f"https://{out['key_vault']}.vault.azure.net/"
    assert out["redis_host"].endswith(".redis.cache.windows.net")
    assert list(out["storage_accounts"]) == ["copilot-sessions"]
    assert out["oidc_issuer_url"].startswith("https://") and offline.TENANT in out["oidc_issuer_url"]


def test_a_private_registry_login_reaches_the_nodes_through_key_vault(run_mocked: Callable[..., Run]) -> None:
    """fleet:imagePullCredentials on Azure (a registry that is not ACR): the login is a Key Vault secret, synced
    into a kubernetes.io/dockerconfigjson Secret that every fleet pod names; the sync pods, which pull the public
    pause image and make that Secret, do not name it, but run where the fleet's pods may."""
    login = {"server": "registry.example.com", "username": "robot", "password": "TESTSECRET-pull-0008"}
    values, secret = _stack_config("azure-shared-cli", **{
        "fleet:image": "registry.example.com/copilot-cli:1.0.102",
        "fleet:imagePullCredentials": login, "fleet:nodeSelector": {"pool": "copilot"},
        "fleet:tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]})
    values["fleet:azure"] = {k: v for k, v in values["fleet:azure"].items() if k != "containerRegistryId"}
    run = run_mocked(values, secret | {"fleet:imagePullCredentials"}, stack="azure-private-registry")
    assert not run.of_type("azure-native:authorization:RoleAssignment") or all(
        "acr" not in r.name for r in run.of_type("azure-native:authorization:RoleAssignment"))
    vault_secret = next(s for s in run.of_type("azure-native:keyvault:Secret")
                        if s.inputs["secretName"] == "copilot-image-pull--dockerconfigjson")
    assert "TESTSECRET-pull-0008" in json.dumps(vault_secret.inputs)  # the value goes to Key Vault, nowhere else
    assert not any("TESTSECRET-pull-0008" in json.dumps(m) for m in run.manifests())
    provider_class = next(m for m in run.manifests() if m["kind"] == "SecretProviderClass")["spec"]
    (pull,) = [s for s in provider_class["secretObjects"] if s["secretName"] == "copilot-image-pull"]
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert pull["data"] == [{"objectName": "copilot-image-pull--dockerconfigjson", "key": ".dockerconfigjson"}]
    for workload in run.kind("StatefulSet") + run.kind("CronJob") + run.kind("Deployment"):
        template = workload["spec"]["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" \
            else workload["spec"]["template"]
        spec, name = template["spec"], workload["metadata"]["name"]
        assert spec["nodeSelector"] == {"pool": "copilot"}, name
        assert spec["tolerations"][0]["key"] == "dedicated", name
        pulls = spec.get("imagePullSecrets")
        if name == "copilot-keyvault-sync":
            assert pulls is None
        else:
            assert pulls == [{"name": "copilot-image-pull"}], name
