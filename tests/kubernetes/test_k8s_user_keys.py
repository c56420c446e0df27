"""The Kubernetes keys users expect (fleet:nodeSelector, tolerations, affinity, podAnnotations, serviceAnnotations,
imagePullSecrets, imagePullCredentials, storage.homeStorageClass): each reaches exactly the objects it is for, and
the whole renders valid for the Kubernetes schema."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from copilot_fleet import render
from copilot_fleet.components.kubernetes.secrets import CHECKSUM_ANNOTATION, docker_config_json

NODE_SELECTOR = {"kubernetes.io/os": "linux", "pool": "copilot"}
TOLERATIONS = [{"key": "dedicated", "operator": "Equal", "value": "copilot", "effect": "NoSchedule"},
               {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 60}]
AFFINITY = {
    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                               "values": ["westeurope-1", "westeurope-2"]}]}]}},
    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 50, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "copilot-cli"}},
            "topologyKey": "kubernetes.io/hostname"}}]},
}
POD_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "example.com/team": "agents"}
SERVICE_ANNOTATIONS = {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
PASSWORD = "TESTSECRET-registry-pw-0007"
CREDENTIALS = {"server": "registry.example.com", "username": "robot$fleet", "password": PASSWORD}
KEYS: dict[str, Any] = {
    "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS, "affinity": AFFINITY,
    "podAnnotations": POD_ANNOTATIONS, "serviceAnnotations": SERVICE_ANNOTATIONS,
    "imagePullSecrets": ["team-registry"], "imagePullCredentials": CREDENTIALS,
}


def _pod_specs(fleet, kube) -> dict[str, dict[str, Any]]:
    """Every pod template of the fleet: `Kind/name` -> template."""
    return {f"{w['kind']}/{w['metadata']['name']}": kube.pod_template(w) for w in kube.workloads(fleet)}


@pytest.mark.parametrize("pattern", ["shared-cli", "per-user"])
def test_placement_and_pulls_reach_every_pod_affinity_the_cli_pods(make_fleet, kube, pattern):
    base, secret_keys = kube.BASE[pattern]
    fleet = make_fleet(values={**base, **KEYS}, secret_keys={*secret_keys, "imagePullCredentials"})
    templates = _pod_specs(fleet, kube)
    kinds = {name.split("/")[0] for name in templates}
    assert kinds == {"StatefulSet", "CronJob"}, templates.keys()  # CLI servers, janitors (and Redis in shared-cli)
    for name, template in templates.items():
        spec = template["spec"]
        assert spec["nodeSelector"] == NODE_SELECTOR, name
        assert spec["tolerations"] == TOLERATIONS, name
        assert spec["imagePullSecrets"] == [{"name": "team-registry"}, {"name": "copilot-image-pull"}], name
        annotations = template["metadata"]["annotations"]
        assert {k: annotations[k] for k in POD_ANNOTATIONS} == POD_ANNOTATIONS, name
        is_cli = template["metadata"]["labels"]["app.kubernetes.io/component"] == "cli"
        if is_cli:
            assert spec["affinity"] == AFFINITY, name
            assert CHECKSUM_ANNOTATION in annotations, f"{name}: the user's annotations replaced the checksum"
        elif "affinity" in spec:  # a per-user janitor on a ReadWriteOnce volume follows its server's pod
            assert set(spec["affinity"]) == {"podAffinity"}, name


def test_service_annotations_reach_the_client_services_only(make_fleet, kube):
    fleet = make_fleet("shared-session", serviceAnnotations=SERVICE_ANNOTATIONS)
    annotated = {s["metadata"]["name"] for s in fleet.of_kind("Service")
                 if s["metadata"].get("annotations") == SERVICE_ANNOTATIONS}
    assert annotated == {"copilot-cli"}
    users = make_fleet("per-user", serviceAnnotations=SERVICE_ANNOTATIONS)
    annotated = {s["metadata"]["name"] for s in users.of_kind("Service") if s["metadata"].get("annotations")}
    assert annotated == {f"copilot-user-{u}" for u in kube.USER_TOKENS}


def test_pull_credentials_become_a_docker_config_secret(make_fleet, kube):
    base, secret_keys = kube.BASE["shared-cli"]
    fleet = make_fleet(values={**base, "imagePullCredentials": CREDENTIALS},
                       secret_keys={*secret_keys, "imagePullCredentials"})
    secret = fleet.get("Secret", "copilot-image-pull")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(secret["stringData"][".dockerconfigjson"])
    login = config["auths"]["registry.example.com"]
    assert base64.b64decode(login["auth"]).decode() == f"robot$fleet:{PASSWORD}"
    assert (login["username"], login["password"]) == ("robot$fleet", PASSWORD)
    masked = make_fleet(values={**base, "imagePullCredentials": CREDENTIALS},
                        secret_keys={*secret_keys, "imagePullCredentials"}, mask=True)
    assert PASSWORD not in masked.dump()


def test_docker_hub_logins_use_the_key_docker_writes() -> None:
    config = json.loads(docker_config_json("docker.io", "me", "pw"))
    assert list(config["auths"]) == ["https://index.docker.io/v1/"]


def test_without_the_keys_pods_carry_none_of_them(make_fleet, kube):
    fleet = make_fleet("shared-cli")
    for name, template in _pod_specs(fleet, kube).items():
        assert not {"nodeSelector", "tolerations", "imagePullSecrets", "affinity"} & set(template["spec"]), name
    assert "copilot-image-pull" not in fleet.names("Secret")


def test_home_storage_class_reaches_the_home_volumes(make_fleet, kube):
    fleet = make_fleet("shared-cli", storage={"storageClass": "nfs-client", "homeStorageClass": "premium-rwo"})
    (home,) = fleet.get("StatefulSet", "copilot-cli")["spec"]["volumeClaimTemplates"]
    assert home["spec"]["storageClassName"] == "premium-rwo"
    session = fleet.get("PersistentVolumeClaim", "copilot-sessions")["spec"]
    assert session["storageClassName"] == "nfs-client"
    (default,) = make_fleet("shared-cli").get("StatefulSet", "copilot-cli")["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in default["spec"]


def test_every_key_renders_valid_for_the_kubernetes_schema(tmp_path: Path, kube) -> None:
    """`copilot-fleet render` of a stack with every key: all objects valid (strict), as kubectl apply would see
    them."""
    shutil.copy(kube.PROJECT_DIR / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks").mkdir()
    config = {f"fleet:{k}": v for k, v in {
        "isolation": "shared-cli", "platform": "kubernetes", "image": kube.IMAGE,
        "githubToken": {"secure": "v1:AAAA"}, "storage": {"storageClass": "nfs-client", "homeStorageClass": "fast"},
        **KEYS, "imagePullCredentials": {**CREDENTIALS, "password": {"secure": "v1:BBBB"}},
    }.items()}
    (tmp_path / "stacks" / "Pulumi.keys.yaml").write_text(yaml.safe_dump({"config": config}))
    result = render.render_stack(tmp_path, "keys")
    assert result.errors == []
    kinds = {(o["kind"], o["metadata"]["name"]) for o in result.objects}
    assert ("Secret", "copilot-image-pull") in kinds
