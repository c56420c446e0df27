"""PlatformHooks: how another platform (Azure) adapts the Kubernetes fleet, and a provider passed in opts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pulumi
import pytest

from copilot_fleet.components.kubernetes.hooks import PlatformHooks, StaticVolume

KUBECONFIG = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []})


def _program(hooks: Callable[[], PlatformHooks] | PlatformHooks | None, with_provider: bool = False):
    """The fleet alone, with hooks built inside the run (Outputs belong to the run's own event loop)."""

    def program() -> dict[str, Any]:
        import pulumi_kubernetes as k8s

        from copilot_fleet.components.common import ConnectionTokens
        from copilot_fleet.components.kubernetes import KubernetesFleet, KubernetesFleetArgs
        from copilot_fleet.pulumi_config import load_engine_spec
        from copilot_fleet.topology import build_topology

        topology = build_topology(load_engine_spec())
        tokens = ConnectionTokens("tokens", topology)
        opts = None
        if with_provider:
            opts = pulumi.ResourceOptions(provider=k8s.Provider("aks", kubeconfig=KUBECONFIG))
        platform = hooks() if callable(hooks) else (hooks or PlatformHooks())
        fleet = KubernetesFleet("fleet", KubernetesFleetArgs(topology, tokens, platform=platform), opts=opts)
        return {"redis_url": fleet.endpoints.redis_url,
                "material": {name: sorted(keys) for name, keys in fleet.secret_material.items()}}
    return program


def _azure_files(volume: str) -> StaticVolume:
    return StaticVolume(
        csi={"driver": "file.csi.azure.com", "volume_handle": f"rg#acct#{volume}",
             "volume_attributes": {"shareName": volume},
             "node_stage_secret_ref": {"name": "azure-files", "namespace": "kube-system"}},
        mount_options=("uid=1000", "gid=1000", "mfsymlinks", "nobrl"),
    )


def test_static_session_volumes_replace_dynamic_ones(make_fleet, kube):
    fleet = make_fleet("per-user", program=_program(PlatformHooks(session_volume=_azure_files)))
    volumes = fleet.of_kind("PersistentVolume")
    claims = fleet.of_kind("PersistentVolumeClaim")
    assert len(volumes) == len(claims) == len(kube.USER_TOKENS)
    by_name = {v["metadata"]["name"]: v for v in volumes}
    for claim in claims:
        spec = claim["spec"]
        assert spec["storageClassName"] == ""
        pv = by_name[spec["volumeName"]]
        assert pv["spec"]["claimRef"] == {"name": claim["metadata"]["name"],
                                          "namespace": claim["metadata"]["namespace"]}
        assert pv["spec"]["csi"]["driver"] == "file.csi.azure.com"
        assert pv["spec"]["csi"]["volumeHandle"].endswith(claim["metadata"]["name"])
        assert pv["spec"]["csi"]["nodeStageSecretRef"]["name"] == "azure-files"
        assert "uid=1000" in pv["spec"]["mountOptions"]
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert pv["spec"]["accessModes"] == spec["accessModes"]
        assert "namespace" not in pv["metadata"]


def test_externally_managed_secrets_and_identity(make_fleet, kube):
    hooks = lambda: PlatformHooks(  # noqa: E731
        manage_secrets=False,
        pod_labels={"azure.workload.identity/use": "true"},
        service_account_annotations={"azure.workload.identity/client-id": "0000-client"},
        extra_volumes=[{"name": "kv", "csi": {"driver": "secrets-store.csi.k8s.io", "read_only": True,
                                              "volume_attributes": {"secretProviderClass": "copilot"}}}],
        extra_volume_mounts=[{"name": "kv", "mount_path": "/mnt/secrets", "read_only": True}],
        external_redis_url=pulumi.Output.secret("rediss://:pw@cache.example:6380/0"),
    )
    fleet = make_fleet("shared-cli", program=_program(hooks))
    assert fleet.of_kind("Secret") == []
    # the pods still read the same names and keys, which the platform must create
    material = fleet.outputs["material"]
    (sts,) = [s for s in fleet.of_kind("StatefulSet") if s["metadata"]["name"] == "copilot-cli"]
    pod = sts["spec"]["template"]
    for entry in pod["spec"]["containers"][0]["env"]:
        if "valueFrom" in entry and "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["key"] in material[ref["name"]]
    assert material["copilot-cli-credentials"] == ["connection-token"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in sts["spec"]["selector"]["matchLabels"]
    sa = fleet.get("ServiceAccount", pod["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": "0000-client"}
    assert {"name": "kv", "mountPath": "/mnt/secrets", "readOnly": True} in pod["spec"]["containers"][0]["volumeMounts"]
    assert any(v["name"] == "kv" for v in pod["spec"]["volumes"])
    # the lease store is the platform's: no in-cluster Redis, and its URL is the target's
    assert not [s for s in fleet.of_kind("StatefulSet") if "redis" in s["metadata"]["name"]]
    assert "copilot-redis" not in material
    # ... and the janitor's: the platform must supply its URL file's Secret too
    assert material["copilot-janitor-credentials"] == ["redis-url"]
    assert fleet.outputs["redis_url"] == "rediss://:pw@cache.example:6380/0"
    assert "redis_url" in fleet.run.secret_outputs


def test_children_inherit_the_provider(make_fleet):
    fleet = make_fleet("shared-cli", program=_program(None, with_provider=True))
    kube_regs = fleet.run.kubernetes
    assert kube_regs
    assert all("pulumi:providers:kubernetes::aks" in r.provider for r in kube_regs), \
        [(r.typ, r.name, r.provider) for r in kube_regs if "aks" not in r.provider]
    plain = make_fleet("shared-cli", program=_program(None))
    assert not any("::aks" in r.provider for r in plain.run.kubernetes)


def test_extra_volumes_may_not_shadow_the_fleets_own() -> None:
    with pytest.raises(ValueError, match="sessions"):
        PlatformHooks(extra_volumes=[{"name": "sessions", "empty_dir": {}}])


def test_hooked_fleets_still_validate(make_fleet):
    from copilot_fleet.render import SchemaValidator

    fleet = make_fleet("shared-session", program=_program(PlatformHooks(session_volume=_azure_files)), mask=True)
    validator = SchemaValidator()
    assert [e for o in fleet.objects for e in validator.errors(o)] == []
