"""The Azure example stacks through the whole program (copilot_fleet.program.run) under the mock engine.

Each test reads what the program registered and asserts a property the Azure platform promises: TLS-only storage
and Redis, Key Vault in RBAC mode read by one identity, credentials only by reference, the share mounted at
`session-state` only, per-user separation, an AKS cluster with what the fleet relies on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from copilot_fleet import render
from copilot_fleet.components.azure import offline
from copilot_fleet.components.azure.secret_sync import CLIENT_ID_ANNOTATION
from copilot_fleet.components.azure.secret_sync import NAME as SYNC_NAME
from copilot_fleet.components.azure.vault import KEY_VAULT_SECRETS_USER
from copilot_fleet.spec import FleetSpec
from copilot_fleet.stackfile import load_stack_spec, read_stack_config
from copilot_fleet.target import parse_target
from copilot_fleet.topology import build_topology
from tests.helpers.azure_mock_engine import AZURE_STACKS, PROJECT_DIR, Run, clear, is_secret

AZ = "azure-native:"
SHARED = ("azure-shared-cli", "azure-shared-session")


def spec_of(stack: str) -> FleetSpec:
    return load_stack_spec(Path(PROJECT_DIR), stack)


def arm_answer(run: Run, typ: str, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """The id and state the (offline) Azure answered for a registration: what the program read back."""
    reg = run.one(typ) if name is None else next(r for r in run.of_type(typ) if r.name == name)
    answer = offline.resource_state(reg.typ, reg.name, reg.inputs)
    assert answer is not None
    return answer


def pod_specs(run: Run) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object, pod spec) of every workload the program deploys."""
    for m in run.manifests():
        kind = m["kind"]
        if kind in ("StatefulSet", "Deployment"):
            yield f"{kind}/{m['metadata']['name']}", m["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{m['metadata']['name']}", m["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def cli_sets(run: Run) -> list[dict[str, Any]]:
    return [m for m in run.kind("StatefulSet") if m["metadata"]["labels"]["app.kubernetes.io/component"] == "cli"]


@pytest.fixture(params=AZURE_STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(stack: str, stack_run: Callable[[str], Run]) -> Run:
    return stack_run(stack)


# --- storage ----------------------------------------------------------------------------------------------------

def test_storage_is_tls_only_private_and_smb_with_the_configured_quota(stack: str, run: Run) -> None:
    spec = spec_of(stack)
    accounts = run.of_type(f"{AZ}storage:StorageAccount")
    assert len(accounts) == len(build_topology(spec).session_volumes)
    for account in accounts:
        p = account.inputs
        assert p["kind"] == "StorageV2"
        assert p["minimumTlsVersion"] == "TLS1_2"
        assert p["enableHttpsTrafficOnly"] is True
        assert p["allowBlobPublicAccess"] is False
        assert p["allowSharedKeyAccess"] is True  # the CSI driver's SMB mount uses the account key
    for share in run.of_type(f"{AZ}storage:FileShare"):
        assert share.inputs["enabledProtocols"] == "SMB"
        assert share.inputs["shareQuota"] == spec.azure.file_share_quota_gb
        assert share.inputs["accessTier"] == "TransactionOptimized"


def test_the_share_is_mounted_at_session_state_only(stack: str, run: Run) -> None:
    pvs = {m["metadata"]["name"]: m for m in run.kind("PersistentVolume")}
    pvcs = {m["metadata"]["name"]: m for m in run.kind("PersistentVolumeClaim")}
    accounts = {arm_answer(run, r.typ, r.name)[1]["name"] for r in run.of_type(f"{AZ}storage:StorageAccount")}
    for sts in cli_sets(run):
        pod = sts["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        share_mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
        assert [m["mountPath"] for m in share_mounts] == [f"{env['COPILOT_HOME']}/session-state"]
        pvc = pvcs[claims[share_mounts[0]["name"]]]
        pv = pvs[pvc["spec"]["volumeName"]]
        assert pvc["spec"]["storageClassName"] == "" and pv["spec"]["claimRef"]["name"] == pvc["metadata"]["name"]
        csi = pv["spec"]["csi"]
        assert csi["driver"] == "file.csi.azure.com"
        assert csi["volumeAttributes"]["storageAccount"] in accounts
        # SMB has no POSIX owners: the mount must hand the files to the non-root CLI user.
        uid = pod["securityContext"]["runAsUser"]
        assert {f"uid={uid}", f"gid={pod['securityContext']['runAsGroup']}"} <= set(pv["spec"]["mountOptions"])
        # COPILOT_HOME itself (the SQLite session store) is a per-replica disk, never the share.
        home = next(m for m in container["volumeMounts"] if m["mountPath"] == env["HOME"])
        assert home["name"] not in claims


# --- Key Vault ------------------------------------------------------------------------------------------------

def test_key_vault_uses_rbac_and_only_the_sync_identity_reads_it(run: Run) -> None:
    vault = run.one(f"{AZ}keyvault:Vault")
    props = clear(vault.inputs)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True and props["enablePurgeProtection"] is True
    vault_id, _ = arm_answer(run, vault.typ)
    _, identity = arm_answer(run, f"{AZ}managedidentity:UserAssignedIdentity")
    (assignment,) = [r for r in run.of_type(f"{AZ}authorization:RoleAssignment")
                     if clear(r.inputs)["scope"] == vault_id]
    a = clear(assignment.inputs)
    assert a["roleDefinitionId"].endswith(f"/roleDefinitions/{KEY_VAULT_SECRETS_USER}")
    assert a["roleDefinitionId"].startswith(f"/subscriptions/{offline.SUBSCRIPTION}/")
    assert a["scope"] == vault_id
    assert a["principalId"] == identity["principalId"]
    assert a["principalType"] == "ServicePrincipal"


def test_key_vault_secret_values_are_pulumi_secrets(stack: str, run: Run) -> None:
    secrets = run.of_type(f"{AZ}keyvault:Secret")
    names = {s.inputs["secretName"] for s in secrets}
    spec = spec_of(stack)
    for group in build_topology(spec).groups:
        assert f"{group.name}-credentials-connection-token" in names
    if spec.github_token is not None:
        assert "copilot-fleet-credentials-github-token" in names
    if spec.provider is not None:
        assert "copilot-fleet-credentials-provider-api-key" in names
    assert ("lease-store-redis-key" in names) == (stack in SHARED)
    for s in secrets:
        assert is_secret(s.inputs["properties"]), f"Key Vault secret {s.inputs['secretName']} is not a Pulumi secret"


def test_credentials_reach_pods_by_reference_only(run: Run) -> None:
    # The values Key Vault holds (storage account names aside: they are public DNS names).
    values = [clear(s.inputs)["properties"]["value"] for s in run.of_type(f"{AZ}keyvault:Secret")
              if not s.inputs["secretName"].endswith("account-name")]
    assert values and all(isinstance(v, str) and len(v) >= 8 for v in values)
    manifests_text = json.dumps(run.manifests())
    leaked = [v for v in values if v in manifests_text]
    assert not leaked, "a credential appears literally in a Kubernetes object"
    assert not run.kind("Secret"), "the Kubernetes fleet must not create Secrets: Key Vault sync does"
    for where, pod in pod_specs(run):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if any(word in env["name"] for word in ("TOKEN", "KEY", "PASSWORD", "SECRET")):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']}"


def test_every_secret_a_pod_or_volume_reads_is_synced_from_key_vault(run: Run) -> None:
    provider_class = run.get("SecretProviderClass", SYNC_NAME)["spec"]
    synced = {(s["secretName"], d["key"]) for s in provider_class["secretObjects"] for d in s["data"]}
    wanted = set()
    for _, pod in pod_specs(run):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    wanted.add((ref["name"], ref["key"]))
        for volume in pod["volumes"]:  # secret volumes (the janitor's lease store URL file)
            if secret := volume.get("secret"):
                assert secret.get("items"), f"{volume['name']}: a secret volume names the keys it mounts"
                wanted |= {(secret["secretName"], item["key"]) for item in secret["items"]}
    for pv in run.kind("PersistentVolume"):
        ref = pv["spec"]["csi"]["nodeStageSecretRef"]
        assert ref["namespace"] == pv["spec"]["claimRef"]["namespace"]
        wanted |= {(ref["name"], "azurestorageaccountname"), (ref["name"], "azurestorageaccountkey")}
    assert wanted and wanted <= synced
    objects = {yaml.safe_load(o)["objectName"]
               for o in yaml.safe_load(provider_class["parameters"]["objects"])["array"]}
    vault_secrets = {s.inputs["secretName"] for s in run.of_type(f"{AZ}keyvault:Secret")}
    assert objects <= vault_secrets
    assert {d["objectName"] for s in provider_class["secretObjects"] for d in s["data"]} <= objects


def test_only_the_sync_pods_carry_the_workload_identity(run: Run) -> None:
    _, identity = arm_answer(run, f"{AZ}managedidentity:UserAssignedIdentity")
    _, cluster = arm_answer(run, f"{AZ}containerservice:ManagedCluster")
    namespace = run.kind("Namespace")[0]["metadata"]["name"]
    fed = clear(run.one(f"{AZ}managedidentity:FederatedIdentityCredential").inputs)
    assert fed["subject"] == f"system:serviceaccount:{namespace}:{SYNC_NAME}"
    assert fed["issuer"] == cluster["oidcIssuerProfile"]["issuerURL"]
    assert fed["audiences"] == ["api://AzureADTokenExchange"]
    sa = run.get("ServiceAccount", SYNC_NAME)
    assert sa["metadata"]["annotations"][CLIENT_ID_ANNOTATION] == identity["clientId"]
    provider_class = run.get("SecretProviderClass", SYNC_NAME)["spec"]["parameters"]
    assert provider_class["clientID"] == identity["clientId"] and provider_class["usePodIdentity"] == "false"
    assert provider_class["tenantID"] == offline.TENANT and "tenantId" not in provider_class
    sync = run.get("Deployment", SYNC_NAME)
    assert sync["spec"]["replicas"] >= 2 and sync["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert sync["spec"]["template"]["spec"]["serviceAccountName"] == SYNC_NAME
    # The CLI runs the agent's tools: no Azure identity, no vault files, no API token.
    for sts in cli_sets(run):
        pod = sts["spec"]["template"]
        assert "azure.workload.identity/use" not in pod["metadata"]["labels"]
        assert pod["spec"]["serviceAccountName"] != SYNC_NAME
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not [v for v in pod["spec"]["volumes"] if "csi" in v]
    assert CLIENT_ID_ANNOTATION not in (run.get("ServiceAccount", "copilot-cli")["metadata"].get("annotations") or {})


# --- Redis ----------------------------------------------------------------------------------------------------

def test_the_janitor_takes_leases_with_the_cache_url_from_key_vault(stack: str, run: Run) -> None:
    """The janitor CronJob on AKS: the Kubernetes one, its Redis URL file synced from `lease-store-redis-url`."""
    from copilot_fleet.pod.janitor import build_parser

    jobs = run.kind("CronJob")
    assert len(jobs) == len(build_topology(spec_of(stack)).session_volumes)
    provider_class = run.get("SecretProviderClass", SYNC_NAME)["spec"]
    synced = {(s["secretName"], d["key"]): d["objectName"] for s in provider_class["secretObjects"] for d in s["data"]}
    vault = {s.inputs["secretName"]: clear(s.inputs)["properties"]["value"]
             for s in run.of_type(f"{AZ}keyvault:Secret")}
    for job in jobs:
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["command"][:3] == ["python3", "-m", "copilot_fleet.pod.janitor"]
        args = build_parser().parse_args(c["command"][3:])
        assert args.session_state == next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "sessions")
        secret_volumes = [v for v in pod["volumes"] if "secret" in v]
        if stack not in SHARED:
            assert args.redis_url_file is None and not secret_volumes
            continue
        (volume,) = secret_volumes
        (item,) = volume["secret"]["items"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        assert args.redis_url_file == f"{mount['mountPath']}/{item['path']}" and args.require_leases
        # one Key Vault secret holds the cache's URL: what applications read and what the janitor gets synced
        assert synced[(volume["secret"]["secretName"], item["key"])] == "lease-store-redis-url"
        assert vault["lease-store-redis-url"] == run.outputs["redis_url"]
        assert not [n for n in vault if n.startswith("copilot-janitor")]
    if stack not in SHARED:
        assert not [k for k in synced if k[0] == "copilot-janitor-credentials"]


def test_redis_is_tls_only_for_shared_patterns_and_absent_for_per_user(stack: str, run: Run) -> None:
    caches = run.of_type(f"{AZ}redis:Redis")
    in_cluster_redis = [m for m in run.kind("StatefulSet") if m["metadata"]["name"] == "copilot-redis"]
    assert not in_cluster_redis
    if stack not in SHARED:
        assert not caches and "redis_url" not in run.outputs
        return
    spec = spec_of(stack)
    (cache,) = caches
    assert cache.inputs["enableNonSslPort"] is False
    assert cache.inputs["minimumTlsVersion"] == "1.2"
    assert cache.inputs["sku"] == {"name": spec.azure.redis_sku, "family": "C",
                                   "capacity": spec.azure.redis_capacity}
    assert cache.inputs["redisConfiguration"]["maxmemoryPolicy"] == "noeviction"
    _, answered = arm_answer(run, cache.typ)
    assert run.outputs["redis_url"].startswith(f"rediss://:offline-redis-primary-{answered['name']}@")
    assert run.outputs["redis_url"].endswith(f"@{answered['hostName']}:6380/0")
    assert "redis_url" in run.secret_outputs


# --- AKS ------------------------------------------------------------------------------------------------------

def test_aks_has_what_the_fleet_relies_on(stack: str, run: Run) -> None:
    az = spec_of(stack).azure
    c = clear(run.one(f"{AZ}containerservice:ManagedCluster").inputs)
    assert c["oidcIssuerProfile"] == {"enabled": True}
    assert c["securityProfile"]["workloadIdentity"] == {"enabled": True}
    assert c["storageProfile"]["fileCSIDriver"] == {"enabled": True}
    assert c["networkProfile"]["networkPolicy"] in ("calico", "azure", "cilium")
    kv = c["addonProfiles"]["azureKeyvaultSecretsProvider"]
    assert kv["enabled"] is True and kv["config"]["enableSecretRotation"] == "true"
    workspace_id, _ = arm_answer(run, f"{AZ}operationalinsights:Workspace")
    assert c["addonProfiles"]["omsagent"] == {"enabled": True, "config": {"logAnalyticsWorkspaceResourceID":
                                                                           workspace_id}}
    assert run.one(f"{AZ}operationalinsights:Workspace").inputs["retentionInDays"] == az.log_retention_days
    (pool,) = c["agentPoolProfiles"]
    assert (pool["count"], pool["vmSize"], pool["mode"]) == (az.node_count, az.node_vm_size, "System")
    assert c["sku"] == {"name": "Base", "tier": "Free"}


def test_every_kubernetes_object_goes_to_the_aks_cluster(run: Run) -> None:
    objects = [r for r in run.registrations if r.is_kubernetes]
    assert objects
    for r in objects:
        assert "$pulumi:providers:kubernetes::cluster-k8s::" in r.provider, f"{r.typ} {r.name}: {r.provider!r}"


# --- per-user ---------------------------------------------------------------------------------------------------

def test_per_user_keeps_users_apart(stack_run: Callable[[str], Run]) -> None:
    run = stack_run("azure-per-user")
    users = spec_of("azure-per-user").user_ids
    accounts = {arm_answer(run, r.typ, r.name)[1]["name"] for r in run.of_type(f"{AZ}storage:StorageAccount")}
    assert len(accounts) == len(users)  # a key opens one user's share and nothing else
    pvs = run.kind("PersistentVolume")
    assert len({pv["spec"]["csi"]["volumeHandle"] for pv in pvs}) == len(users)
    assert len({pv["spec"]["csi"]["nodeStageSecretRef"]["name"] for pv in pvs}) == len(users)
    by_user = {sts["metadata"]["labels"]["copilot-fleet/user"]: sts for sts in cli_sets(run)}
    assert sorted(by_user) == sorted(users)
    for user, sts in by_user.items():
        pod = sts["spec"]["template"]["spec"]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"] if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}
        assert refs == {f"copilot-user-{user}-credentials"}
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "sessions")
        assert claim == f"copilot-user-{user}-sessions"
    tokens = run.outputs["user_tokens"]
    assert sorted(tokens) == sorted(users) and len(set(tokens.values())) == len(users)
    assert "user_tokens" in run.secret_outputs
    secrets = {s.inputs["secretName"] for s in run.of_type(f"{AZ}keyvault:Secret")}
    for user in users:
        assert {f"copilot-user-{user}-credentials-connection-token",
                f"copilot-user-{user}-credentials-github-token"} <= secrets


# --- outputs and manifests ----------------------------------------------------------------------------------------

def test_outputs_are_a_target_verify_can_read(stack: str, run: Run) -> None:
    target = parse_target(json.dumps(run.outputs), source=stack)
    spec = spec_of(stack)
    assert (target.stack, target.platform, target.isolation) == (stack, "azure", spec.isolation)
    ns = spec.namespace
    if stack in SHARED:
        assert target.endpoint == f"copilot-cli.{ns}.svc.cluster.local:{spec.port}"
        assert len(target.replicas) == spec.replicas
        assert {"connection_token", "redis_url"} <= run.secret_outputs
    else:
        assert target.endpoint is None
        assert target.users == {u: f"copilot-user-{u}.{ns}.svc.cluster.local:{spec.port}" for u in spec.user_ids}


def test_kubernetes_objects_validate_strictly(run: Run) -> None:
    validator = render.SchemaValidator("1.33")
    docs = run.manifests(mask=True)
    # SecretProviderClass is a custom resource: kubernetes-validate has no schema for it. Skip that kind only.
    skipped = {d["kind"] for d in docs if d["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"}
    assert skipped == {"SecretProviderClass"}
    errors = [e for d in docs if d["kind"] != "SecretProviderClass" for e in validator.errors(d)]
    assert errors == []
    assert {"Namespace", "PersistentVolume", "StatefulSet", "Deployment", "NetworkPolicy"} <= {d["kind"] for d in docs}


def test_monitoring_goes_to_log_analytics_and_the_configured_otlp_endpoint(stack: str, run: Run) -> None:
    spec = spec_of(stack)
    assert run.one(f"{AZ}operationalinsights:Workspace").inputs["sku"] == {"name": "PerGB2018"}
    for sts in cli_sets(run):
        env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == spec.otlp_endpoint


@pytest.mark.example_stacks("azure")
def test_offline_render_covers_azure_stacks(example_project: Path, example_stack: str) -> None:
    """`copilot-fleet render` runs the Azure program too: the Kubernetes side validates strictly, the one custom
    resource it creates on purpose (SecretProviderClass) is the only kind without a schema, no secret leaks."""
    from copilot_fleet import render
    from copilot_fleet.spec import OFFLINE_SECRET

    result = render.render_stack(example_project, example_stack)
    assert result.errors == []
    kinds = result.counts()
    assert kinds.get("StatefulSet") and kinds.get("NetworkPolicy") and kinds.get("SecretProviderClass")
    store_mode = (read_stack_config(example_project, example_stack)[0].get("fleet:sessionState") or {}).get("mode")
    # The Azure Files share, bound statically; store mode has none (tests/azure/test_azure_store_mode.py).
    assert bool(kinds.get("PersistentVolume")) == (store_mode != "store")
    assert OFFLINE_SECRET not in json.dumps(result.objects)


def test_two_stacks_in_one_resource_group_do_not_collide(run_mocked: Callable[..., Run]) -> None:
    """Stacks may share a resource group (fleet:azure.resourceGroupName): the names of what lives inside it (the
    sync identity) carry the stack."""
    values, secret = read_stack_config(PROJECT_DIR, "azure-shared-session")
    names = set()
    for stack in ("team-a", "team-b"):
        run = run_mocked(values, secret, stack=stack)
        (identity,) = run.of_type("azure-native:managedidentity:UserAssignedIdentity")
        names.add(identity.inputs["resourceName"])
    assert len(names) == 2, names


def test_disruption_budgets_let_unhealthy_pods_go(run: Run) -> None:
    """A crash-looping pod must not stall node drains behind its PodDisruptionBudget (the CLI's and the sync's)."""
    budgets = run.kind("PodDisruptionBudget")
    assert budgets
    for budget in budgets:
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", budget["metadata"]["name"]


def test_outside_clients_and_client_namespaces_reach_the_aks_fleet(run_mocked: Callable[..., Run]) -> None:
    """fleet:loadBalancer.sourceRanges and fleet:clientNamespaceSelector shape the Service and the policies on AKS
    as on any cluster (they were dropped on Azure: outside clients never got in); fleet:serviceAnnotations makes
    the load balancer an internal one (a private network: plaintext accepted)."""
    values, secret = read_stack_config(PROJECT_DIR, "azure-shared-cli")
    internal = "service.beta.kubernetes.io/azure-load-balancer-internal"
    values = {**values, "fleet:loadBalancer": {"serviceType": "LoadBalancer", "sourceRanges": ["203.0.113.0/24"],
                                               "acceptPlaintext": True},
              "fleet:serviceAnnotations": {internal: "true"}, "fleet:clientNamespaceSelector": {"team": "apps"}}
    run = run_mocked(values, secret, stack="azure-lb")
    assert run.get("Service", "copilot-cli")["metadata"]["annotations"] == {internal: "true"}
    service = run.get("Service", "copilot-cli")["spec"]
    assert service["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert service["externalTrafficPolicy"] == "Local"
    peers = run.get("NetworkPolicy", "copilot-cli-ingress")["spec"]["ingress"][0]["from"]
    assert {"ipBlock": {"cidr": "203.0.113.0/24"}} in peers
    assert peers[0]["namespaceSelector"] == {"matchLabels": {"team": "apps"}}


ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"


def test_the_first_image_pull_works(stack: str, run: Run) -> None:
    """The first image pull must not fail: from Azure Container Registry, the cluster's kubelet identity gets
    AcrPull on the registry holding fleet:image in the same pulumi up (the Kubernetes fleet depends on it); from
    another private registry, every CLI and janitor pod names the pull Secret synced from Key Vault."""
    spec = spec_of(stack)
    registry = spec.azure.container_registry_id
    pulls = [r for r in run.of_type(f"{AZ}authorization:RoleAssignment")
             if clear(r.inputs)["roleDefinitionId"].endswith(f"/roleDefinitions/{ACR_PULL}")]
    if registry is None:
        assert spec.image_pull_credentials is not None, f"{stack}: neither AcrPull nor a registry login"
        assert pulls == []
        for workload in run.kind("StatefulSet") + run.kind("CronJob"):
            template = (workload["spec"]["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob"
                        else workload["spec"]["template"])
            assert template["spec"]["imagePullSecrets"] == [{"name": "copilot-image-pull"}], workload["metadata"]
        synced = [s for m in run.kind("SecretProviderClass") for s in m["spec"]["secretObjects"]]
        assert {"secretName": "copilot-image-pull", "type": "kubernetes.io/dockerconfigjson",
                "data": [{"objectName": "copilot-image-pull--dockerconfigjson", "key": ".dockerconfigjson"}]} in synced
        return
    assert len(pulls) == 1
    a = clear(pulls[0].inputs)
    _, cluster = arm_answer(run, f"{AZ}containerservice:ManagedCluster")
    assert a["scope"] == registry
    assert a["principalId"] == cluster["identityProfile"]["kubeletidentity"]["objectId"]
    assert a["principalType"] == "ServicePrincipal"


def test_an_acr_image_without_its_registry_is_refused(run_mocked: Callable[..., Run]) -> None:
    from copilot_fleet.render import RecordingMocks, run_program
    from copilot_fleet.spec import ConfigError

    values, secret = read_stack_config(PROJECT_DIR, "azure-shared-cli")
    azure = {k: v for k, v in values["fleet:azure"].items() if k != "containerRegistryId"}
    with pytest.raises(ConfigError, match="fleet:azure.containerRegistryId: fleet:image is in Azure Container "
                                          "Registry myregistry.azurecr.io"):
        run_program({**values, "fleet:azure": azure}, secret, stack="no-acr", mocks=RecordingMocks())
    other = {**azure, "containerRegistryId": values["fleet:azure"]["containerRegistryId"].replace(
        "/myregistry", "/otherregistry")}
    with pytest.raises(ConfigError, match="names registry 'otherregistry' but fleet:image is in myregistry"):
        run_program({**values, "fleet:azure": other}, secret, stack="wrong-acr", mocks=RecordingMocks())


def _protected(run_mocked: Callable[..., Run], values: dict[str, Any], secret: set[str], stack: str,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """type -> whether Pulumi `protect` is set, for every custom resource the program creates (the mock engine's
    registrations do not carry resource options, so they are read where the program passes them)."""
    seen: dict[str, bool] = {}
    original = pulumi.CustomResource.__init__

    def record(self: Any, t: str, name: str, props: Any = None, opts: pulumi.ResourceOptions | None = None,
               *args: Any, **kwargs: Any) -> None:
        seen[t] = seen.get(t, False) or bool(opts is not None and opts.protect)
        original(self, t, name, props, opts, *args, **kwargs)

    monkeypatch.setattr(pulumi.CustomResource, "__init__", record)
    run_mocked(values, secret, stack=stack)
    return seen


def test_storage_shares_and_the_vault_are_protected(run_mocked: Callable[..., Run],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The sessions' history (storage accounts, shares) and every credential (the vault) survive `pulumi destroy`
    and replacing changes unless fleet:azure.protectData is turned off first; nothing else is protected."""
    values, secret = read_stack_config(PROJECT_DIR, "azure-shared-cli")
    protected = _protected(run_mocked, values, secret, "protect-on", monkeypatch)
    data = {f"{AZ}storage:StorageAccount", f"{AZ}storage:FileShare", f"{AZ}keyvault:Vault"}
    assert {t for t, on in protected.items() if on} == data
    off = {**values, "fleet:azure": {**values["fleet:azure"], "protectData": False}}
    assert not any(_protected(run_mocked, off, secret, "protect-off", monkeypatch).values())
