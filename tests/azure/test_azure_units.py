"""Pure parts of the Azure platform: names Azure accepts, the SecretProviderClass body, the Redis URL, the secret
layout."""

from __future__ import annotations

import re

import pytest
import yaml

from copilot_fleet.components.azure import names
from copilot_fleet.components.azure.cache import redis_url, sku_family
from copilot_fleet.components.azure.layout import REDIS_URL_SECRET, secret_layout
from copilot_fleet.components.azure.secret_sync import SyncedSecret, provider_class_spec


def test_identity_names_carry_the_stack() -> None:
    from copilot_fleet.components.azure.names import AzureNameError, identity_name

    assert identity_name("copilot-keyvault-sync", "team.prod") == "id-copilot-keyvault-sync-team-prod"
    assert identity_name("copilot-keyvault-sync", "a") != identity_name("copilot-keyvault-sync", "b")
    assert len(identity_name("x", "s" * 200)) == 128
    with pytest.raises(AzureNameError):
        identity_name("", "")


@pytest.mark.parametrize("volume", ["copilot-sessions", "copilot-user-a-sessions",
                                    "copilot-user-" + "x" * 40 + "-sessions"])
def test_storage_account_names_fit_azure_rules_and_differ_per_volume(volume: str) -> None:
    name = names.storage_account_name(volume, "k3j9x0qa")
    assert re.fullmatch(r"[a-z0-9]{3,24}", name)
    assert name != names.storage_account_name(volume + "x", "k3j9x0qa")


@pytest.mark.parametrize("stack", ["azure-shared-cli", "A_very.long Stack-name-with-many-parts-0123456789", "---"])
def test_vault_and_redis_names_fit_azure_rules(stack: str) -> None:
    vault = names.vault_name(stack, "k3j9x0qa")
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]", vault) and "--" not in vault
    assert vault.endswith("k3j9x0qa")
    cache = names.redis_name(stack, "k3j9x0qa")
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,61}[a-z0-9]", cache) and "--" not in cache


def test_dns_prefix_and_secret_names() -> None:
    assert names.dns_prefix("azure-shared-cli") == "copilot-azure-shared-cli"
    assert len(names.dns_prefix("s" * 200)) <= 54
    assert names.kv_secret_name("connection-token", "bob-smith") == "connection-token-bob-smith"
    with pytest.raises(names.AzureNameError, match="key vault secret name"):
        names.kv_secret_name("x" * 200)


def test_share_name_refuses_what_azure_files_refuses() -> None:
    assert names.share_name("copilot-sessions") == "copilot-sessions"
    with pytest.raises(names.AzureNameError, match="file share name"):
        names.share_name("Bad_Share")


def test_provider_class_uses_workload_identity_and_syncs_each_key() -> None:
    items = [SyncedSecret("connection-token", "copilot-cli-secrets", "connection-token"),
             SyncedSecret("github-token", "copilot-cli-secrets", "github-token"),
             SyncedSecret("storage-key-v", "v-azure-files", "azurestorageaccountkey")]
    spec = provider_class_spec(client_id="cid", vault_name="kv-x", tenant_id="tid", items=items)
    params = spec["parameters"]
    assert spec["provider"] == "azure"
    assert params["usePodIdentity"] == "false" and params["clientID"] == "cid"
    assert params["keyvaultName"] == "kv-x" and params["tenantID"] == "tid" and "tenantId" not in params
    objects = [yaml.safe_load(o) for o in yaml.safe_load(params["objects"])["array"]]
    assert sorted(o["objectName"] for o in objects) == ["connection-token", "github-token", "storage-key-v"]
    assert {o["objectType"] for o in objects} == {"secret"}
    synced = {(s["secretName"], d["key"]): d["objectName"] for s in spec["secretObjects"] for d in s["data"]}
    assert synced == {("copilot-cli-secrets", "connection-token"): "connection-token",
                      ("copilot-cli-secrets", "github-token"): "github-token",
                      ("v-azure-files", "azurestorageaccountkey"): "storage-key-v"}


def test_provider_class_refuses_two_secrets_in_one_key() -> None:
    items = [SyncedSecret("a", "s", "k"), SyncedSecret("b", "s", "k")]
    with pytest.raises(ValueError, match="same Kubernetes Secret key"):
        provider_class_spec(client_id="c", vault_name="v", tenant_id="t", items=items)


def test_redis_url_is_tls_and_premium_sizes_are_checked() -> None:
    assert redis_url("h.redis.cache.windows.net", "k") == "rediss://:k@h.redis.cache.windows.net:6380/0"
    assert sku_family("Standard", 0) == "C" and sku_family("Premium", 1) == "P"
    with pytest.raises(ValueError, match="fleet:azure.redisCapacity"):
        sku_family("Premium", 0)


def test_the_lease_store_url_is_one_key_vault_secret_synced_for_the_janitor() -> None:
    url = "rediss://:k@h.redis.cache.windows.net:6380/0"
    material = {"copilot-cli-credentials": {"connection-token": "t"},
                "copilot-janitor-credentials": {"redis-url": url}}
    layout = secret_layout(material, {}, redis_key="k", redis_url=url)
    assert layout.values == {"copilot-cli-credentials-connection-token": "t", "lease-store-redis-key": "k",
                             REDIS_URL_SECRET: url}
    assert {(i.vault_secret, i.k8s_secret, i.key) for i in layout.synced} == {
        ("copilot-cli-credentials-connection-token", "copilot-cli-credentials", "connection-token"),
        (REDIS_URL_SECRET, "copilot-janitor-credentials", "redis-url")}
    # without a janitor that reads it (per-user), the URL is kept for applications only
    plain = secret_layout({"copilot-cli-credentials": {"connection-token": "t"}}, {}, redis_url=url)
    assert plain.values[REDIS_URL_SECRET] == url and [i.vault_secret for i in plain.synced] == [
        "copilot-cli-credentials-connection-token"]
    with pytest.raises(ValueError, match="no lease store URL"):
        secret_layout(material, {})
